"""tifffile's complaints, stdlib log records and Python warnings reach stderr as JSON lines (semtile.logs)."""

from __future__ import annotations

import json
import logging
import struct
import warnings

import pytest
import structlog
import tifffile

from semtile.io.tiff import open_scan
from semtile.logs import configure_logging, get_logger

from scan_samples import texture


@pytest.fixture
def restore_logging():
    """Put structlog, the root logger and warnings back as they were."""
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    semtile_level = logging.getLogger("semtile").level
    show = warnings.showwarning
    yield
    structlog.configure(**config)
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("semtile").setLevel(semtile_level)
    warnings.showwarning = show


def software_offset_past_the_end(path):
    """A readable scan whose Software tag points past the end of the file: tifffile logs an error."""
    tifffile.imwrite(path, texture(64, 48), software="semtile fuzz " * 4, metadata=None)
    data = bytearray(path.read_bytes())
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack_from("<H", data, entry)[0] == 305:
            struct.pack_into("<I", data, entry + 8, 10**8)
    path.write_bytes(bytes(data))
    return path


def test_every_stderr_line_is_json_with_tifffile_and_warnings(tmp_path, capsys, restore_logging):
    path = software_offset_past_the_end(tmp_path / "bad-tag.tif")
    configure_logging(json=True)
    configure_logging(json=True)  # twice: still one handler, one line per record
    get_logger("semtile.test").info("before", n=1)
    with open_scan(path, databar_rows=0) as scan:  # the bad tag is metadata: the image still opens
        assert scan.valid().compute().shape == (64, 48)
    warnings.warn("a warning from Python\nover two lines", UserWarning, stacklevel=1)
    logging.getLogger("some.library").warning("a library's warning with %s", "arguments")
    logging.getLogger("some.library").info("a library's chatter: dropped, as without logging configured")
    logging.getLogger("semtile.engines.x").info("semtile's own stdlib info: kept")
    # a record that cannot be formatted: no "--- Logging error ---" block (pytest's own handler is bypassed)
    bad = logging.LogRecord("some.library", logging.ERROR, __file__, 1, "%d arguments, but %s", (1,), None)
    next(h for h in logging.getLogger().handlers if type(h).__name__ == "_ToStructlog").emit(bad)
    try:
        raise ValueError("inside")
    except ValueError:
        logging.getLogger("some.library").exception("a library's failure")
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(isinstance(e, dict) and "event" in e and "level" in e and "timestamp" in e for e in events)
    tiff = [e for e in events if e.get("logger") == "tifffile"]
    assert tiff and "invalid value offset 100000000" in tiff[0]["event"] and tiff[0]["level"] == "error"
    warned = [e for e in events if e.get("logger") == "py.warnings"]
    assert len(warned) == 1 and warned[0]["event"] == "a warning from Python\nover two lines"
    assert warned[0]["category"] == "UserWarning" and warned[0]["level"] == "warning"
    by_event = {e["event"]: e for e in events}
    assert by_event["a library's warning with arguments"]["logger"] == "some.library"
    assert "a library's chatter: dropped, as without logging configured" not in by_event
    assert by_event["semtile's own stdlib info: kept"]["level"] == "info"
    assert by_event["a library's failure"]["exception"][0]["exc_type"] == "ValueError"
    assert by_event["before"]["n"] == 1
    assert by_event["unformattable log record"]["msg"] == "'%d arguments, but %s'"
    assert [e["event"] for e in events].count("before") == 1


def test_console_mode_routes_them_too(tmp_path, capsys, restore_logging):
    path = software_offset_past_the_end(tmp_path / "bad-tag.tif")
    configure_logging(json=False)
    open_scan(path, databar_rows=0).close()
    err = capsys.readouterr().err
    assert "invalid value offset 100000000" in err and "tifffile" in err
