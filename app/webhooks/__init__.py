"""Alert webhooks: Standard Webhooks signing, the durable outbox, the retry policy
and the SSRF guard. The notifier that delivers the outbox is ``consumers/notifier``.

Pure parts (``signing``, ``policy``, the address rules of ``ssrf``) are apart from
the I/O parts (``outbox`` on the control-plane database, ``client`` on the network).
See docs/webhooks.md for what a receiver sees.
"""

from __future__ import annotations


class WebhookError(Exception):
    """Base of this package's errors. ``retriable``: whether trying the same delivery
    again later can succeed (a refused address may be fixed by DNS or an allowlist;
    a body over the size limit never will)."""

    retriable = True

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
