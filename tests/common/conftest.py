"""Fixtures the libs/common tests share: a clean request-ID context and JSON log capture."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from medsearch_common.context import set_request_id
from medsearch_common.logs import JsonFormatter


@pytest.fixture(autouse=True)
def no_request_id() -> Iterator[None]:
    """Every test starts and ends with no current request ID, so none leaks between tests."""
    set_request_id(None)
    yield
    set_request_id(None)


class JsonLog:
    """What every logger wrote at INFO and above, formatted by JsonFormatter."""

    def __init__(self, stream: io.StringIO) -> None:
        self._stream = stream

    @property
    def text(self) -> str:
        return self._stream.getvalue()

    def entries(self) -> list[dict[str, Any]]:
        """One parsed object per line; a line that is not one JSON object fails the test."""
        entries = [json.loads(line) for line in self.text.splitlines()]
        assert all(isinstance(entry, dict) for entry in entries)
        return entries

    def with_msg(self, msg: str) -> list[dict[str, Any]]:
        return [entry for entry in self.entries() if entry["msg"] == msg]


@pytest.fixture
def json_log() -> Iterator[JsonLog]:
    """Capture every logger's records as JSON lines; the root logger is restored afterwards."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("test-service"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield JsonLog(stream)
    root.removeHandler(handler)
    root.setLevel(level)
