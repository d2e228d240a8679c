"""Structured logs: JSON lines when stderr is not a terminal, readable text when it is.

On a terminal, by default (``compact``), only semtile's warnings and errors
(and Python warnings) show, each as one line cut to the terminal's width (an image's failure as ``FAILED name:
reason``), so that a progress bar stays readable; ``verbosity`` 1 (``-v``)
shows every event with its fields, 2 (``-vv``) debug events too, -1 (``-q``)
warnings and errors only in every format.

Everything that semtile's process writes to the log goes through structlog,
so that in JSON mode every stderr line is one JSON object: semtile's own
events, records of the standard :mod:`logging` module (tifffile, zarr, numba
and the other libraries log there; also ``semtile.*`` modules that use it)
and Python warnings (:func:`warnings.warn`).
"""

from __future__ import annotations

import logging
import shutil
import sys
import warnings

import structlog

__all__ = ["configure_logging", "compact_terminal", "get_logger", "json_default"]

#: Libraries' records below this level are dropped, as Python itself drops them
#: when no logging is configured; semtile's own follow ``configure_logging(level=)``.
THIRD_PARTY_LEVEL = logging.WARNING


#: ``verbosity`` -> the level of semtile's own events (compact terminal output raises it to WARNING).
VERBOSITY_LEVELS = {-1: logging.WARNING, 0: logging.INFO, 1: logging.INFO, 2: logging.DEBUG}


def configure_logging(json: bool | None = None, level: int | None = None, verbosity: int = 0) -> None:
    """Send structlog events, stdlib log records and warnings to stderr.

    ``json=None`` picks JSON unless stderr is a TTY. ``verbosity`` (-1 quiet,
    0 default, 1 and 2 verbose) sets the level unless ``level`` is given; text
    on a terminal at verbosity 0 is compact (see the module docstring). May be
    called again: the last call wins, and nothing is installed twice.
    """
    tty = sys.stderr.isatty()
    if json is None:
        json = not tty
    verbosity = max(-1, min(2, int(verbosity)))
    if level is None:
        level = VERBOSITY_LEVELS[verbosity]
    if json:
        processors = [_DICT_TRACEBACKS, structlog.processors.JSONRenderer(default=json_default)]
    elif tty and verbosity <= 0:
        level = max(level, logging.WARNING)
        processors = [_compact, _clear_line]
    else:
        processors = [structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)]
        if tty:
            processors.append(_clear_line)
    _STATE["compact"] = not json and tty and verbosity <= 0
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *processors,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=_CURRENT_STDERR),
        cache_logger_on_first_use=False,
    )
    _route_stdlib_logging(level)
    warnings.showwarning = _show_warning


_STATE = {"compact": False}


class _CurrentStderr:
    """Whatever ``sys.stderr`` is when a line is written: a caller that swaps stderr (and closes the old one,
    as click's test runner does) still gets every line, and nothing writes to a closed file."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_CURRENT_STDERR = _CurrentStderr()

#: Tracebacks as dicts without the frames' local variables: a failure's log line stays a few kB, and no
#: image array or secret held in a local ends up in the log.
_DICT_TRACEBACKS = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False))


def compact_terminal() -> bool:
    """Whether the last :func:`configure_logging` writes compact lines to a terminal (failures shown live)."""
    return _STATE["compact"]


def json_default(value):
    """What a log field that :mod:`json` cannot write becomes: numpy scalars numbers (or booleans), numpy
    arrays lists, paths and anything else their ``str``."""
    np = sys.modules.get("numpy")  # a numpy value comes from a process that imported numpy
    if np is not None and isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()  # a scalar's tolist() is its Python number
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)


def _route_stdlib_logging(level: int) -> None:
    """One handler on the root logger hands every record to structlog (and its one writer)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _ToStructlog)]:
        root.removeHandler(handler)
    root.addHandler(_ToStructlog())
    root.setLevel(max(THIRD_PARTY_LEVEL, level))
    logging.getLogger("semtile").setLevel(level)
    logging.captureWarnings(False)  # warnings come to _show_warning directly, with their fields


class _ToStructlog(logging.Handler):
    """A stdlib logging handler that re-emits each record as a structlog event."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = {"logger": record.name}
            if record.exc_info and record.exc_info[0] is not None:
                fields["exc_info"] = record.exc_info
            method = next((name for floor, name in _METHODS if record.levelno >= floor), "debug")
            getattr(structlog.get_logger(record.name), method)(record.getMessage(), **fields)
        except Exception:  # noqa: BLE001 - logging must never raise, nor print a raw traceback
            try:
                structlog.get_logger(record.name).error(
                    "unformattable log record", logger=record.name, msg=repr(record.msg), args=repr(record.args))
            except Exception:  # noqa: BLE001 - logging must never raise into the code that logs
                pass


_METHODS = ((logging.CRITICAL, "critical"), (logging.ERROR, "error"), (logging.WARNING, "warning"),
            (logging.INFO, "info"))


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """:func:`warnings.showwarning` replacement: a warning is one structlog event."""
    if file is not None and file not in (sys.stderr, sys.__stderr__):
        warnings._showwarning_orig(message, category, filename, lineno, file, line)  # type: ignore[attr-defined]
        return
    structlog.get_logger("py.warnings").warning(
        str(message), logger="py.warnings", category=category.__name__, filename=str(filename), lineno=lineno
    )


#: Fields a compact line leaves out (the time, the level and the logger are implied; a traceback is for -v).
_QUIET_FIELDS = frozenset({"event", "level", "timestamp", "logger", "exc_info", "stack"})


def _compact(_logger, _name, event_dict: dict) -> str:
    """One terminal line per event, cut to the terminal's width: ``FAILED name: reason`` for an image."""
    event, logger = event_dict.get("event"), str(event_dict.get("logger") or "semtile")
    if event == "image_error":  # its traceback is for -v; the image_failed line that follows says what failed
        raise structlog.DropEvent
    if not logger.startswith(("semtile", "py.warnings")) and event_dict.get("level") != "critical":
        raise structlog.DropEvent  # a library's complaint (tifffile on a broken header) is a detail, for -v
    if event == "image_failed":  # the file's name (its full path is in the run table and with -v)
        path = str(event_dict.get("path", ""))
        text = f"FAILED {path.rstrip('/').rsplit('/', 1)[-1] or path}: {event_dict.get('error')}"
    else:
        fields = " ".join(f"{k}={v}" for k, v in event_dict.items() if k not in _QUIET_FIELDS)
        text = f"{event_dict.get('level', 'info')}: {event}" + (f" {fields}" if fields else "")
    text = " ".join(text.split())  # one line, whatever the message held
    width = max(20, shutil.get_terminal_size((100, 24)).columns - 1)
    return text if len(text) <= width else text[: width - 3] + "..."


def _clear_line(_logger, _name, rendered: str) -> str:
    """Start each terminal line by erasing a progress bar drawn on it."""
    return "\r\x1b[K" + rendered


def get_logger(name: str = "semtile"):
    return structlog.get_logger(name)
