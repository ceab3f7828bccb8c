"""The alerts consumer: negative buzz and spread alerts, delivered as webhooks."""
