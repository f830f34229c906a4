"""The audit trail on the real PostgreSQL: append-only by the database itself, filtered, paged, exported."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from flask.testing import FlaskClient

from medsearch_catalog.audit import AuditFilter
from medsearch_catalog.migrations import apply_migrations, bundled_migrations
from tests.catalog.conftest import IDENTITY_TABLES, png, row_counts, upload
from tests.conftest import fresh_database


def record(client: FlaskClient, **event: Any) -> int:
    response = client.post(
        "/v1/audit", json={"event": {"actor": "token:1", "action": "search", "outcome": "ok", **event}}
    )
    assert response.status_code == 201, response.json
    event_id: int = response.json["id"]  # type: ignore[index]
    return event_id


def ids_of(response: Any) -> list[int]:
    assert response.status_code == 200, response.json
    return [item["id"] for item in response.json["items"]]


def csv_rows(response: Any) -> list[list[str]]:
    assert response.status_code == 200, response.json
    assert response.mimetype == "text/csv"
    return list(csv.reader(io.StringIO(response.get_data(as_text=True))))


def test_an_event_is_recorded_with_every_field(identity_catalog: FlaskClient) -> None:
    event = {
        "actor": "oidc:alice",
        "role": "reader",
        "action": "search",
        "outcome": "ok",
        "image_id": 12,
        "result_ids": [3, 1, 2],
        "request_id": "req-1",
        "detail": "top 3",
    }
    event_id = identity_catalog.post("/v1/audit", json={"event": event}).json["id"]
    [item] = identity_catalog.get("/v1/audit").json["items"]
    assert item.pop("id") == event_id
    assert datetime.now(UTC) - datetime.fromisoformat(item.pop("at")) < timedelta(minutes=1)
    assert item == event


def test_filters_combine(identity_catalog: FlaskClient) -> None:
    a = record(identity_catalog, actor="token:1", action="search")
    b = record(identity_catalog, actor="token:2", action="view_image", image_id=7)
    c = record(identity_catalog, actor="token:1", action="delete_image", image_id=7, outcome="refused")
    get = identity_catalog.get
    assert ids_of(get("/v1/audit")) == [c, b, a]
    assert ids_of(get("/v1/audit", query_string={"actor": "token:1"})) == [c, a]
    assert ids_of(get("/v1/audit", query_string={"image_id": 7})) == [c, b]
    assert ids_of(get("/v1/audit", query_string={"image_id": 7, "actor": "token:1"})) == [c]
    assert ids_of(get("/v1/audit", query_string={"action": "search"})) == [a]
    assert ids_of(get("/v1/audit", query_string={"actor": "nobody"})) == []

    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert ids_of(get("/v1/audit", query_string={"since": future})) == []
    assert ids_of(get("/v1/audit", query_string={"until": future})) == [c, b, a]
    naive_past = (datetime.now(UTC) - timedelta(hours=1)).replace(tzinfo=None).isoformat()
    assert ids_of(get("/v1/audit", query_string={"since": naive_past})) == [c, b, a]


def test_pages_follow_the_cursor_newest_first_with_ties_broken_by_id(
    identity_catalog: FlaskClient, database_url: str
) -> None:
    with psycopg.connect(database_url) as conn:
        # One transaction: every row has the same `at`, so only the ID orders them.
        for i in range(12):
            conn.execute(
                "INSERT INTO audit_events (actor, action, outcome, image_id)"
                " VALUES ('token:9', 'view_image', 'ok', %s)",
                (i + 1,),
            )
    later = [record(identity_catalog, actor="token:9") for _ in range(3)]
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 4, "actor": "token:9"}
        if cursor:
            params["cursor"] = cursor
        page = identity_catalog.get("/v1/audit", query_string=params)
        seen += ids_of(page)
        cursor = page.json["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 15 and len(set(seen)) == 15
    assert seen[:3] == sorted(later, reverse=True)
    assert seen[3:] == sorted(seen[3:], reverse=True)
    assert ids_of(identity_catalog.get("/v1/audit", query_string={"limit": 1000})) == seen


def test_csv_export_has_the_header_applies_filters_and_defuses_formulas(
    identity_catalog: FlaskClient,
) -> None:
    record(
        identity_catalog, actor='=HYPERLINK("http://x")', detail="+1 day", request_id="@me", result_ids=[5, 6]
    )
    record(
        identity_catalog, actor="token:2", action="add_image", image_id=4, detail="-cmd|calc", role="editor"
    )
    record(
        identity_catalog, actor="token:3", action="refused", outcome="refused", detail='quoted "text", comma'
    )

    rows = csv_rows(identity_catalog.get("/v1/audit.csv"))
    assert rows[0] == [
        "id", "at", "actor", "role", "action", "outcome", "image_id", "result_ids", "request_id", "detail",
    ]  # fmt: skip
    assert len(rows) == 4
    third, second, first = rows[1:]
    assert first[2] == '\'=HYPERLINK("http://x")' and first[9] == "'+1 day" and first[8] == "'@me"
    assert first[7] == "5 6" and first[6] == "" and first[3] == ""
    assert second[9] == "'-cmd|calc" and second[6] == "4" and second[3] == "editor"
    assert third[9] == 'quoted "text", comma'
    for row in rows[1:]:
        assert not row[2].startswith(("=", "+", "-", "@")) and not row[9].startswith(("=", "+", "-", "@"))

    filtered = csv_rows(identity_catalog.get("/v1/audit.csv", query_string={"action": "add_image"}))
    assert [r[2] for r in filtered[1:]] == ["token:2"]
    assert csv_rows(identity_catalog.get("/v1/audit.csv", query_string={"actor": "none"})) == [rows[0]]


def test_csv_export_pages_through_more_than_one_page(identity_catalog: FlaskClient, catalog_app: Any) -> None:
    trail = catalog_app.extensions["medsearch_catalog"].audit
    for i in range(7):
        record(identity_catalog, image_id=i + 1)
    lines = list(trail.export_csv(AuditFilter(), page_size=3))
    assert len(lines) == 8 and all(line.endswith("\r\n") for line in lines)
    assert [int(line.split(",")[0]) for line in lines[1:]] == list(range(7, 0, -1))


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_events SET outcome = 'failed'",
        "UPDATE audit_events SET detail = NULL WHERE id = (SELECT min(id) FROM audit_events)",
        "DELETE FROM audit_events",
        "DELETE FROM audit_events WHERE id = (SELECT min(id) FROM audit_events)",
        "TRUNCATE audit_events",
    ],
)
def test_the_database_refuses_to_change_or_delete_the_trail(
    identity_catalog: FlaskClient, database_url: str, statement: str
) -> None:
    record(identity_catalog, detail="kept")
    with (
        psycopg.connect(database_url) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"),
    ):
        conn.execute(statement)  # type: ignore[arg-type]
    [item] = identity_catalog.get("/v1/audit").json["items"]
    assert item["detail"] == "kept" and item["outcome"] == "ok"


def test_a_deleted_images_history_stays(identity_catalog: FlaskClient) -> None:
    image_id = upload(identity_catalog, png(1)).json["id"]
    record(identity_catalog, action="add_image", image_id=image_id)
    assert identity_catalog.delete(f"/v1/images/{image_id}").status_code == 204
    record(identity_catalog, action="delete_image", image_id=image_id)
    assert len(ids_of(identity_catalog.get("/v1/audit", query_string={"image_id": image_id}))) == 2


BAD_EVENTS: list[tuple[Any, int]] = [
    ({"actor": "a", "action": "search"}, 422),
    ({"actor": "a", "action": "hack", "outcome": "ok"}, 422),
    ({"actor": "a", "action": "search", "outcome": "maybe"}, 422),
    ({"actor": "", "action": "search", "outcome": "ok"}, 422),
    ({"actor": "a" * 201, "action": "search", "outcome": "ok"}, 422),
    ({"actor": "a\nb", "action": "search", "outcome": "ok"}, 422),
    ({"actor": 3, "action": "search", "outcome": "ok"}, 422),
    ({"actor": "a", "action": "search", "outcome": "ok", "role": "root"}, 422),
    ({"actor": "a", "action": "search", "outcome": "ok", "detail": "d" * 501}, 422),
    ({"actor": "a", "action": "search", "outcome": "ok", "detail": "line\r\nbreak"}, 422),
    ({"actor": "a", "action": "search", "outcome": "ok", "image_id": 0}, 422),
    ({"actor": "a", "action": "search", "outcome": "ok", "image_id": "7"}, 422),
    ({"actor": "a", "action": "search", "outcome": "ok", "image_id": 2**63}, 422),
    ({"actor": "a", "action": "search", "outcome": "ok", "result_ids": list(range(1, 1002))}, 422),
    ({"actor": "a", "action": "search", "outcome": "ok", "result_ids": [1, "2"]}, 422),
    ({"actor": "a", "action": "search", "outcome": "ok", "result_ids": [True]}, 422),
    ({"actor": "a", "action": "search", "outcome": "ok", "result_ids": "1 2"}, 422),
    ({"actor": "a", "action": "search", "outcome": "ok", "request_id": ""}, 422),
    ({"actor": "a", "action": "search", "outcome": "ok", "at": "2020-01-01T00:00:00Z"}, 422),
    ({"actor": "a", "action": "search", "outcome": "ok", "id": 1}, 422),
    ("not an object", 422),
]


@pytest.mark.parametrize(("event", "status"), BAD_EVENTS)
def test_bad_events_are_problems_and_write_nothing(
    identity_catalog: FlaskClient, database_url: str, event: Any, status: int
) -> None:
    response = identity_catalog.post("/v1/audit", json={"event": event})
    assert response.status_code == status, response.json
    assert response.mimetype == "application/problem+json"
    assert row_counts(database_url, IDENTITY_TABLES)["audit_events"] == 0


@pytest.mark.parametrize(
    "body",
    [
        {"actor": "a", "action": "search", "outcome": "ok"},
        {"event": {"actor": "a", "action": "search", "outcome": "ok"}, "extra": 1},
        [],
        "{",
    ],
)
def test_bad_audit_bodies_are_problems_and_write_nothing(
    identity_catalog: FlaskClient, database_url: str, body: Any
) -> None:
    if isinstance(body, str):
        response = identity_catalog.post("/v1/audit", data=body, content_type="application/json")
    else:
        response = identity_catalog.post("/v1/audit", json=body)
    assert response.status_code in (400, 422) and response.mimetype == "application/problem+json"
    assert row_counts(database_url, IDENTITY_TABLES)["audit_events"] == 0


@pytest.mark.parametrize(
    "params",
    [
        {"action": "hack"},
        {"actor": ""},
        {"image_id": "x"},
        {"image_id": "0"},
        {"since": "yesterday"},
        {"until": "2020-13-01"},
        {"since": "2021-01-01T00:00:00Z", "until": "2020-01-01T00:00:00Z"},
        {"limit": "0"},
        {"limit": "1001"},
        {"cursor": "nope"},
        {"cursor": "eyJhdCI6ICJ4IiwgImlkIjogMX0"},
        {"colour": "red"},
    ],
)
def test_bad_audit_queries_are_400s(identity_catalog: FlaskClient, params: dict[str, str]) -> None:
    response = identity_catalog.get("/v1/audit", query_string=params)
    assert response.status_code == 400, response.json
    assert response.mimetype == "application/problem+json"
    if "limit" not in params and "cursor" not in params:
        assert identity_catalog.get("/v1/audit.csv", query_string=params).status_code == 400


def test_identity_and_audit_migration_applies_on_a_database_with_images(postgres_admin_url: str) -> None:
    migrations = bundled_migrations()
    assert [m.version for m in migrations][:2] == ["0001_images", "0002_identity_audit"]
    with fresh_database(postgres_admin_url) as url, psycopg.connect(url) as conn:
        assert apply_migrations(conn, migrations[:1]) == ["0001_images"]
        conn.execute(
            "INSERT INTO images (sha256, mime_type, width, height, byte_size, dataset)"
            " VALUES (repeat('a', 64), 'image/png', 1, 1, 1, 'd')"
        )
        conn.commit()
        assert apply_migrations(conn, migrations[:2]) == ["0002_identity_audit"]
        conn.execute("INSERT INTO audit_events (actor, action, outcome) VALUES ('token:1', 'search', 'ok')")
        conn.commit()
        # 0003 widens the actions (browse) on a trail that already holds events.
        assert apply_migrations(conn, migrations) == ["0003_audit_browse"]
        assert apply_migrations(conn, migrations) == []
        conn.execute("INSERT INTO audit_events (actor, action, outcome) VALUES ('token:1', 'browse', 'ok')")
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO audit_events (actor, action, outcome) VALUES ('token:1', 'nap', 'ok')")
        conn.rollback()
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        }
        assert {"images", "api_tokens", "sessions", "audit_events"} <= tables
        assert conn.execute("SELECT count(*) FROM images").fetchone() == (1,)
