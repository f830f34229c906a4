"""API tokens and browser sessions on the real PostgreSQL: only hashes stored, every bad secret a 401."""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.catalog.conftest import IDENTITY_TABLES, row_counts


def create_token(client: FlaskClient, role: str = "editor", **fields: Any) -> tuple[dict[str, Any], str]:
    response = client.post("/v1/tokens", json={"name": "ci", "role": role, **fields})
    assert response.status_code == 201, response.json
    assert response.headers["Cache-Control"] == "no-store"
    body: dict[str, Any] = response.json  # type: ignore[assignment]
    return body["token"], body["secret"]


def verify(client: FlaskClient, secret: Any) -> Any:
    return client.post("/v1/tokens/verify", json={"secret": secret})


def start_session(client: FlaskClient, **fields: Any) -> dict[str, Any]:
    response = client.post("/v1/sessions", json=fields)
    assert response.status_code == 201, response.json
    body: dict[str, Any] = response.json  # type: ignore[assignment]
    return body


def verify_session(client: FlaskClient, secret: str, csrf_token: str | None = None) -> Any:
    body = {"secret": secret} if csrf_token is None else {"secret": secret, "csrf_token": csrf_token}
    return client.post("/v1/sessions/verify", json=body)


def sql(database_url: str, query: str, *params: Any) -> Any:
    with psycopg.connect(database_url, autocommit=True) as conn:
        cursor = conn.execute(query, params)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else None


# -- tokens ------------------------------------------------------------------------------------------


def test_a_token_verifies_until_it_is_revoked(identity_catalog: FlaskClient) -> None:
    token, secret = create_token(identity_catalog, role="admin", name="ops laptop")
    assert secret.startswith("mst_") and len(secret) == 4 + 43
    assert token["name"] == "ops laptop" and token["role"] == "admin" and token["revoked_at"] is None

    verified = verify(identity_catalog, secret)
    assert verified.status_code == 200
    assert verified.json == {
        "identity": {"subject": f"token:{token['id']}", "role": "admin", "token_id": token["id"]}
    }

    assert identity_catalog.delete(f"/v1/tokens/{token['id']}").status_code == 204
    refused = verify(identity_catalog, secret)
    assert refused.status_code == 401 and refused.mimetype == "application/problem+json"
    assert refused.json["detail"] == "invalid or revoked token"
    assert refused.json["type"] == "urn:medsearch:problem:invalid-credentials"

    # Revoking again changes nothing; an unknown token is a 404.
    first_revocation = identity_catalog.get("/v1/tokens").json["items"][0]["revoked_at"]
    assert identity_catalog.delete(f"/v1/tokens/{token['id']}").status_code == 204
    assert identity_catalog.get("/v1/tokens").json["items"][0]["revoked_at"] == first_revocation
    missing = identity_catalog.delete("/v1/tokens/999")
    assert missing.status_code == 404 and missing.json["type"] == "urn:medsearch:problem:token-not-found"


def test_listing_tokens_never_shows_a_secret_or_hash(identity_catalog: FlaskClient) -> None:
    secrets = [create_token(identity_catalog, role=role)[1] for role in ("reader", "editor")]
    listed = identity_catalog.get("/v1/tokens")
    assert listed.status_code == 200
    items = listed.json["items"]
    assert [t["role"] for t in items] == ["reader", "editor"]
    assert all(
        set(t) == {"id", "name", "role", "created_at", "expires_at", "revoked_at", "last_used_at"}
        for t in items
    )
    assert not any(s in listed.get_data(as_text=True) for s in secrets)


def test_the_database_holds_only_hashes_of_secrets(identity_catalog: FlaskClient, database_url: str) -> None:
    token, secret = create_token(identity_catalog)
    session = start_session(
        identity_catalog, subject=f"token:{token['id']}", role="editor", token_id=token["id"]
    )
    dumped = "\n".join(
        str(row)
        for table in ("api_tokens", "sessions")
        for row in sql(database_url, f"SELECT t::text FROM {table} t")  # noqa: S608 - constant names
    )
    for plain in (secret, session["secret"], session["csrf_token"]):
        assert plain not in dumped and plain.encode().hex() not in dumped
    [(stored,)] = sql(database_url, "SELECT secret_hash FROM api_tokens")
    assert bytes(stored) == hashlib.sha256(secret.encode()).digest()


def test_an_expired_token_is_refused(identity_catalog: FlaskClient, database_url: str) -> None:
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    token, secret = create_token(identity_catalog, expires_at=future)
    assert datetime.fromisoformat(token["expires_at"]) == datetime.fromisoformat(future)
    assert verify(identity_catalog, secret).status_code == 200
    sql(database_url, "UPDATE api_tokens SET expires_at = now() - interval '1 second'")
    assert verify(identity_catalog, secret).status_code == 401


def test_a_token_cannot_be_created_already_expired(identity_catalog: FlaskClient, database_url: str) -> None:
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    response = identity_catalog.post("/v1/tokens", json={"name": "x", "role": "reader", "expires_at": past})
    assert response.status_code == 422 and "future" in response.json["detail"]
    assert row_counts(database_url, IDENTITY_TABLES)["api_tokens"] == 0


def test_last_used_at_is_written_at_most_once_a_minute(
    identity_catalog: FlaskClient, database_url: str
) -> None:
    token, secret = create_token(identity_catalog)
    assert token["last_used_at"] is None
    verify(identity_catalog, secret)
    [(first,)] = sql(database_url, "SELECT last_used_at FROM api_tokens")
    assert first is not None
    verify(identity_catalog, secret)
    assert sql(database_url, "SELECT last_used_at FROM api_tokens") == [(first,)]
    sql(database_url, "UPDATE api_tokens SET last_used_at = now() - interval '2 minutes'")
    verify(identity_catalog, secret)
    [(later,)] = sql(database_url, "SELECT last_used_at FROM api_tokens")
    assert later > first
    assert identity_catalog.get("/v1/tokens").json["items"][0]["last_used_at"] == later.isoformat()


MALFORMED_SECRETS = [
    "",
    "mst_",
    "x" * 10_000,
    "mst_" + "a" * 10_000,
    "mst_\u00e9t\u00e9-caf\u00e9",
    "mst_\U0001f600",
    "mst_abc\x00def",
    "mss_" + "a" * 43,
    "Bearer mst_" + "a" * 43,
    "mst_" + "a" * 43,
]


@pytest.mark.parametrize("secret", MALFORMED_SECRETS, ids=range(len(MALFORMED_SECRETS)))
def test_a_malformed_or_unknown_secret_is_a_plain_401(identity_catalog: FlaskClient, secret: str) -> None:
    create_token(identity_catalog)
    for response in (verify(identity_catalog, secret), verify_session(identity_catalog, secret)):
        assert response.status_code == 401, response.json
        assert response.mimetype == "application/problem+json"
        assert response.json["detail"] in ("invalid or revoked token", "invalid, ended or expired session")


def test_a_malformed_secret_is_refused_without_a_query(
    identity_catalog: FlaskClient, catalog_app: Flask
) -> None:
    store = catalog_app.extensions["medsearch_catalog"].identity
    pool = catalog_app.extensions["medsearch_catalog"].repository.pool
    pool.pop_stats()
    for prefix, other in (("mst_", "mss_"), ("mss_", "mst_")):
        for secret in ("", "x" * 10_000, prefix, prefix + "\u00e9", other + "abc", prefix + "a" * 300):
            assert (store.verify_token if prefix == "mst_" else store.verify_session)(secret) is None
    assert store.check_csrf("mss_abc", "mst_abc") is False
    assert pool.pop_stats().get("requests_num", 0) == 0


def test_secrets_never_reach_the_logs(
    identity_catalog: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token, secret = create_token(identity_catalog)
    verify(identity_catalog, secret)
    session = start_session(
        identity_catalog, subject=f"token:{token['id']}", role="editor", token_id=token["id"]
    )
    verify_session(identity_catalog, session["secret"], session["csrf_token"])
    identity_catalog.post("/v1/tokens/verify", json={"secret": secret, secret: 1})
    identity_catalog.delete("/v1/sessions", json={"secret": session["secret"]})
    logged = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    for plain in (secret, session["secret"], session["csrf_token"]):
        assert plain not in logged


# -- sessions ----------------------------------------------------------------------------------------


def test_a_session_verifies_with_its_csrf_token_until_it_ends(identity_catalog: FlaskClient) -> None:
    session = start_session(identity_catalog, subject="oidc:alice@example.org", role="reader")
    assert session["secret"].startswith("mss_") and session["csrf_token"].startswith("msc_")
    expires_at = datetime.fromisoformat(session["expires_at"])
    assert timedelta(hours=7) < expires_at - datetime.now(UTC) <= timedelta(hours=8)

    plain = verify_session(identity_catalog, session["secret"])
    assert plain.status_code == 200
    assert plain.json == {
        "identity": {"subject": "oidc:alice@example.org", "role": "reader", "token_id": None}
    }
    right = verify_session(identity_catalog, session["secret"], session["csrf_token"])
    assert right.json["csrf_ok"] is True
    for wrong in ("msc_" + "a" * 43, "", session["secret"], "\u00e9"):
        assert verify_session(identity_catalog, session["secret"], wrong).json["csrf_ok"] is False

    other = start_session(identity_catalog, subject="oidc:bob", role="admin")
    assert verify_session(identity_catalog, session["secret"], other["csrf_token"]).json["csrf_ok"] is False

    assert identity_catalog.delete("/v1/sessions", json={"secret": session["secret"]}).status_code == 204
    assert verify_session(identity_catalog, session["secret"]).status_code == 401
    assert identity_catalog.delete("/v1/sessions", json={"secret": session["secret"]}).status_code == 204
    assert identity_catalog.delete("/v1/sessions", json={"secret": "nonsense"}).status_code == 204
    assert verify_session(identity_catalog, other["secret"]).status_code == 200


def test_revoking_a_token_ends_its_sessions(identity_catalog: FlaskClient) -> None:
    token, _ = create_token(identity_catalog, role="editor")
    subject = f"token:{token['id']}"
    session = start_session(identity_catalog, subject=subject, role="editor", token_id=token["id"])
    verified = verify_session(identity_catalog, session["secret"])
    assert verified.json["identity"] == {"subject": subject, "role": "editor", "token_id": token["id"]}
    identity_catalog.delete(f"/v1/tokens/{token['id']}")
    assert verify_session(identity_catalog, session["secret"]).status_code == 401
    again = identity_catalog.post(
        "/v1/sessions", json={"subject": subject, "role": "editor", "token_id": token["id"]}
    )
    assert again.status_code == 422


def test_an_expired_session_is_refused(identity_catalog: FlaskClient, database_url: str) -> None:
    session = start_session(identity_catalog, subject="oidc:a", role="reader", ttl_s=60)
    assert verify_session(identity_catalog, session["secret"]).status_code == 200
    sql(database_url, "UPDATE sessions SET expires_at = now() - interval '1 second'")
    assert verify_session(identity_catalog, session["secret"]).status_code == 401


def test_a_session_with_a_token_takes_the_tokens_subject_and_role(identity_catalog: FlaskClient) -> None:
    token, _ = create_token(identity_catalog, role="reader")
    for subject, role in ((f"token:{token['id']}", "admin"), ("oidc:mallory", "reader")):
        response = identity_catalog.post(
            "/v1/sessions", json={"subject": subject, "role": role, "token_id": token["id"]}
        )
        assert response.status_code == 422, (subject, role)
    unknown = identity_catalog.post(
        "/v1/sessions", json={"subject": "token:77", "role": "reader", "token_id": 77}
    )
    assert unknown.status_code == 422


# -- bad input writes nothing --------------------------------------------------------------------------

BAD_REQUESTS: list[tuple[str, str, Any, int]] = [
    ("post", "/v1/tokens", {"name": "x"}, 422),
    ("post", "/v1/tokens", {"name": "x", "role": "root"}, 422),
    ("post", "/v1/tokens", {"name": "", "role": "reader"}, 422),
    ("post", "/v1/tokens", {"name": "   ", "role": "reader"}, 422),
    ("post", "/v1/tokens", {"name": "n" * 101, "role": "reader"}, 422),
    ("post", "/v1/tokens", {"name": "a\nb", "role": "reader"}, 422),
    ("post", "/v1/tokens", {"name": 3, "role": "reader"}, 422),
    ("post", "/v1/tokens", {"name": "x", "role": "reader", "colour": "red"}, 422),
    ("post", "/v1/tokens", {"name": "x", "role": "reader", "expires_at": "soon"}, 422),
    ("post", "/v1/tokens", {"name": "x", "role": "reader", "expires_at": 5}, 422),
    ("post", "/v1/tokens", ["x"], 422),
    ("post", "/v1/tokens", "{not json", 400),
    ("post", "/v1/tokens", "", 400),
    ("post", "/v1/tokens/verify", {}, 422),
    ("post", "/v1/tokens/verify", {"secret": 5}, 422),
    ("post", "/v1/tokens/verify", {"secret": "mst_x", "role": "admin"}, 422),
    ("post", "/v1/tokens/verify", "[", 400),
    ("delete", "/v1/tokens/abc", None, 400),
    ("delete", "/v1/tokens/0", None, 400),
    ("delete", "/v1/tokens/99999999999999999999", None, 400),
    ("get", "/v1/tokens?secret=x", None, 400),
    ("post", "/v1/sessions", {"subject": "oidc:a"}, 422),
    ("post", "/v1/sessions", {"subject": "", "role": "reader"}, 422),
    ("post", "/v1/sessions", {"subject": "s" * 201, "role": "reader"}, 422),
    ("post", "/v1/sessions", {"subject": "a\tb", "role": "reader"}, 422),
    ("post", "/v1/sessions", {"subject": "oidc:a", "role": "boss"}, 422),
    ("post", "/v1/sessions", {"subject": "oidc:a", "role": "reader", "ttl_s": 5}, 422),
    ("post", "/v1/sessions", {"subject": "oidc:a", "role": "reader", "ttl_s": 10**12}, 422),
    ("post", "/v1/sessions", {"subject": "oidc:a", "role": "reader", "ttl_s": "60"}, 422),
    ("post", "/v1/sessions", {"subject": "oidc:a", "role": "reader", "token_id": True}, 422),
    ("post", "/v1/sessions", {"subject": "oidc:a", "role": "reader", "csrf": "x"}, 422),
    ("post", "/v1/sessions/verify", {"csrf_token": "x"}, 422),
    ("post", "/v1/sessions/verify", {"secret": "mss_x", "csrf_token": 1}, 422),
    ("delete", "/v1/sessions", {}, 422),
    ("delete", "/v1/sessions", None, 400),
    ("post", "/v1/tokens", {"name": "x" * 70_000, "role": "reader"}, 422),
]


@pytest.mark.parametrize(("method", "path", "body", "status"), BAD_REQUESTS)
def test_bad_identity_requests_are_problems_and_write_nothing(
    identity_catalog: FlaskClient, database_url: str, method: str, path: str, body: Any, status: int
) -> None:
    before = row_counts(database_url, IDENTITY_TABLES)
    if isinstance(body, str):
        response = identity_catalog.open(path, method=method, data=body, content_type="application/json")
    else:
        response = identity_catalog.open(path, method=method, json=body)
    assert response.status_code == status, response.json
    assert response.mimetype == "application/problem+json"
    assert response.json["status"] == status
    assert row_counts(database_url, IDENTITY_TABLES) == before
