"""The audit trail: who did what, when, with which outcome; append-only in PostgreSQL itself."""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from psycopg import sql

from medsearch_catalog.errors import InvalidAuditEvent, MalformedRequest
from medsearch_catalog.identity import CONTROL_CHARACTERS, ROLES
from medsearch_catalog.repository import ImageRepository

ACTIONS = (
    "search", "similar", "view_image", "browse", "add_image", "delete_image", "reindex",
    "sign_in", "sign_out", "token_create", "token_revoke", "refused", "audit_read",
)  # fmt: skip
OUTCOMES = ("ok", "refused", "failed")
MAX_ACTOR_CHARS = 200
MAX_REQUEST_ID_CHARS = 200
MAX_DETAIL_CHARS = 500
MAX_RESULT_IDS = 1000
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
CSV_COLUMNS = (
    "id", "at", "actor", "role", "action", "outcome", "image_id", "result_ids", "request_id", "detail",
)  # fmt: skip
# A spreadsheet runs a cell that starts with one of these as a formula.
_FORMULA_STARTS = ("=", "+", "-", "@")
_MAX_BIGINT = 2**63 - 1


@dataclass(frozen=True)
class AuditEvent:
    """What happened: never uploaded bytes, never patient data (the caller keeps `detail` free of it)."""

    actor: str
    action: str
    outcome: str
    role: str | None = None
    image_id: int | None = None
    result_ids: tuple[int, ...] | None = None
    request_id: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class AuditRecord:
    id: int
    at: datetime
    event: AuditEvent


@dataclass(frozen=True)
class AuditFilter:
    """Which events a query returns; the fields given combine with AND; `until` is exclusive."""

    actor: str | None = None
    action: str | None = None
    image_id: int | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True)
class AuditPage:
    items: list[AuditRecord]
    next_cursor: str | None


_EVENT_FIELDS = tuple(f.name for f in fields(AuditEvent))


def event_from_json(raw: Any) -> AuditEvent:
    """An event from a JSON object with AuditEvent's fields (validated)."""
    if not isinstance(raw, dict):
        raise InvalidAuditEvent("the event must be a JSON object")
    unknown = sorted(set(raw) - set(_EVENT_FIELDS))
    if unknown:
        raise InvalidAuditEvent(
            f"unknown event field(s): {', '.join(unknown)}; known fields are: {', '.join(_EVENT_FIELDS)}"
        )
    missing = [name for name in ("actor", "action", "outcome") if name not in raw]
    if missing:
        raise InvalidAuditEvent(f"the event needs {', '.join(missing)}")
    result_ids = raw.get("result_ids")
    if result_ids is not None:
        if not isinstance(result_ids, list):
            raise InvalidAuditEvent("result_ids must be a list of image IDs")
        result_ids = tuple(result_ids)
    return validated(AuditEvent(**{**raw, "result_ids": result_ids}))


def validated(event: AuditEvent) -> AuditEvent:
    """`event` if every field is in range, else InvalidAuditEvent naming the first that is not."""
    _check_text("actor", event.actor, MAX_ACTOR_CHARS, required=True)
    if event.action not in ACTIONS:
        raise InvalidAuditEvent(f"action must be one of {', '.join(ACTIONS)}, got {event.action!r:.40}")
    if event.outcome not in OUTCOMES:
        raise InvalidAuditEvent(f"outcome must be one of {', '.join(OUTCOMES)}, got {event.outcome!r:.40}")
    if event.role is not None and event.role not in ROLES:
        raise InvalidAuditEvent(f"role must be null or one of {', '.join(ROLES)}, got {event.role!r:.40}")
    if event.image_id is not None and not _is_id(event.image_id):
        raise InvalidAuditEvent("image_id must be null or a positive integer")
    if event.result_ids is not None:
        if len(event.result_ids) > MAX_RESULT_IDS:
            raise InvalidAuditEvent(
                f"result_ids lists {len(event.result_ids)} IDs; the limit is {MAX_RESULT_IDS}"
            )
        if not all(_is_id(i) for i in event.result_ids):
            raise InvalidAuditEvent("result_ids must hold positive integers (image IDs) only")
    _check_text("request_id", event.request_id, MAX_REQUEST_ID_CHARS, required=False)
    _check_text("detail", event.detail, MAX_DETAIL_CHARS, required=False, minimum=0)
    return event


def _check_text(name: str, value: object, maximum: int, *, required: bool, minimum: int = 1) -> None:
    if value is None and not required:
        return
    if not isinstance(value, str) or not minimum <= len(value) <= maximum:
        raise InvalidAuditEvent(f"{name} must be a string of {minimum}-{maximum} characters")
    if CONTROL_CHARACTERS.search(value):
        raise InvalidAuditEvent(f"{name} must not contain control characters")


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= _MAX_BIGINT


class AuditTrail:
    """Appending to and reading the audit trail in the catalog's PostgreSQL."""

    def __init__(self, repository: ImageRepository) -> None:
        self.repository = repository

    def record(self, event: AuditEvent) -> AuditRecord:
        validated(event)
        with self.repository.transaction() as conn:
            row = conn.execute(
                "INSERT INTO audit_events"
                " (actor, role, action, outcome, image_id, result_ids, request_id, detail)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id, at",
                (
                    event.actor,
                    event.role,
                    event.action,
                    event.outcome,
                    event.image_id,
                    None if event.result_ids is None else list(event.result_ids),
                    event.request_id,
                    event.detail,
                ),
            ).fetchone()
        assert row is not None
        return AuditRecord(row["id"], row["at"], event)

    def query(
        self, audit_filter: AuditFilter, *, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
    ) -> AuditPage:
        """One page of matching events, newest first; `next_cursor` gives the next page."""
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise MalformedRequest(f"'limit' must be between 1 and {MAX_PAGE_SIZE}, got {limit}")
        where, params = _filter_sql(audit_filter)
        if cursor is not None:
            where.append(sql.SQL("(at, id) < (%s, %s)"))
            params.extend(decode_cursor(cursor))
        query = sql.SQL("SELECT * FROM audit_events WHERE {} ORDER BY at DESC, id DESC LIMIT %s").format(
            sql.SQL(" AND ").join(where or [sql.SQL("true")])
        )
        with self.repository.transaction() as conn:
            rows = conn.execute(query, [*params, limit + 1]).fetchall()
        items = [_record(row) for row in rows[:limit]]
        more = len(rows) > limit
        return AuditPage(items, encode_cursor(items[-1].at, items[-1].id) if more else None)

    def export_csv(self, audit_filter: AuditFilter, *, page_size: int = MAX_PAGE_SIZE) -> Iterator[str]:
        """The matching events as CSV lines, header first, newest first.

        The first page is read now, so that a database failure is an error rather than a cut
        download; the rest page by page, each in a short transaction of its own.
        """
        first = self.query(audit_filter, limit=page_size)

        def lines() -> Iterator[str]:
            yield _csv_line(CSV_COLUMNS)
            page = first
            while True:
                for record in page.items:
                    yield _csv_line(csv_row(record))
                if page.next_cursor is None:
                    return
                page = self.query(audit_filter, limit=page_size, cursor=page.next_cursor)

        return lines()


def csv_row(record: AuditRecord) -> list[str]:
    """A record's CSV cells, each safe to open in a spreadsheet."""
    event = record.event
    cells = [
        str(record.id),
        record.at.isoformat(),
        event.actor,
        event.role or "",
        event.action,
        event.outcome,
        "" if event.image_id is None else str(event.image_id),
        "" if event.result_ids is None else " ".join(map(str, event.result_ids)),
        event.request_id or "",
        event.detail or "",
    ]
    return [_formula_safe(cell) for cell in cells]


def _formula_safe(cell: str) -> str:
    return "'" + cell if cell.startswith(_FORMULA_STARTS) else cell


def _csv_line(cells: Sequence[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(cells)
    return out.getvalue()


def encode_cursor(at: datetime, event_id: int) -> str:
    raw = json.dumps({"at": at.isoformat(), "id": event_id}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        at, event_id = datetime.fromisoformat(value["at"]), value["id"]
    except (binascii.Error, ValueError, TypeError, KeyError, UnicodeDecodeError):
        raise MalformedRequest("'cursor' is not a cursor this service gave out") from None
    if not _is_id(event_id) or at.tzinfo is None:
        raise MalformedRequest("'cursor' is not a cursor this service gave out")
    return at, event_id


def _filter_sql(audit_filter: AuditFilter) -> tuple[list[sql.Composable], list[Any]]:
    where: list[sql.Composable] = []
    params: list[Any] = []
    for column, value, test in (
        ("actor", audit_filter.actor, "{} = %s"),
        ("action", audit_filter.action, "{} = %s"),
        ("image_id", audit_filter.image_id, "{} = %s"),
        ("at", audit_filter.since, "{} >= %s"),
        ("at", audit_filter.until, "{} < %s"),
    ):
        if value is not None:
            where.append(sql.SQL(test).format(sql.Identifier(column)))
            params.append(value)
    return where, params


def _record(row: dict[str, Any]) -> AuditRecord:
    return AuditRecord(
        id=row["id"],
        at=row["at"],
        event=AuditEvent(
            actor=row["actor"],
            action=row["action"],
            outcome=row["outcome"],
            role=row["role"],
            image_id=row["image_id"],
            result_ids=None if row["result_ids"] is None else tuple(row["result_ids"]),
            request_id=row["request_id"],
            detail=row["detail"],
        ),
    )
