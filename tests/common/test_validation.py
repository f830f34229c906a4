"""The one validation contract every service applies: pure logic."""

from __future__ import annotations

import re
from typing import Any

import pytest

from medsearch_common import validation
from medsearch_common.validation import Invalid
from tests.support.id_ranges import BAD_QUERY_RANGES, BAD_THRESHOLDS


class Refused(Invalid):
    """A service's own error class: the contract raises it."""


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("a\tb", "a tab"),
        ("a\nb", "a line break"),
        ("a\rb", "a carriage return"),
        ("a\x00b", "NUL"),
        ("a\x7fb", "U+007F"),
        ("a\x85b", "U+0085"),  # C1: NEL
        ("   ", "must not be empty"),
        ("x" * 257, "longer than 256"),
        (5, "must be a string, got an integer"),
        (["x"], "must be a string, got a list"),
    ],
)
def test_text_fields_are_one_line_strings_within_the_limit(value: Any, message: str) -> None:
    with pytest.raises(Refused, match=re.escape(message)) as raised:
        validation.text(value, "metadata.patient_id", error=Refused)
    assert str(raised.value).startswith("metadata.patient_id ")


def test_text_is_trimmed_and_null_stays_null() -> None:
    assert validation.text("  P-1 ", "x") == "P-1"
    assert validation.text("Åse Öberg – 東京", "x") == "Åse Öberg – 東京"
    assert validation.text(None, "x") is None
    with pytest.raises(Invalid, match="got null"):
        validation.required_text(None, "metadata.dataset")


def test_integers_and_ids() -> None:
    assert validation.integer(5, "age", 0, 130) == 5
    for bad in (True, 5.0, "5", None):
        with pytest.raises(Invalid, match="must be an integer"):
            validation.integer(bad, "age", 0, 130)
    with pytest.raises(Invalid, match="between 0 and 130, got 131"):
        validation.integer(131, "age", 0, 130)
    assert validation.image_id(2**63 - 1, "id") == 2**63 - 1
    with pytest.raises(Invalid):
        validation.image_id(0, "id")


@pytest.mark.parametrize("raw", ["0", "-1", "1.0", "9223372036854775808", "12a", "", "1" * 20, " 1"])
def test_ids_in_paths_are_digits_within_bigint(raw: str) -> None:
    with pytest.raises(Invalid, match="positive integer"):
        validation.id_in_path(raw, "an image ID")


def test_ranges_of_ids_are_half_open_and_bounded() -> None:
    assert validation.id_range(0, 16_000) == (0, 16_000)
    assert validation.id_range(2**63 - 2, 2**63 - 1) == (2**63 - 2, 2**63 - 1)
    assert validation.id_range_in_query("10", "20", error=Refused) == (10, 20)


# Unknown parameters are the services' own to refuse.
RANGES_ONLY = [(params, words) for params, words in BAD_QUERY_RANGES if set(params) <= {"from", "to"}]


@pytest.mark.parametrize(("params", "words"), RANGES_ONLY, ids=lambda v: repr(v)[:40])
def test_bad_ranges_of_ids_in_a_query_name_what_is_wrong(params: dict[str, str], words: str) -> None:
    with pytest.raises(Refused, match=re.escape(words)):
        validation.id_range_in_query(params.get("from"), params.get("to"), error=Refused)


def test_similarity_thresholds_are_numbers_above_0_up_to_1() -> None:
    assert [validation.similarity(v, "threshold") for v in (1, 1.0, 0.5, 1e-9)] == [1.0, 1.0, 0.5, 1e-9]
    with pytest.raises(Refused, match="got nan"):
        validation.similarity(float("nan"), "threshold", error=Refused)


@pytest.mark.parametrize(("value", "words"), BAD_THRESHOLDS, ids=lambda v: repr(v)[:40])
def test_bad_similarity_thresholds_name_what_is_wrong(value: Any, words: str) -> None:
    with pytest.raises(Refused, match=re.escape(words)):
        validation.similarity(value, "threshold", error=Refused)


def test_flags() -> None:
    assert [validation.flag(v, "f") for v in ("true", "ON", "1", " false ", "0", "off", "", None)] == [
        True, True, True, False, False, False, False, False,
    ]  # fmt: skip
    with pytest.raises(Invalid, match="must be true or false, got 'yes'"):
        validation.flag("yes", "one_per_patient")
