"""Structured logging: JSON lines on stdout with timestamp, level, event and node on every line (and
``worker``, the worker's index, in a node served by several processes).

``configure`` runs once at start-up. Context that belongs to a connection (``peer``, ``conn_id``) is
bound with ``structlog.contextvars`` at the top of each handler; a greenlet starts with an empty
context, so code that spawns one passes a bound logger along instead of relying on contextvars.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog


def configure(node_id: str, level: str = "info", worker: int | None = None) -> None:
    def add_node(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
        event.setdefault("node", node_id)
        if worker is not None:
            event.setdefault("worker", worker)
        return event

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            add_node,
            _leading_fields,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        # One write per line: the workers of a node share stdout, and a line written in one write
        # (under PIPE_BUF) is never interleaved with another process's.
        logger_factory=structlog.WriteLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )


LEADING_FIELDS = ("timestamp", "level", "node", "event")


def _leading_fields(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    """Put the fields every line has first, so a human scanning the log finds them at once."""
    return {**{name: event[name] for name in LEADING_FIELDS if name in event}, **event}


def get_logger(**context: Any) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger().bind(**context)
    return logger


def printable_key(key: bytes, limit: int = 100) -> str:
    """A key as log text: UTF-8 where it is, escapes where it is not, cut at ``limit`` characters."""
    text = key.decode("utf-8", errors="backslashreplace")
    return text if len(text) <= limit else text[:limit] + "..."
