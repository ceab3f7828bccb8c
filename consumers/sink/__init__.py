"""The ClickHouse sink: ``share-events`` -> ``events`` and ``share-events-dlq`` -> ``events_dlq``.

``pipeline`` holds the pure processing steps (tested without a broker),
``runner`` wires them to ``consumers.base.ConsumerRunner``.
"""
