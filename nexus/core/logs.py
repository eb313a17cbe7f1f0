"""Structured logs: one JSON object per line, carrying the request id when there is one.

The request id travels in a context variable (:data:`request_id`), so a log line written
anywhere below an HTTP handler or a dispatch step names the run it is about without every
function passing it along. Extra fields given as ``log.info("...", extra={"shard": s})``
become keys of the JSON object.

Errors are logged once, where they are handled, never on their way up.
"""

from __future__ import annotations

import logging
import sys
import time
from contextvars import ContextVar
from typing import Any

import orjson

from nexus.core.config import LogSettings

request_id: ContextVar[str | None] = ContextVar("nexus_request_id", default=None)
"""The run the current task works on; set by handlers and per-run loops."""

# Attributes every LogRecord has; anything else on a record came in through ``extra``.
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: time, level, logger, message, context, extras."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _iso_time(record.created),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = request_id.get()
        if rid is not None:
            entry["requestId"] = rid
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """Human-readable lines for a terminal, with the request id when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        rid = request_id.get()
        prefix = f"[{rid}] " if rid else ""
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        tail = " " + " ".join(f"{k}={v}" for k, v in extras.items()) if extras else ""
        line = (
            f"{_iso_time(record.created)} {record.levelname:<7} {record.name}: "
            f"{prefix}{record.getMessage()}{tail}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _iso_time(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def configure(settings: LogSettings, service: str) -> None:
    """Send all logs to stderr in the configured format; quieten chatty libraries."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if settings.format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    for noisy in ("aiohttp.access", "botocore", "aiobotocore", "kubernetes_asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
