"""Image metadata: the fields of the v1 contract, validated strictly."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from medsearch_catalog.errors import InvalidMetadata, MalformedRequest
from medsearch_common import validation

MAX_METADATA_BYTES = 64 * 1024
MAX_EXTRA_BYTES = 16 * 1024
MAX_EXTRA_DEPTH = 8
MAX_TEXT_CHARS = 256
MAX_FINDINGS = 32
MAX_AGE = 130
SEXES = ("M", "F", "O")


@dataclass(frozen=True)
class ImageMetadata:
    dataset: str
    external_id: str | None = None
    patient_id: str | None = None
    study: int | None = None
    age: int | None = None
    sex: str | None = None
    view_position: str | None = None
    findings: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["findings"] = list(self.findings)
        return body


FIELDS = tuple(ImageMetadata.__dataclass_fields__)


def load_metadata_json(text: str | bytes) -> Any:
    """Parse the metadata JSON text, bounded in size and depth."""
    return load_json(text, "metadata")


def load_json(text: str | bytes, what: str, *, limit: int = MAX_METADATA_BYTES) -> Any:
    """Parse a JSON request part of at most `limit` bytes; errors call it `what`."""
    size = len(text.encode() if isinstance(text, str) else text)
    if size > limit:
        raise InvalidMetadata(f"{what} is {size} bytes; the limit is {limit}")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise InvalidMetadata(f"{what} is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedRequest(f"{what} is not valid JSON: {exc}") from None


def _reject_constant(name: str) -> Any:
    # json accepts NaN and Infinity, which are not JSON and which jsonb refuses.
    raise ValueError(f"{name} is not a JSON value")


def parse_metadata(raw: Any) -> ImageMetadata:
    """Complete metadata for a new image; `dataset` is required, the rest optional."""
    values = _validated_fields(raw)
    if "dataset" not in values:
        raise InvalidMetadata("metadata.dataset is required")
    return ImageMetadata(**values)


def parse_metadata_changes(raw: Any) -> dict[str, Any]:
    """The fields a PATCH changes; a null clears a field (all but `dataset`)."""
    values = _validated_fields(raw)
    if not values:
        raise InvalidMetadata(f"the update names no field; fields are: {', '.join(FIELDS)}")
    return values


def _validated_fields(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidMetadata(f"metadata must be a JSON object, got {_json_type(raw)}")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise InvalidMetadata(
            f"unknown metadata field(s): {', '.join(unknown)}; known fields are: {', '.join(FIELDS)}"
        )
    return {name: _FIELD_PARSERS[name](name, value) for name, value in raw.items()}


def _dataset(name: str, value: Any) -> str:
    text = _text(name, value)
    if text is None:
        raise InvalidMetadata(f"metadata.{name} must be a non-empty string, got null")
    return text


def _text(name: str, value: Any) -> str | None:
    # The one contract (libs/common): what the catalog takes, the search service takes too.
    return validation.text(value, f"metadata.{name}", error=InvalidMetadata, max_chars=MAX_TEXT_CHARS)


def _upper_text(name: str, value: Any) -> str | None:
    text = _text(name, value)
    return text.upper() if text is not None else None


def _integer(name: str, value: Any, minimum: int, maximum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidMetadata(f"metadata.{name} must be an integer, got {_json_type(value)}")
    if not minimum <= value <= maximum:
        raise InvalidMetadata(f"metadata.{name} must be between {minimum} and {maximum}, got {value}")
    return value


def _age(name: str, value: Any) -> int | None:
    return _integer(name, value, 0, MAX_AGE)


def _study(name: str, value: Any) -> int | None:
    return _integer(name, value, 0, 2**31 - 1)


def _sex(name: str, value: Any) -> str | None:
    text = _upper_text(name, value)
    if text is not None and text not in SEXES:
        raise InvalidMetadata(f"metadata.{name} must be one of {', '.join(SEXES)} or null, got {value!r}")
    return text


def _findings(name: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidMetadata(f"metadata.{name} must be a list of strings, got {_json_type(value)}")
    if len(value) > MAX_FINDINGS:
        raise InvalidMetadata(f"metadata.{name} has {len(value)} entries; the limit is {MAX_FINDINGS}")
    findings: list[str] = []
    for i, item in enumerate(value):
        finding = _text(f"{name}[{i}]", item)
        if finding is None:
            raise InvalidMetadata(f"metadata.{name}[{i}] must be a string, got null")
        if finding not in findings:
            findings.append(finding)
    return tuple(findings)


def _extra(name: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidMetadata(f"metadata.{name} must be a JSON object, got {_json_type(value)}")
    _check_json_value(name, value, depth=1)
    encoded = json.dumps(value, ensure_ascii=False)
    if len(encoded.encode()) > MAX_EXTRA_BYTES:
        raise InvalidMetadata(f"metadata.{name} is larger than {MAX_EXTRA_BYTES} bytes as JSON")
    return value


def _check_json_value(path: str, value: Any, depth: int) -> None:
    """Bounded depth, and no NUL anywhere (PostgreSQL's jsonb refuses it)."""
    if depth > MAX_EXTRA_DEPTH:
        raise InvalidMetadata(f"{_field(path)} is nested deeper than {MAX_EXTRA_DEPTH} levels")
    if isinstance(value, str) and "\x00" in value:
        raise InvalidMetadata(f"{_field(path)} contains a NUL character")
    if isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key:
                raise InvalidMetadata(f"{_field(path)} has a key with a NUL character")
            _check_json_value(f"{path}.{key}", item, depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_json_value(f"{path}[{i}]", item, depth + 1)


def _field(path: str) -> str:
    return f"metadata.{path}"


_FIELD_PARSERS = {
    "dataset": _dataset,
    "external_id": _text,
    "patient_id": _text,
    "study": _study,
    "age": _age,
    "sex": _sex,
    "view_position": _upper_text,
    "findings": _findings,
    "extra": _extra,
}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"
