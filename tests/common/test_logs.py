"""JSON logs: one object a line with time, level, service, logger, message, request ID and extras."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from medsearch_common.context import set_request_id
from medsearch_common.logs import JsonFormatter, configure_logging


def record(
    msg: str = "hello %s",
    args: tuple[object, ...] = ("world",),
    *,
    level: int = logging.INFO,
    name: str = "medsearch.test",
    extra: dict[str, object] | None = None,
    exc_info: bool = False,
) -> logging.LogRecord:
    """A record made the way a logger makes it, so that `extra` lands as attributes."""
    exc = None
    if exc_info:
        try:
            raise RuntimeError("disk on fire")
        except RuntimeError as error:
            exc = (type(error), error, error.__traceback__)
    return logging.getLogger(name).makeRecord(name, level, __file__, 1, msg, args, exc, extra=extra)


def formatted(rec: logging.LogRecord, service: str = "catalog") -> dict[str, object]:
    line = JsonFormatter(service).format(rec)
    assert "\n" not in line
    entry = json.loads(line)
    assert isinstance(entry, dict)
    return entry


def test_an_entry_has_time_level_service_logger_and_message() -> None:
    rec = record(level=logging.WARNING)
    entry = formatted(rec)
    assert list(entry) == ["ts", "level", "service", "logger", "msg"]
    assert entry["level"] == "warning"
    assert entry["service"] == "catalog"
    assert entry["logger"] == "medsearch.test"
    assert entry["msg"] == "hello world"


def test_the_time_is_utc_iso_8601_with_milliseconds_from_the_record() -> None:
    rec = record()
    ts = formatted(rec)["ts"]
    assert isinstance(ts, str)
    parsed = datetime.fromisoformat(ts)
    assert parsed.utcoffset() == timedelta(0)
    assert len(ts.split(".")[1]) == len("123+00:00")
    assert abs(parsed.timestamp() - rec.created) < 0.001


def test_the_current_request_id_is_included_when_set() -> None:
    assert "request_id" not in formatted(record())
    set_request_id("req-9")
    assert formatted(record())["request_id"] == "req-9"


def test_extra_fields_become_members_and_odd_values_become_strings() -> None:
    entry = formatted(record(extra={"image_id": 7, "labels": ["Edema"], "path": object()}))
    assert entry["image_id"] == 7
    assert entry["labels"] == ["Edema"]
    assert isinstance(entry["path"], str) and entry["path"].startswith("<object object")


def test_standard_record_attributes_are_not_logged() -> None:
    entry = formatted(record())
    for attr in ("args", "levelno", "pathname", "lineno", "process", "thread", "created", "exc_info"):
        assert attr not in entry


def test_an_exception_is_logged_with_its_traceback_on_one_line() -> None:
    entry = formatted(record("failed", (), level=logging.ERROR, exc_info=True))
    exc = entry["exc"]
    assert isinstance(exc, str)
    assert exc.startswith("Traceback (most recent call last):")
    assert "RuntimeError: disk on fire" in exc


def test_a_record_without_exception_has_no_exc_member() -> None:
    assert "exc" not in formatted(record())


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root_logger")
def test_configure_logging_sends_every_logger_to_stderr_as_json_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("embedder")
    set_request_id("req-5")
    logging.getLogger("medsearch.model").info("loaded", extra={"weights": "random:1"})
    logging.getLogger("somelib").warning("careful")
    lines = capsys.readouterr().err.splitlines()
    entries = [json.loads(line) for line in lines]
    assert [(e["logger"], e["msg"]) for e in entries] == [
        ("medsearch.model", "loaded"),
        ("somelib", "careful"),
    ]
    assert all(e["service"] == "embedder" and e["request_id"] == "req-5" for e in entries)
    assert entries[0]["weights"] == "random:1"


@pytest.mark.usefixtures("restore_root_logger")
def test_configure_logging_applies_the_level(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("embedder", "WARNING")
    logging.getLogger("medsearch.model").info("hidden")
    logging.getLogger("medsearch.model").error("shown")
    assert [json.loads(line)["msg"] for line in capsys.readouterr().err.splitlines()] == ["shown"]


@pytest.mark.usefixtures("restore_root_logger")
def test_configure_logging_twice_does_not_duplicate_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("embedder")
    configure_logging("embedder")
    logging.getLogger("medsearch.model").info("once")
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_extra_fields_cannot_overwrite_the_standard_ones() -> None:
    set_request_id("req-1")
    try:
        entry = formatted(record(extra={"service": "spoofed", "level": "none", "request_id": "x", "k": 1}))
    finally:
        set_request_id(None)
    assert (entry["service"], entry["level"], entry["request_id"], entry["k"]) == (
        "catalog",
        "info",
        "req-1",
        1,
    )
