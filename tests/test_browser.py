"""The snippet and the live page in a real browser: Debian's Chromium driven by
Playwright, against the real stack.

The stack is ``viraltrace up`` as a subprocess (the API, every consumer and the
embedded ClickHouse engine in one process, a temp data dir with its SQLite
control plane) publishing to the real Tansu broker. Kafka rather than the
in-process bus so that the test can read the topic itself: it checks the
events exactly as the API published them (the token a view carried, no visitor
id under DNT/GPC), then checks what the consumers made of them through the
query API and the dashboard.

The test pages are served by the test on their own origin
(``http://127.0.0.1:<page port>``), so the snippet talks to the API cross-origin
as on a customer's site; that origin is in ``VIRALTRACE_TRACKING_CORS_ORIGINS``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.conftest import require_env
from tests.kafkahelpers import consume, values
from tests.procs import ApiProcess

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

CHROMIUM = Path("/usr/bin/chromium")
# INFRA.md: without the networking flags Chromium tries the closed network at every start.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Chromium's own Global Privacy Control: navigator.globalPrivacyControl and Sec-GPC: 1.
GPC_ARGS = ["--enable-features=GlobalPrivacyControlForce"]
# Read at import: the autouse fixture in conftest hides VIRALTRACE_* variables from tests.
ARTIFACTS = Path(
    os.environ.get("VIRALTRACE_TEST_ARTIFACTS")
    or Path(__file__).resolve().parent.parent / "test-artifacts"
)

CAMPAIGN = "launch-day"
SLUG = "launch"

T = TypeVar("T")


def until(check: Callable[[], T | None], timeout_s: float, what: str) -> T:
    """Polls ``check`` until it returns something truthy; fails naming ``what``."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last: {last!r}")


# ---- the customer's site, served by the test ----------------------------------------------

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{campaign}</title>
<script async src="{api}/t.js" data-campaign="{campaign}"></script>
</head><body>
<h1>Spring launch</h1>
<button id="share" type="button">Share by email</button>
<output id="share-url"></output>
<a id="post" data-viraltrace-share="social" href="/intent.html?u={{url}}">Post it</a>
<script>
document.getElementById("share").addEventListener("click", function () {{
  viraltrace.share("email").then(function (url) {{
    document.getElementById("share-url").textContent = url;
  }}, function (err) {{
    document.getElementById("share-url").textContent = "error: " + err.message;
  }});
}});
</script>
</body></html>
"""
INTENT = "<!doctype html><title>shared</title><p>Posted.</p>"


@dataclass
class Site:
    """A customer's web site on its own origin: one page per campaign, and an intent page."""

    api: str = ""
    server: ThreadingHTTPServer | None = None
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    @property
    def origin(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_port}"

    def page(self, campaign: str) -> str:
        return f"{self.origin}/{campaign}.html"

    def start(self) -> None:
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                site.requests.append((self.path, dict(self.headers)))
                if path == "/favicon.ico":
                    self.send_response(204)
                    self.end_headers()
                    return
                if path == "/intent.html":
                    body = INTENT
                elif path.endswith(".html"):
                    body = PAGE.format(api=site.api, campaign=path[1:-5])
                else:
                    self.send_error(404)
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("content-type", "text/html; charset=utf-8")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


# ---- the stack ------------------------------------------------------------------------------


@dataclass
class Stack:
    api: ApiProcess
    site: Site
    bootstrap: str
    topic: str
    read_key: str
    data_dir: Path

    @property
    def url(self) -> str:
        return self.api.url

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(
            f"{self.url}{path}",
            params=params,
            headers={"authorization": f"Bearer {self.read_key}"},
            timeout=10,
        )
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

    def cli(self, *args: str) -> str:
        """``viraltrace <args> --data-dir <the stack's>``: the control plane ``up`` uses."""
        done = subprocess.run(
            [sys.executable, "-m", "app.cli", *args, "--data-dir", str(self.data_dir)],
            env=self.api.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def events(self, campaign: str, expected: int) -> list[dict[str, Any]]:
        """The campaign's events on the topic, read back from the broker (once ``expected``
        are there, or after a timeout). In a thread: the sync Playwright API owns this one."""

        def read() -> list[dict[str, Any]]:
            records = asyncio.run(consume(self.bootstrap, self.topic, 10**9, timeout_s=2))
            return [e for e in values(records) if e["campaign"] == campaign]

        with ThreadPoolExecutor(1) as pool:
            found: list[dict[str, Any]] = []
            deadline = time.monotonic() + 30
            while len(found) < expected and time.monotonic() < deadline:
                found = pool.submit(read).result()
            return found


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    bootstrap = require_env("VIRALTRACE_TEST_KAFKA_TANSU")
    tmp = tmp_path_factory.mktemp("browser")
    unique = tmp.name.replace("_", "-")[-12:] + str(os.getpid())
    site = Site()
    site.start()
    links = tmp / "links.json"
    links.write_text(
        json.dumps(
            {
                SLUG: {
                    "campaign": CAMPAIGN,
                    "destination": site.page(CAMPAIGN),
                    "allowed_hosts": ["127.0.0.1"],
                }
            }
        )
    )
    topic = f"browser-{unique}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRALTRACE_")}
    env.update(
        {
            "VIRALTRACE_SERVER_LOG_LEVEL": "warning",
            "VIRALTRACE_KAFKA_BOOTSTRAP": bootstrap,
            "VIRALTRACE_KAFKA_IDEMPOTENCE": "false",  # Tansu has no idempotent producer
            "VIRALTRACE_KAFKA_PARTITIONS": "2",
            "VIRALTRACE_KAFKA_TOPIC": topic,
            "VIRALTRACE_KAFKA_DLQ_TOPIC": f"{topic}-dlq",
            "VIRALTRACE_KAFKA_SIGNALS_TOPIC": f"{topic}-signals",
            "VIRALTRACE_CONSUMER_GROUP_PREFIX": topic,
            "VIRALTRACE_CASCADES_SNAPSHOT_INTERVAL_S": "1",
            "VIRALTRACE_TRACKING_LINKS_FILE": str(links),
            "VIRALTRACE_TRACKING_CORS_ORIGINS": site.origin,
            # The large-tree test mints its shares from one address, quickly.
            "VIRALTRACE_TRACKING_RATE_IP_PER_S": "100000",
            "VIRALTRACE_TRACKING_RATE_IP_BURST": "100000",
        }
    )
    data_dir = tmp / "data"
    api = ApiProcess(env, tmp / "up.log", args=("up", "--data-dir", str(data_dir)))
    api.env["VIRALTRACE_TRACKING_PUBLIC_BASE_URL"] = api.url
    site.api = api.url
    api.start()
    try:
        read_key = (data_dir / "read-key").read_text().strip()
        yield Stack(api, site, bootstrap, topic, read_key, data_dir)
    finally:
        api.stop(signal.SIGINT)
        site.stop()
    log = (tmp / "up.log").read_text()
    assert "Traceback" not in log, log[-3000:]


# ---- the browser ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's chromium package "
            "(apt-get install -y --no-install-recommends chromium; ./scripts/test.sh installs it)",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Any) -> Iterator[Any]:
    browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
    )
    yield browser
    browser.close()


def watch(page: Any) -> list[str]:
    """Collects the page's script errors and console errors (CSP violations included)."""
    problems: list[str] = []
    page.on("pageerror", lambda err: problems.append(f"pageerror: {err}"))
    page.on(
        "console",
        lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None,
    )
    return problems


def snippet_ready(page: Any) -> None:
    page.wait_for_function("() => window.viraltrace !== undefined", timeout=10_000)


def click_share(page: Any) -> str:
    page.click("#share")
    page.wait_for_function(
        "() => document.getElementById('share-url').textContent !== ''", timeout=10_000
    )
    url: str = page.text_content("#share-url")
    assert not url.startswith("error"), url
    return url


def node_of(token_url: str, stack: Stack) -> str:
    """The 16-hex node id of the share token in ``t=`` of a share URL (from the topic)."""
    token = parse_qs(urlsplit(token_url).query)["t"][0]
    shares = [e for e in stack.events(CAMPAIGN, 1) if e["type"] == "share" and e["token"] == token]
    assert len(shares) == 1, shares
    node: str = shares[0]["node"]
    return node


# ---- the tests ------------------------------------------------------------------------------


def test_share_chain_reaches_the_topic_the_cascade_and_the_dashboard(
    stack: Stack, browser: Any
) -> None:
    # 1. A visitor arrives through the campaign's tracked link: the view carries its root token.
    first = browser.new_context()
    page = first.new_page()
    problems = watch(page)
    page.goto(f"{stack.url}/r/{SLUG}")
    assert page.url.startswith(stack.site.page(CAMPAIGN) + "?vt=")
    snippet_ready(page)
    root_token = parse_qs(urlsplit(page.url).query)["vt"][0]
    assert page.evaluate("viraltrace.token()") == root_token
    assert page.evaluate(f"sessionStorage.getItem('viraltrace:{CAMPAIGN}')") == root_token
    views = [e for e in stack.events(CAMPAIGN, 2) if e["type"] == "view"]
    assert len(views) == 1, views
    view = views[0]
    assert view["token"] == root_token and view["source"] == "pixel"
    assert view["url"] == stack.site.page(CAMPAIGN)  # no query string
    assert view["visitor"] is not None and view["privacy"] is None
    root = view["root"]

    # The token stays for the visit: the next page of the tab has no vt but keeps it.
    page.goto(stack.site.page(CAMPAIGN))
    snippet_ready(page)
    assert page.evaluate("viraltrace.token()") == root_token

    # 2. They share: the server's share URL (the tracked link) carries the child token.
    first_share = click_share(page)
    assert first_share.startswith(f"{stack.url}/r/{SLUG}?t=")
    child = node_of(first_share, stack)

    # 3. Someone else opens it in a fresh context: a view under the child token.
    second = browser.new_context()
    other = second.new_page()
    problems += watch(other)
    other.goto(first_share)
    snippet_ready(other)
    child_token = parse_qs(urlsplit(other.url).query)["vt"][0]
    assert child_token == parse_qs(urlsplit(first_share).query)["t"][0]

    # 4. ... and shares again, through a link decorated with data-viraltrace-share.
    other.click("#post")
    other.wait_for_url("**/intent.html?u=*", timeout=10_000)
    second_share = parse_qs(urlsplit(other.url).query)["u"][0]
    assert second_share.startswith(f"{stack.url}/r/{SLUG}?t=")
    grandchild = node_of(second_share, stack)

    events = stack.events(CAMPAIGN, 8)
    shares = {e["node"]: e for e in events if e["type"] == "share"}
    assert shares[child]["parent"] == root and shares[child]["depth"] == 1
    assert shares[child]["channel"] == "email"
    assert shares[grandchild]["parent"] == child and shares[grandchild]["depth"] == 2
    assert shares[grandchild]["channel"] == "social"
    viewed = {e["token"] for e in events if e["type"] == "view"}
    assert viewed == {root_token, child_token}

    # The consumers' view, through the query API.
    summary = until(
        lambda: (s := stack.get(f"/v1/campaigns/{CAMPAIGN}/summary"))["shares"] == 2 and s,
        30,
        "both shares in the summary",
    )
    assert summary["views"] == 3  # the landing twice in the first context, once in the second
    tree = until(
        lambda: (t := stack.get(f"/v1/cascades/{root}"))["stats"]["depth"] == 2 and t,
        30,
        "the cascade at depth 2",
    )
    ids = {n["id"]: n for n in tree["nodes"]}
    assert set(ids) == {root, child, grandchild}
    assert ids[child]["parent"] == root and ids[grandchild]["parent"] == child
    assert ids[root]["descendants"] == 2 and ids[child]["descendants"] == 1
    assert {(e["source"], e["target"]) for e in tree["edges"]} == {
        (root, child),
        (child, grandchild),
    }
    listed = stack.get(f"/v1/campaigns/{CAMPAIGN}/cascades", order_by="size")["cascades"]
    assert [c["root"] for c in listed] == [root]

    # The dashboard: a wrong key is refused and asked again; the right one draws the tree.
    board = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 1000}).new_page()
    board_problems = watch(board)
    board.goto(f"{stack.url}/dashboard?campaign={CAMPAIGN}")
    board.fill("#key", "not-the-read-key-0000")
    board.click("#connect button[type=submit]")
    board.wait_for_function(
        "() => document.getElementById('connect-message').textContent.includes('refused')",
        timeout=10_000,
    )
    assert board.is_visible("#connect") and board.is_hidden("#board")
    # The browser logs the refused requests themselves, and nothing else.
    assert board_problems and all("status of 401" in p for p in board_problems), board_problems
    board_problems.clear()
    board.fill("#key", stack.read_key)
    board.click("#connect button[type=submit]")
    board.wait_for_function(
        "root => { const t = document.getElementById('tree');"
        " return t.dataset.root === root && t.querySelectorAll('circle.node').length === 3; }",
        arg=root,
        timeout=20_000,
    )
    assert stack.read_key not in board.url  # only in the header and sessionStorage
    assert board.evaluate("sessionStorage.getItem('viraltrace.readKey')") == stack.read_key
    selected = board.get_attribute("#cascades tbody tr[aria-current=true]", "data-root")
    assert selected == root
    assert board.text_content("#tree-caption").startswith(f"Cascade {root}: 3 of 3 nodes drawn")
    drawn = board.eval_on_selector_all(
        "#tree circle.node", "cs => cs.map(c => c.getAttribute('data-id')).sort()"
    )
    assert drawn == sorted([root, child, grandchild])
    assert board.eval_on_selector_all("#tree line.edge", "ls => ls.length") == 2
    box = board.locator("#tree").bounding_box()
    assert board.is_visible("#tree") and box is not None and box["height"] > 200, box
    # The link's root has no channel; the shares have theirs.
    legend = board.eval_on_selector_all(
        "#tree-legend li", "ls => ls.map(l => l.textContent.trim())"
    )
    assert legend == ["email", "social", "no channel"]

    # Live: a third share shows up without a reload (polling every 5 s).
    third = browser.new_context().new_page()
    problems += watch(third)
    third.goto(second_share)
    snippet_ready(third)
    click_share(third)
    board.wait_for_function(
        "() => document.querySelectorAll('#tree circle.node').length === 4", timeout=30_000
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    board.screenshot(path=str(shot), full_page=True)
    print(f"dashboard screenshot: {shot}")
    assert problems + board_problems == []


def open_dashboard(browser: Any, stack: Stack, campaign: str) -> tuple[Any, list[str]]:
    # en-US: the page formats numbers for the reader's locale.
    page = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 1000}).new_page()
    problems = watch(page)
    page.goto(f"{stack.url}/dashboard?campaign={campaign}")
    page.fill("#key", stack.read_key)
    page.click("#connect button[type=submit]")
    return page, problems


def test_the_dashboard_draws_the_first_page_of_a_large_tree_and_says_what_is_left_out(
    stack: Stack, browser: Any
) -> None:
    """1,300 shares in one cascade (random parents): the page asks for 1,000 nodes,
    draws them inside its picture, and says how many it does not show."""
    campaign = "big-tree"
    total = 1_300
    rng = random.Random(7)
    with httpx.Client(base_url=stack.url, timeout=10) as client:

        def mint(parent: str | None, channel: str) -> str:
            body = {"campaign": campaign, "channel": channel}
            if parent is not None:
                body["parent"] = parent
            answer = client.post("/v1/shares", json=body)
            assert answer.status_code == 201, answer.text
            token: str = answer.json()["token"]
            return token

        tokens = [mint(None, "email")]
        for _ in range(total - 1):
            # Biased to recent shares: a deep, bushy tree rather than a star.
            parent = tokens[max(0, len(tokens) - 1 - int(rng.expovariate(1 / 40)))]
            tokens.append(mint(parent, rng.choice(["email", "x", "whatsapp", "sms"])))
    listed = until(
        lambda: (
            (c := stack.get(f"/v1/campaigns/{campaign}/cascades")["cascades"])
            and c[0]["size"] == total
            and c
        ),
        60,
        f"the cascade at {total} nodes",
    )
    root = listed[0]["root"]
    board, problems = open_dashboard(browser, stack, campaign)
    board.wait_for_function(
        "root => { const t = document.getElementById('tree');"
        " return t.dataset.root === root && t.querySelectorAll('circle.node').length > 0; }",
        arg=root,
        timeout=20_000,
    )
    assert board.eval_on_selector_all("#tree circle.node", "cs => cs.length") == 1_000
    assert board.is_visible("#tree")
    caption = board.text_content("#tree-caption")
    assert caption.startswith(f"Cascade {root}: 1,000 of 1,300 nodes drawn (300 not shown"), caption
    # Every node inside the 600 x 600 picture, and the 4 channels in the legend.
    inside = board.eval_on_selector_all(
        "#tree circle.node",
        "cs => cs.every(c => ['cx', 'cy'].every(a => {"
        " const v = Number(c.getAttribute(a)); return v >= 0 && v <= 600; }))",
    )
    assert inside
    legend = board.eval_on_selector_all(
        "#tree-legend li", "ls => ls.map(l => l.textContent.trim())"
    )
    assert legend == ["email", "sms", "whatsapp", "x"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard-large-tree.png"
    board.screenshot(path=str(shot), full_page=True)
    print(f"large tree screenshot: {shot}")
    assert problems == []


def test_the_dashboard_asks_for_another_campaign_when_the_key_cannot_read_it(
    stack: Stack, browser: Any
) -> None:
    """A control-plane read key limited to one campaign: 403 for another one."""
    stack.cli("campaigns", "create", "scoped", "--name", "Scoped")
    key = stack.cli("keys", "create", "--scope", "read", "--campaign", "scoped")
    page = browser.new_context().new_page()
    problems = watch(page)
    page.goto(f"{stack.url}/dashboard?campaign={CAMPAIGN}")
    page.fill("#key", key)
    page.click("#connect button[type=submit]")
    page.wait_for_function(
        "() => document.getElementById('connect-message').textContent"
        ".includes('cannot read campaign')",
        timeout=10_000,
    )
    assert page.is_visible("#connect") and page.is_hidden("#board")
    assert all("status of 403" in p for p in problems), problems
    problems.clear()
    # The key is kept for the next try; the campaign it can read opens.
    assert page.evaluate("sessionStorage.getItem('viraltrace.readKey')") == key
    page.fill("#campaign", "scoped")
    page.click("#connect button[type=submit]")
    page.wait_for_function(
        "() => document.getElementById('status').textContent.startsWith('scoped: updated')",
        timeout=10_000,
    )
    assert "failed" not in page.text_content("#status")
    assert page.eval_on_selector_all(".panel-error:not([hidden])", "es => es.length") == 0
    assert page.is_visible("#cascades-empty")  # an empty campaign: nothing to draw
    assert problems == []


@pytest.mark.parametrize("signal_name", ["dnt", "gpc"])
def test_dnt_and_gpc_keep_nothing_in_the_browser_and_no_visitor_on_the_server(
    stack: Stack, playwright: Any, tmp_path: Path, signal_name: str
) -> None:
    """The browser's own settings, not an imitation: Chromium's Do Not Track preference
    (profile), and its Global Privacy Control feature."""
    campaign = f"private-{signal_name}"
    if signal_name == "dnt":
        profile = tmp_path / "profile"
        (profile / "Default").mkdir(parents=True)
        (profile / "Default" / "Preferences").write_text(json.dumps({"enable_do_not_track": True}))
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        browser = None
    else:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS + GPC_ARGS
        )
        context = browser.new_context()
    try:
        seed = httpx.post(f"{stack.url}/v1/shares", json={"campaign": campaign}, timeout=10)
        assert seed.status_code == 201
        arrival = seed.json()["token"]
        page = context.new_page()
        problems = watch(page)
        page.goto(f"{stack.site.page(campaign)}?vt={arrival}")
        snippet_ready(page)
        assert page.evaluate("viraltrace.privacy") == signal_name
        # The token works for this page but is not kept: storage stays empty.
        assert page.evaluate("viraltrace.token()") == arrival
        assert page.evaluate("sessionStorage.length") == 0
        shared = click_share(page)
        # No tracked link in this campaign: the share URL is this page with vt=<child>.
        child_token = parse_qs(urlsplit(shared).query)["vt"][0]
        assert shared == f"{stack.site.page(campaign)}?vt={child_token}"
        page.evaluate("viraltrace.track('convert', {value: 12.5})")
        page.goto(stack.site.page(campaign))  # the next page of the visit: nothing kept
        snippet_ready(page)
        assert page.evaluate("viraltrace.token()") is None
        assert page.evaluate("sessionStorage.length") == 0
        assert problems == []
        header = "DNT" if signal_name == "dnt" else "Sec-GPC"
        site_hits = [h for p, h in stack.site.requests if p.startswith(f"/{campaign}.html")]
        assert site_hits and all(h.get(header) == "1" for h in site_hits)

        # Every event was still counted, and none carries anything about the visitor.
        events = stack.events(campaign, 5)  # the seed share, 2 views, a share, a conversion
        by_type = sorted(e["type"] for e in events)
        assert by_type == ["convert", "share", "share", "view", "view"]
        from_browser = [e for e in events if e["source"] != "shares" or e["depth"] == 1]
        assert len(from_browser) == 4
        for event in from_browser:
            assert event["privacy"] == signal_name, event
            assert event["visitor"] is None and event["net"] is None
            assert event["country"] is None
        convert = next(e for e in events if e["type"] == "convert")
        assert convert["value"] == 12.5 and convert["token"] == arrival
    finally:
        context.close()
        if browser is not None:
            browser.close()
