"""The SSRF guard: webhook URLs must not reach our own network.

A URL is refused (``UnsafeUrl`` with a ``reason``) when it is not http(s), carries
credentials, names a cloud metadata service, or when its host is, or resolves to,
an address that is not public: unspecified, loopback, RFC 1918 private, CGNAT
(100.64.0.0/10), link-local (169.254.0.0/16, fe80::/10), multicast, reserved,
IPv6 unique local (fc00::/7), documentation and the other special-purpose ranges,
and any of those wrapped in IPv6 (IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible,
NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``). ``localhost`` and ``*.localhost`` are
refused by name.

``allowed_hosts`` (``VIRALTRACE_WEBHOOK_ALLOWED_HOSTS``) lifts the address rules
for a host named exactly, or for addresses inside a listed CIDR (a bare address
is a /32 or /128). Cloud metadata names and addresses stay refused whatever the
allowlist says: no webhook receiver lives there.

The check runs twice: when an admin saves a URL (``check_url``), and at every
connection the notifier makes (``VettingBackend`` in ``app.webhooks.client``),
which resolves the host itself, vets every address and connects only to a vetted
one, so a name that resolves to a public address when saved and to 127.0.0.1
later (DNS rebinding) cannot reach loopback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import httpx

from app.webhooks import WebhookError

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
# (host, port) -> the addresses it resolves to, as strings. Raises ``UnresolvableHost``.
Resolver = Callable[[str, int], Awaitable[list[str]]]

METADATA_HOSTS = frozenset(
    {"metadata.google.internal", "metadata.goog", "metadata", "instance-data"}
)
METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, ...
        ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
        ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    }
)
_RFC1918 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_ULA = ipaddress.ip_network("fc00::/7")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_HOST_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_-]{1,63}$")


class UnsafeUrl(WebhookError):
    """A webhook URL we refuse to call; ``reason`` says why (shown to the admin)."""


class UnresolvableHost(UnsafeUrl):
    """The host has no address (now). Retriable: DNS may not be set up yet."""


def address_problem(address: IPAddress) -> str | None:
    """Why ``address`` must not be reached (``"a loopback address"``), or None when it
    is a public unicast address. Pure."""
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(address, IPv6Address):
        if address.scope_id is not None:
            address = IPv6Address(str(address).split("%", 1)[0])
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            wrapped, kind = embedded
            problem = address_problem(wrapped)
            if problem is not None:
                return f"{problem} ({kind} {wrapped})"
            if kind in ("IPv4-mapped", "NAT64"):  # what is reached is the IPv4 address
                return None
        if address in _NAT64_LOCAL:
            return "a local-use NAT64 address"
        if address in _IPV4_COMPATIBLE and not (address.is_loopback or address.is_unspecified):
            return "a deprecated IPv4-compatible address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_link_local:
        return "a link-local address"
    if any(address in network for network in _RFC1918):
        return "a private (RFC 1918) address"
    if address in _CGNAT:
        return "a shared (CGNAT 100.64.0.0/10) address"
    if address in _ULA:
        return "a unique local (fc00::/7) address"
    if isinstance(address, IPv6Address) and address.is_site_local:
        return "a site-local address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private or not address.is_global:
        return "a special-purpose, non-public address"
    return None


def _embedded_ipv4(address: IPv6Address) -> tuple[IPv4Address, str] | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped, "IPv4-mapped"
    if address.sixtofour is not None:
        return address.sixtofour, "6to4"
    if address in _NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF), "NAT64"
    if address in _IPV4_COMPATIBLE and int(address) > 1:
        return IPv4Address(int(address) & 0xFFFFFFFF), "IPv4-compatible"
    return None


def _ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def normalize_host(host: str) -> str:
    """Lower case, no brackets, no trailing dot: the form hosts are compared in."""
    return host.strip().lower().removeprefix("[").removesuffix("]").rstrip(".")


@dataclass(frozen=True, slots=True)
class Allowlist:
    """Hosts named exactly, and networks, that may be reached although not public."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Allowlist:
        """Raises ``ValueError`` naming an entry that is neither a host nor a CIDR."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in entries:
            value = normalize_host(entry)
            try:
                networks.append(ipaddress.ip_network(value, strict=False))
                continue
            except ValueError:
                pass
            if not _HOST_RE.match(value):
                raise ValueError(f"allowed host {entry!r} is neither a host name nor a CIDR")
            hosts.add(value)
        return cls(frozenset(hosts), tuple(networks))

    def covers_host(self, host: str) -> bool:
        return normalize_host(host) in self.hosts

    def covers_address(self, address: IPAddress) -> bool:
        candidates: list[IPAddress] = [address]
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)
        return any(a in n for a in candidates for n in self.networks if a.version == n.version)


@dataclass(frozen=True, slots=True)
class Target:
    """What a webhook URL connects to."""

    scheme: str
    host: str  # normalized (see ``normalize_host``); IDNA names in their ASCII form
    port: int


def parse_url(url: str, allowlist: Allowlist) -> Target:
    """The URL's target after the checks that need no DNS; raises ``UnsafeUrl``.

    Parsed with httpx, the client that later sends to it, so that the guard and
    the sender can never disagree on which host a URL names.
    """
    try:
        parsed = httpx.URL(url)
        raw_host = parsed.raw_host.decode("ascii")
    except (httpx.InvalidURL, UnicodeError) as exc:
        raise UnsafeUrl(f"not a valid URL: {exc}") from exc
    if parsed.scheme not in ("http", "https"):
        raise UnsafeUrl(f"scheme must be http or https, not {parsed.scheme or 'none'!r}")
    if parsed.userinfo:
        raise UnsafeUrl("the URL must not carry a user name or password")
    host = normalize_host(raw_host)
    if not host:
        raise UnsafeUrl("the URL has no host")
    if host in METADATA_HOSTS:
        raise UnsafeUrl(f"host {host} is a cloud metadata service")
    if (host == "localhost" or host.endswith(".localhost")) and not allowlist.covers_host(host):
        raise UnsafeUrl(f"host {host} is the local machine")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return Target(parsed.scheme, host, port)


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``getaddrinfo`` gives for ``host`` (no blocking: the loop's executor)."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnresolvableHost(f"host {host} does not resolve: {exc}") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True, slots=True)
class Guard:
    """The allowlist and the resolver: everything ``vet`` needs."""

    allowlist: Allowlist
    resolver: Resolver = system_resolver

    @classmethod
    def from_hosts(cls, allowed_hosts: Iterable[str], resolver: Resolver | None = None) -> Guard:
        return cls(Allowlist.parse(allowed_hosts), resolver or system_resolver)

    async def vet(self, host: str, port: int) -> list[IPAddress]:
        """The addresses of ``host`` that may be connected to: all of them, or
        ``UnsafeUrl`` if any one is refused (a name with one private address among
        public ones is refused whole). ``UnresolvableHost`` if it has none."""
        host = normalize_host(host)
        if host in METADATA_HOSTS:
            raise UnsafeUrl(f"host {host} is a cloud metadata service")
        literal = _ip(host)
        if literal is not None:
            self._check(host, literal, trusted_host=False)
            return [literal]
        trusted = self.allowlist.covers_host(host)
        if (host == "localhost" or host.endswith(".localhost")) and not trusted:
            raise UnsafeUrl(f"host {host} is the local machine")
        answers = await self.resolver(host, port)
        addresses = [a for a in (_ip(answer) for answer in answers) if a is not None]
        if not addresses:
            raise UnresolvableHost(f"host {host} does not resolve to any address")
        for address in addresses:
            self._check(host, address, trusted_host=trusted)
        return addresses

    def _check(self, host: str, address: IPAddress, *, trusted_host: bool) -> None:
        problem = address_problem(address)
        if problem is None:
            return
        shown = f"host {host} is" if _ip(host) else f"host {host} resolves to {address},"
        if address in METADATA_ADDRESSES:
            raise UnsafeUrl(f"{shown} {problem}")
        if trusted_host or self.allowlist.covers_address(address):
            return
        raise UnsafeUrl(
            f"{shown} {problem}; list it in VIRALTRACE_WEBHOOK_ALLOWED_HOSTS to allow it"
        )

    async def check_url(
        self, url: str, *, require_resolution: bool = False, resolve_timeout_s: float = 5.0
    ) -> Target:
        """Refuses an unsafe URL (``UnsafeUrl``); returns its target. Blocks at most
        ``resolve_timeout_s`` on DNS.

        With ``require_resolution=False`` (the admin API) a host that does not
        resolve (yet, or within the timeout) is accepted: it is vetted again at every
        connection the notifier makes.
        """
        target = parse_url(url, self.allowlist)
        try:
            async with asyncio.timeout(resolve_timeout_s):
                await self.vet(target.host, target.port)
        except (UnresolvableHost, TimeoutError):
            if require_resolution:
                raise UnresolvableHost(f"host {target.host} does not resolve") from None
        return target
