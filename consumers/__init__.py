"""Kafka consumers: one folder per consumer, pure processing apart from the plumbing.

The first consumers (the ClickHouse sink, live cascades) arrive with their
issues; this package is here so that the layout and the lint/type checks
are in place from the start.
"""
