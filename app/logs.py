"""Structured logs: one JSON object per line, UTC ISO timestamps."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import orjson


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The pixel is the hot path: no per-request access log.
    for noisy in ("uvicorn.access", "granian.access", "aiokafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
