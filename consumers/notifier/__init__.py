"""The webhook notifier: delivers the outbox (``app.webhooks.outbox``) with retries.

Not a Kafka consumer: its queue is the control-plane database. ``runner`` holds
the loop; the pure parts (signing, retry policy, address rules) live in
``app.webhooks``.
"""
