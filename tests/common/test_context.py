"""The request ID: a caller's well-formed ID is kept, anything else is replaced by a fresh one."""

from __future__ import annotations

import contextvars
import re

import pytest

from medsearch_common.context import accept_request_id, current_request_id, set_request_id

FRESH_ID = re.compile(r"[0-9a-f]{32}")


@pytest.mark.parametrize(
    "incoming",
    [
        "abc",
        "7f3c2a9e-1b2d-4c5e-8f90-a1b2c3d4e5f6",
        "gateway:req_42.retry-1",
        "x",
        "A" * 128,
    ],
)
def test_a_well_formed_id_is_kept(incoming: str) -> None:
    assert accept_request_id(incoming) == incoming


@pytest.mark.parametrize(
    "incoming",
    [
        None,
        "",
        "A" * 129,
        "has space",
        "semi;colon",
        "slash/id",
        "<script>",
        "line\nbreak",
        "\nleading-newline",
        "tab\tid",
        "naïve",
        'quote"id',
    ],
)
def test_a_missing_too_long_or_odd_id_is_replaced_by_a_fresh_hex_id(incoming: str | None) -> None:
    replaced = accept_request_id(incoming)
    assert replaced != incoming
    assert FRESH_ID.fullmatch(replaced)


def test_an_id_ending_in_a_newline_is_replaced() -> None:
    replaced = accept_request_id("abc\n")
    assert FRESH_ID.fullmatch(replaced)


def test_fresh_ids_differ_each_time() -> None:
    assert len({accept_request_id(None) for _ in range(100)}) == 100


def test_the_current_request_id_is_what_was_set() -> None:
    set_request_id("req-1")
    assert current_request_id() == "req-1"
    set_request_id(None)
    assert current_request_id() is None


def test_a_fresh_context_has_no_request_id() -> None:
    set_request_id("req-1")
    assert contextvars.Context().run(current_request_id) is None


def test_setting_an_id_in_a_copied_context_does_not_change_the_caller() -> None:
    set_request_id("outer")
    contextvars.copy_context().run(set_request_id, "inner")
    assert current_request_id() == "outer"
