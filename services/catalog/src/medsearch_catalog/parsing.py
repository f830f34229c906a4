"""Reading request values (path parts, query parameters, JSON bodies) into the catalog's terms."""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from medsearch_catalog.audit import ACTIONS, MAX_ACTOR_CHARS, AuditFilter
from medsearch_catalog.errors import (
    BatchTooLarge,
    InvalidIdentityRequest,
    InvalidIndexState,
    MalformedRequest,
)
from medsearch_catalog.identity import MAX_SECRET_CHARS, Identity
from medsearch_catalog.metadata import MAX_TEXT_CHARS, SEXES
from medsearch_catalog.repository import INDEX_STATES, ImageFilter, IndexStateChange
from medsearch_common.validation import id_range_in_query

MAX_BATCH_IDS = 100
MAX_BATCH_IMAGES = 32
MAX_INDEX_STATE_ITEMS = 500
MAX_REASON_CHARS = 2000
_MAX_BIGINT = 2**63 - 1
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_DIGITS = re.compile(r"[0-9]{1,19}")


def parse_image_id(raw: str) -> int:
    return parse_id(raw, "an image ID")


def parse_id(raw: str, what: str) -> int:
    """A positive bigint ID from a path part or a parameter; `what` names it in the error."""
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= _MAX_BIGINT:
        raise MalformedRequest(f"{what} is a positive integer, got {raw[:40]!r}")
    return int(raw)


def parse_id_list(raw: str) -> list[int]:
    parts = [p.strip() for p in raw.split(",") if p.strip()]
    if not parts:
        raise MalformedRequest("'ids' must list at least one image ID, separated by commas")
    if len(parts) > MAX_BATCH_IDS:
        raise MalformedRequest(f"'ids' lists {len(parts)} IDs; the limit is {MAX_BATCH_IDS}")
    return [parse_image_id(p) for p in parts]


def parse_id_range(args: Any) -> tuple[int, int]:
    """A range of image IDs [from, to) from the query parameters `from` and `to`."""
    return id_range_in_query(args.get("from"), args.get("to"), error=MalformedRequest)


def parse_model_id(raw: str) -> str:
    if not _MODEL_ID.fullmatch(raw):
        raise MalformedRequest(
            "a model ID is 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit;"
            f" got {raw[:40]!r}"
        )
    return raw


def parse_filter(args: Any) -> ImageFilter:
    """A listing's filter from its query parameters (a werkzeug MultiDict)."""

    def texts(name: str) -> tuple[str, ...]:
        values = tuple(v.strip() for v in args.getlist(name) if v.strip())
        if any(len(v) > MAX_TEXT_CHARS for v in values):
            raise MalformedRequest(f"'{name}' is longer than {MAX_TEXT_CHARS} characters")
        return values

    index_states = texts("index_state")
    bad_states = [s for s in index_states if s not in INDEX_STATES]
    if bad_states:
        raise MalformedRequest(f"index_state must be one of {', '.join(INDEX_STATES)}, got {bad_states[0]!r}")
    model_id = args.get("model_id")
    if bool(index_states) != (model_id is not None):
        raise MalformedRequest("'index_state' and 'model_id' go together: the state is per model")
    age_min, age_max = int_arg(args, "age_min", 0, 130), int_arg(args, "age_max", 0, 130)
    if age_min is not None and age_max is not None and age_min > age_max:
        raise MalformedRequest(f"age_min ({age_min}) is greater than age_max ({age_max})")
    return ImageFilter(
        dataset=texts("dataset"),
        patient_id=texts("patient_id"),
        external_id=texts("external_id"),
        finding=texts("finding"),
        sex=_sexes(texts("sex")),
        view_position=tuple(v.upper() for v in texts("view_position")),
        age_min=age_min,
        age_max=age_max,
        model_id=parse_model_id(model_id) if model_id is not None else None,
        index_state=index_states,
    )


def _sexes(values: tuple[str, ...]) -> tuple[str, ...]:
    sexes = tuple(v.upper() for v in values)
    bad = [v for v in sexes if v not in SEXES]
    if bad:
        raise MalformedRequest(f"'sex' must be one of {', '.join(SEXES)}, got {bad[0][:40]!r}")
    return sexes


def int_arg(args: Any, name: str, minimum: int, maximum: int) -> int | None:
    raw = args.get(name)
    if raw is None:
        return None
    if not _DIGITS.fullmatch(raw):
        raise MalformedRequest(f"'{name}' must be an integer, got {raw[:40]!r}")
    value = int(raw)
    if not minimum <= value <= maximum:
        raise MalformedRequest(f"'{name}' must be between {minimum} and {maximum}, got {value}")
    return value


def flag_arg(args: Any, name: str) -> bool:
    raw = args.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise MalformedRequest(f"'{name}' must be true or false, got {raw[:40]!r}")
    return bool(raw in ("true", "1"))


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": last_id}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        after = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))["after"]
    except (binascii.Error, ValueError, TypeError, KeyError, UnicodeDecodeError):
        raise MalformedRequest("'cursor' is not a cursor this service gave out") from None
    if not isinstance(after, int) or isinstance(after, bool) or not 0 <= after <= _MAX_BIGINT:
        raise MalformedRequest("'cursor' is not a cursor this service gave out")
    return after


def parse_metadata_list(raw: Any, files: int) -> list[Any]:
    """A batch's metadata: a JSON array with one object per file, in order (each checked later)."""
    if not isinstance(raw, list):
        raise MalformedRequest("'metadata' must be a JSON array with one metadata object per file, in order")
    if len(raw) != files:
        raise MalformedRequest(f"'metadata' has {len(raw)} entries for {files} file(s); send one per file")
    return raw


def parse_index_state(body: Any, image_id: int) -> IndexStateChange:
    """One image's new state: {"state": ..., "reason": ...}."""
    if not isinstance(body, dict):
        raise InvalidIndexState("the body must be a JSON object with 'state' and, when failed, 'reason'")
    return _index_state_change(image_id, body, ("state", "reason"), where="")


def parse_index_states(body: Any) -> list[IndexStateChange]:
    """Many images' new states: {"items": [{"id": ..., "state": ..., "reason": ...}, ...]};
    any bad item refuses them all."""
    if not isinstance(body, dict) or set(body) != {"items"}:
        raise InvalidIndexState('the body must be a JSON object with only "items", a list of states')
    items = body["items"]
    if not isinstance(items, list) or not items:
        raise InvalidIndexState("items must be a non-empty list of {id, state, reason} objects")
    if len(items) > MAX_INDEX_STATE_ITEMS:
        raise BatchTooLarge(f"items lists {len(items)} states; the limit is {MAX_INDEX_STATE_ITEMS}")
    changes: list[IndexStateChange] = []
    first_at: dict[int, int] = {}
    for i, item in enumerate(items):
        where = f"items[{i}]: "
        if not isinstance(item, dict):
            raise InvalidIndexState(
                f"{where}each item is a JSON object with id, state and, when failed, reason"
            )
        image_id = item.get("id")
        if isinstance(image_id, bool) or not isinstance(image_id, int) or not 1 <= image_id <= _MAX_BIGINT:
            raise InvalidIndexState(
                f"{where}id must be a positive integer (an image ID), got {image_id!r:.40}"
            )
        if image_id in first_at:
            raise InvalidIndexState(
                f"{where}image {image_id} is also items[{first_at[image_id]}]; give each once"
            )
        first_at[image_id] = i
        changes.append(_index_state_change(image_id, item, ("id", "state", "reason"), where))
    return changes


def _index_state_change(
    image_id: int, item: dict[str, Any], known: tuple[str, ...], where: str
) -> IndexStateChange:
    unknown = sorted(set(item) - set(known))
    if unknown:
        raise InvalidIndexState(
            f"{where}unknown field(s): {', '.join(unknown)}; known fields are: {', '.join(known)}"
        )
    state, reason = item.get("state"), item.get("reason")
    if state not in INDEX_STATES:
        raise InvalidIndexState(f"{where}state must be one of {', '.join(INDEX_STATES)}, got {state!r:.40}")
    if state == "failed":
        if isinstance(reason, str):
            reason = reason.replace("\x00", "").strip()[:MAX_REASON_CHARS]
        if not isinstance(reason, str) or not reason:
            raise InvalidIndexState(f"{where}a failed state needs a 'reason' (a non-empty string)")
    elif reason is not None:
        raise InvalidIndexState(f"{where}'reason' is only for the failed state, not {state}")
    return IndexStateChange(image_id, state, reason)


# -- identity and audit ------------------------------------------------------------------


def parse_token_request(body: Any) -> tuple[Any, Any, datetime | None]:
    """A new token's name, role and optional expiry (name and role checked by the store)."""
    fields = _object(body, required=("name", "role"), optional=("expires_at",))
    expires_at = fields.get("expires_at")
    return (
        fields["name"],
        fields["role"],
        None if expires_at is None else _timestamp(expires_at, "expires_at"),
    )


def parse_session_request(body: Any) -> tuple[Identity, timedelta | None]:
    """Who a new session is for, and its TTL when given (both checked by the store)."""
    fields = _object(body, required=("subject", "role"), optional=("token_id", "ttl_s"))
    token_id, ttl_s = fields.get("token_id"), fields.get("ttl_s")
    if token_id is not None and not _is_positive_int(token_id):
        raise InvalidIdentityRequest("token_id must be null or a positive integer")
    if ttl_s is not None and not _is_positive_int(ttl_s):
        raise InvalidIdentityRequest("ttl_s must be a positive integer (seconds)")
    identity = Identity(subject=fields["subject"], role=fields["role"], token_id=token_id)
    return identity, None if ttl_s is None else timedelta(seconds=min(ttl_s, 10**9))


def parse_secrets(body: Any, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, str]:
    """Secrets sent in a JSON body: strings of any content (a malformed one simply fails to verify)."""
    fields = _object(body, required=required, optional=optional)
    for name, value in fields.items():
        if value is not None and not isinstance(value, str):
            raise InvalidIdentityRequest(f"{name} must be a string")
    return {name: value for name, value in fields.items() if value is not None}


def parse_audit_filter(args: Any) -> AuditFilter:
    """An audit query's filter from its parameters (a werkzeug MultiDict)."""
    actor, action = args.get("actor"), args.get("action")
    if actor is not None and not 1 <= len(actor) <= MAX_ACTOR_CHARS:
        raise MalformedRequest(f"'actor' must be 1-{MAX_ACTOR_CHARS} characters")
    if action is not None and action not in ACTIONS:
        raise MalformedRequest(f"'action' must be one of {', '.join(ACTIONS)}, got {action[:40]!r}")
    image_id = args.get("image_id")
    since, until = args.get("since"), args.get("until")
    audit_filter = AuditFilter(
        actor=actor,
        action=action,
        image_id=None if image_id is None else parse_id(image_id, "'image_id'"),
        since=None if since is None else _timestamp(since, "since", error=MalformedRequest),
        until=None if until is None else _timestamp(until, "until", error=MalformedRequest),
    )
    if audit_filter.since and audit_filter.until and audit_filter.since > audit_filter.until:
        raise MalformedRequest("'since' is after 'until'")
    return audit_filter


def _object(body: Any, *, required: tuple[str, ...], optional: tuple[str, ...]) -> dict[str, Any]:
    known = (*required, *optional)
    if not isinstance(body, dict):
        raise InvalidIdentityRequest(f"the body must be a JSON object with {', '.join(known)}")
    unknown = sorted(set(body) - set(known))
    if unknown:
        # Names only, cut short: a misplaced secret must not come back in an error or a log.
        names = ", ".join(name[:40] for name in unknown[:5])
        raise InvalidIdentityRequest(f"unknown field(s): {names}; known fields are: {', '.join(known)}")
    missing = [name for name in required if body.get(name) is None]
    if missing:
        raise InvalidIdentityRequest(f"the body needs {', '.join(missing)}")
    return body


def _timestamp(raw: Any, name: str, error: type[Exception] = InvalidIdentityRequest) -> datetime:
    """An ISO 8601 time; one without an offset is UTC."""
    if not isinstance(raw, str) or len(raw) > MAX_SECRET_CHARS:
        raise error(f"'{name}' must be an ISO 8601 date and time")
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise error(f"'{name}' must be an ISO 8601 date and time, got {raw[:40]!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= _MAX_BIGINT
