"""Event buses: where the API publishes and the consumers read.

Two implementations share one interface (``app.bus.base.Bus``): Kafka via
aiokafka for production, and an in-process bus for the embedded mode.
"""
