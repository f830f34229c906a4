"""One validation contract for what the services take and pass on: text fields, integers,
image IDs and flags, checked the same way everywhere.

Before this, the catalog took a tab or a newline in a text field that the search service then
refused: such an image was stored but could never be indexed. Now a value one service takes,
every service takes.

Each check raises `error` (a subclass of `Invalid`; each service passes the class its API
answers with, e.g. the catalog's 422 for metadata, the search service's 400) with a message
that names the field (`where`) and says what is wrong with it.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_TEXT_CHARS = 256
MAX_ID = 2**63 - 1  # PostgreSQL bigint, Milvus Int64
# The widest range of image IDs one request may cover: the search service answers it with one
# Milvus query, and Milvus returns at most 16,384 rows per query.
MAX_ID_SPAN = 16_000
# C0 controls (tab, newline and carriage return included: every text field is one line, shown
# to people and filtered on), DEL and the C1 controls.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_DIGITS = re.compile(r"[0-9]{1,19}")
_FLAGS = {"true": True, "1": True, "on": True, "false": False, "0": False, "off": False}


class Invalid(ValueError):
    """A value outside the contract; the message says which and why."""


def text(
    value: Any,
    where: str,
    *,
    error: type[Invalid] = Invalid,
    max_chars: int = MAX_TEXT_CHARS,
) -> str | None:
    """A one-line text field: None stays None; otherwise a string, trimmed, not empty, at most
    `max_chars` characters, without control characters."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise error(f"{where} must be a string, got {json_type(value)}")
    trimmed = value.strip()
    if not trimmed:
        raise error(f"{where} must not be empty (use null to leave it unset)")
    if len(trimmed) > max_chars:
        raise error(f"{where} is longer than {max_chars} characters")
    found = CONTROL_CHARACTERS.search(trimmed)
    if found:
        raise error(
            f"{where} contains a control character ({_name(found.group())}); text fields are one line"
        )
    return trimmed


def required_text(
    value: Any, where: str, *, error: type[Invalid] = Invalid, max_chars: int = MAX_TEXT_CHARS
) -> str:
    checked = text(value, where, error=error, max_chars=max_chars)
    if checked is None:
        raise error(f"{where} must be a non-empty string, got null")
    return checked


def integer(value: Any, where: str, minimum: int, maximum: int, *, error: type[Invalid] = Invalid) -> int:
    """A JSON integer (not a boolean, not a float) within [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{where} must be an integer, got {json_type(value)}")
    if not minimum <= value <= maximum:
        raise error(f"{where} must be between {minimum} and {maximum}, got {value}")
    return value


def image_id(value: Any, where: str, *, error: type[Invalid] = Invalid) -> int:
    """An image ID as JSON: a positive 64-bit integer."""
    return integer(value, where, 1, MAX_ID, error=error)


def id_in_path(raw: str, what: str, *, error: type[Invalid] = Invalid) -> int:
    """An ID as a URL path segment or query value: digits only, 1 to 2^63-1."""
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= MAX_ID:
        raise error(f"{what} is a positive integer, got {raw[:40]!r}")
    return int(raw)


def id_range(first: Any, end: Any, *, error: type[Invalid] = Invalid) -> tuple[int, int]:
    """A range of image IDs [first, end) as JSON integers: 0 <= first < end <= 2^63-1, at most
    MAX_ID_SPAN apart."""
    first = integer(first, "from", 0, MAX_ID, error=error)
    end = integer(end, "to", 0, MAX_ID, error=error)
    if end <= first:
        raise error(f"to ({end}) must be greater than from ({first}): the range is [from, to)")
    if end - first > MAX_ID_SPAN:
        raise error(f"from {first} to {end} spans {end - first} IDs; the limit is {MAX_ID_SPAN}")
    return first, end


def id_range_in_query(
    raw_first: str | None, raw_end: str | None, *, error: type[Invalid] = Invalid
) -> tuple[int, int]:
    """A range of image IDs given as the query values `from` and `to` (digits only), checked as
    `id_range` checks it."""
    bounds = []
    for name, raw in (("from", raw_first), ("to", raw_end)):
        if raw is None:
            raise error(
                f"{name} is missing: give the range of image IDs as from=FIRST&to=END (END not included)"
            )
        if not _DIGITS.fullmatch(raw):
            raise error(f"{name} must be a whole number from 0 to {MAX_ID}, got {raw[:40]!r}")
        bounds.append(int(raw))
    return id_range(*bounds, error=error)


def similarity(value: Any, where: str, *, error: type[Invalid] = Invalid) -> float:
    """A cosine similarity threshold as JSON: a number greater than 0 and at most 1 (1: the
    same direction). 0 and below would call every image a near-duplicate of every other."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise error(f"{where} must be a number greater than 0 and at most 1, got {json_type(value)}")
    if not 0 < value <= 1:  # NaN fails this too
        raise error(f"{where} must be greater than 0 and at most 1, got {value}")
    return float(value)


def flag(raw: str | None, name: str, *, error: type[Invalid] = Invalid) -> bool:
    """A query or form flag: true/false, 1/0, on/off (any case); absent or empty is false."""
    if raw is None or not raw.strip():
        return False
    value = _FLAGS.get(raw.strip().lower())
    if value is None:
        raise error(f"{name} must be true or false, got {raw[:20]!r}")
    return value


def json_type(value: Any) -> str:
    """How a JSON value is named in messages: "null", "an integer", "a string \"x\"", ..."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", float: "a number"}
    if value is None:
        return "null"
    if isinstance(value, int) and not isinstance(value, bool):
        return "an integer"
    return names.get(type(value), type(value).__name__) + (
        f" {json.dumps(value)[:40]}" if isinstance(value, str) else ""
    )


def _name(character: str) -> str:
    return {"\t": "a tab", "\n": "a line break", "\r": "a carriage return", "\x00": "NUL"}.get(
        character, f"U+{ord(character):04X}"
    )
