"""Structured logs: JSON lines when stderr is not a terminal, readable text when it is."""

from __future__ import annotations

import logging
import sys

import structlog

__all__ = ["configure_logging", "get_logger"]


def configure_logging(json: bool | None = None, level: int = logging.INFO) -> None:
    """Send structlog events to stderr; ``json=None`` picks JSON unless stderr is a TTY."""
    if json is None:
        json = not sys.stderr.isatty()
    if json:
        processors = [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
    else:
        processors = [structlog.dev.ConsoleRenderer(colors=False)]
        if sys.stderr.isatty():
            processors.append(_clear_line)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *processors,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def _clear_line(_logger, _name, rendered: str) -> str:
    """Start each terminal line by erasing a progress bar drawn on it."""
    return "\r\x1b[K" + rendered


def get_logger(name: str = "semtile"):
    return structlog.get_logger(name)
