"""The catalog's OpenAPI document: valid, complete, and true to what the API really answers.

Real requests go through the app on PostgreSQL; each JSON body is checked against the schema the
document gives for that path, method and status. The response schemas forbid unknown members, so a
field added, renamed or dropped in the code without the document fails here.
"""

from __future__ import annotations

import io
import secrets
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate
from PIL import Image
from werkzeug.test import TestResponse

from tests.catalog.conftest import png, row_counts, upload, upload_batch
from tests.support.identified_dicoms import Patient, identified_dicom
from tests.support.openapi import OpenApiDocument, app_routes

OPENAPI = OpenApiDocument("medsearch_catalog")
DOCUMENT = OPENAPI.document
check = OPENAPI.check
schema_errors = OPENAPI.schema_errors


STATES, STATES_PATH = "/v1/models/m/index-states", "/v1/models/{model_id}/index-states"


def add(client: FlaskClient, seed: int, **metadata: Any) -> dict[str, Any]:
    response = upload(client, png(seed), {"dataset": "test", **metadata})
    assert response.status_code == 201, response.json
    body: dict[str, Any] = check(response, "/v1/images", "post")
    return body


# -- the document itself ---------------------------------------------------------------------------------


def test_the_document_is_valid_openapi_3_1() -> None:
    validate(DOCUMENT)
    assert DOCUMENT["openapi"] == "3.1.0"


def test_the_served_document_is_the_file(catalog: FlaskClient) -> None:
    response = catalog.get("/v1/openapi.json")
    assert check(response, "/v1/openapi.json", "get") == DOCUMENT


def test_every_route_of_the_app_is_documented_and_every_documented_route_exists(catalog_app: Flask) -> None:
    routes = app_routes(catalog_app)
    assert {path for path, _ in routes if path.startswith("/v1/")} >= {"/v1/images", "/v1/images/{image_id}"}
    documented = OPENAPI.operations()
    assert routes - documented == set(), "routes missing from openapi.json"
    assert documented - routes == set(), "openapi.json documents routes the app does not have"


# -- real answers against the document -------------------------------------------------------------------


def test_create_new_and_existing_image(catalog: FlaskClient) -> None:
    metadata = {"dataset": "nih", "patient_id": "p1", "age": 61, "sex": "f", "findings": ["Mass", "Mass"]}
    created = upload(catalog, png(1), metadata)
    assert created.status_code == 201
    body = check(created, "/v1/images", "post")
    assert created.headers["Location"] == f"/v1/images/{body['id']}"
    assert body["metadata"]["sex"] == "F" and body["metadata"]["findings"] == ["Mass"]

    again = upload(catalog, png(1), {"dataset": "other"})
    assert again.status_code == 200
    assert check(again, "/v1/images", "post") == body
    assert again.headers["Location"] == created.headers["Location"]


def test_get_one_batch_and_pages(catalog: FlaskClient) -> None:
    ids = [add(catalog, seed, dataset="nih", view_position="pa")["id"] for seed in range(3)]

    one = catalog.get(f"/v1/images/{ids[0]}")
    assert check(one, "/v1/images/{image_id}", "get")["id"] == ids[0]

    batch = catalog.get("/v1/images", query_string={"ids": f"{ids[2]},{ids[0]},999"})
    body = check(batch, "/v1/images", "get")
    assert [i["id"] for i in body["items"]] == [ids[2], ids[0]] and body["missing"] == [999]

    page = catalog.get(
        "/v1/images", query_string={"dataset": ["nih", "x"], "view_position": "PA", "limit": 2}
    )
    body = check(page, "/v1/images", "get")
    assert len(body["items"]) == 2 and body["next_cursor"]
    last = catalog.get("/v1/images", query_string={"limit": 2, "cursor": body["next_cursor"]})
    assert check(last, "/v1/images", "get")["next_cursor"] is None


def test_patch_index_state_pending_and_delete(catalog: FlaskClient) -> None:
    image_id = add(catalog, 5, age=40, extra={"site": "a"})["id"]
    patched = catalog.patch(f"/v1/images/{image_id}", json={"age": None, "sex": "o", "findings": ["Edema"]})
    assert patched.status_code == 200
    assert check(patched, "/v1/images/{image_id}", "patch")["metadata"]["sex"] == "O"

    path = "/v1/images/{image_id}/index-state/{model_id}"
    failed = catalog.put(f"/v1/images/{image_id}/index-state/m-1", json={"state": "failed", "reason": "down"})
    saved = check(failed, path, "put")
    assert (saved["model_id"], saved["state"], saved["reason"]) == ("m-1", "failed", "down")
    indexed = catalog.put(f"/v1/images/{image_id}/index-state/m-2", json={"state": "indexed"})
    assert check(indexed, path, "put")["reason"] is None

    record = check(catalog.get(f"/v1/images/{image_id}"), "/v1/images/{image_id}", "get")
    assert set(record["index_states"]) == {"m-1", "m-2"}

    pending = catalog.get("/v1/models/m-1/pending", query_string={"include_failed": "true", "limit": 10})
    assert [i["id"] for i in check(pending, "/v1/models/{model_id}/pending", "get")["items"]] == [image_id]
    listed = catalog.get("/v1/images", query_string={"model_id": "m-2", "index_state": ["indexed", "failed"]})
    assert len(check(listed, "/v1/images", "get")["items"]) == 1

    stats = check(catalog.get("/v1/stats", query_string={"model_id": "m-3"}), "/v1/stats", "get")
    assert stats["images"] == 1 and set(stats["models"]) == {"m-1", "m-2", "m-3"}

    deleted = catalog.delete(f"/v1/images/{image_id}")
    assert deleted.status_code == 204
    check(deleted, "/v1/images/{image_id}", "delete")
    assert check(catalog.get("/v1/stats"), "/v1/stats", "get") == {"images": 0, "datasets": {}, "models": {}}


def test_batch_of_images_answer(catalog: FlaskClient) -> None:
    stored = add(catalog, 7)
    response = upload_batch(
        catalog,
        [png(7), png(8), png(8), png(9)[:60], b"text", png(10)],
        [{"dataset": "d"}] * 5 + [{"dataset": "d", "age": -1}],
    )
    assert response.status_code == 200
    items = check(response, "/v1/images/batch", "post")["items"]
    assert [i["status"] for i in items] == [200, 201, 200, 422, 415, 422]
    assert items[0]["image"] == stored


def test_batch_of_index_states_answer(catalog: FlaskClient) -> None:
    a, b = add(catalog, 1)["id"], add(catalog, 2)["id"]
    response = catalog.put(
        "/v1/models/m-1/index-states",
        json={
            "items": [
                {"id": a, "state": "indexed"},
                {"id": 77, "state": "pending"},
                {"id": b, "state": "failed", "reason": "x"},
            ]
        },
    )
    body = check(response, "/v1/models/{model_id}/index-states", "put")
    assert [i["id"] for i in body["items"]] == [a, b] and body["missing"] == [77]


def test_index_states_in_a_range_answer(catalog: FlaskClient) -> None:
    a, b, c = (add(catalog, seed)["id"] for seed in (11, 12, 13))
    states = [{"id": a, "state": "indexed"}, {"id": c, "state": "failed", "reason": "x"}]
    assert catalog.put("/v1/models/m-1/index-states", json={"items": states}).status_code == 200
    assert catalog.delete(f"/v1/images/{c}").status_code == 204
    response = catalog.get(STATES.replace("/m/", "/m-1/"), query_string={"from": 0, "to": c + 1})
    body = check(response, STATES_PATH, "get")
    # No state for the model is pending; the deleted image is gone, but its ID was given.
    assert body == {
        "items": [{"image_id": a, "state": "indexed"}, {"image_id": b, "state": "pending"}],
        "max_image_id": c,
    }
    above = catalog.get(STATES, query_string={"from": c + 1, "to": c + 16_001})
    assert check(above, STATES_PATH, "get") == {"items": [], "max_image_id": c}


@pytest.mark.parametrize(
    ("part", "types"), [("file", {"image/png"}), ("thumbnail", {"image/webp", "image/png"})]
)
def test_file_answers(catalog: FlaskClient, part: str, types: set[str]) -> None:
    image_id = add(catalog, 9)["id"]
    path = f"/v1/images/{{image_id}}/{part}"
    response = catalog.get(f"/v1/images/{image_id}/{part}")
    assert response.status_code == 200 and response.mimetype in types
    check(response, path, "get")
    cached = catalog.get(f"/v1/images/{image_id}/{part}", headers={"If-None-Match": response.headers["ETag"]})
    assert cached.status_code == 304
    check(cached, path, "get")
    check(catalog.get(f"/v1/images/{image_id + 1}/{part}"), path, "get")  # 404
    stale = catalog.get(f"/v1/images/{image_id}/{part}", headers={"If-Match": '"stale"'})
    assert stale.status_code == 412
    check(stale, path, "get")


def test_problems(catalog: FlaskClient, database_url: str) -> None:
    cases: list[tuple[TestResponse, int, str, str]] = [
        (catalog.get("/v1/images/999"), 404, "/v1/images/{image_id}", "get"),
        (catalog.delete("/v1/images/999"), 404, "/v1/images/{image_id}", "delete"),
        (catalog.get("/v1/images/abc"), 400, "/v1/images/{image_id}", "get"),
        (catalog.get("/v1/images", query_string={"colour": "red"}), 400, "/v1/images", "get"),
        (catalog.get("/v1/images", query_string={"ids": "1", "limit": 2}), 400, "/v1/images", "get"),
        (catalog.get("/v1/images", query_string={"cursor": "nope"}), 400, "/v1/images", "get"),
        (catalog.get("/v1/models/-bad/pending"), 400, "/v1/models/{model_id}/pending", "get"),
        (catalog.get("/v1/stats", query_string={"model_id": "-bad"}), 400, "/v1/stats", "get"),
        (catalog.get("/v1/stats", query_string={"colour": "red"}), 400, "/v1/stats", "get"),
        (upload(catalog, png(1), "{not json"), 400, "/v1/images", "post"),
        (upload(catalog, b"just some text"), 415, "/v1/images", "post"),
        (upload(catalog, b"GIF89a" + bytes(40)), 415, "/v1/images", "post"),
        (upload(catalog, png(1)[:60]), 422, "/v1/images", "post"),
        (upload(catalog, png(1), {"dataset": "x", "age": 131}), 422, "/v1/images", "post"),
        (catalog.patch("/v1/images/1", json={"colour": "red"}), 422, "/v1/images/{image_id}", "patch"),
        (catalog.patch("/v1/images/1", data=b""), 400, "/v1/images/{image_id}", "patch"),
        (
            catalog.put("/v1/images/1/index-state/m", json={"state": "failed"}),
            422,
            "/v1/images/{image_id}/index-state/{model_id}",
            "put",
        ),
        (
            catalog.put("/v1/images/1/index-state/m", json={"state": "indexed"}),
            404,
            "/v1/images/{image_id}/index-state/{model_id}",
            "put",
        ),
        (upload_batch(catalog, [], []), 400, "/v1/images/batch", "post"),
        (upload_batch(catalog, [png(1)], [{}, {}]), 400, "/v1/images/batch", "post"),
        (upload_batch(catalog, [png(1)], "[[" * 30000), 422, "/v1/images/batch", "post"),
        (upload_batch(catalog, [png(i) for i in range(33)]), 413, "/v1/images/batch", "post"),
        (catalog.get(STATES, query_string={"from": 5, "to": 1}), 400, STATES_PATH, "get"),
        (catalog.get("/v1/models/-bad/index-states?from=0&to=1"), 400, STATES_PATH, "get"),
        (catalog.put(STATES, json={"items": [{"id": 1, "state": "failed"}]}), 422, STATES_PATH, "put"),
        (catalog.put(STATES, data="{", content_type="application/json"), 400, STATES_PATH, "put"),
        (
            catalog.put("/v1/models/-bad/index-states", json={"items": [{"id": 1, "state": "indexed"}]}),
            400,
            STATES_PATH,
            "put",
        ),
        (
            catalog.put(STATES, json={"items": [{"id": i, "state": "indexed"} for i in range(1, 502)]}),
            413,
            STATES_PATH,
            "put",
        ),
    ]
    for response, status, path, method in cases:
        assert response.status_code == status, (path, method, response.json)
        assert response.mimetype == "application/problem+json"
        problem = check(response, path, method)
        assert problem["status"] == status
    assert row_counts(database_url) == {"images": 0, "image_files": 0, "index_states": 0}


def test_upload_too_large_is_a_documented_413(make_catalog_app: Any) -> None:
    client = make_catalog_app(max_upload_bytes=1024).test_client()
    noise = Image.frombytes("L", (64, 64), secrets.token_bytes(64 * 64))
    out = io.BytesIO()
    noise.save(out, format="PNG")
    response = upload(client, out.getvalue())
    assert response.status_code == 413
    assert check(response, "/v1/images", "post")["type"] == "urn:medsearch:problem:upload-too-large"


def test_health_readiness_and_metrics(catalog: FlaskClient) -> None:
    assert check(catalog.get("/healthz"), "/healthz", "get") == {"status": "ok", "service": "catalog"}
    ready = catalog.get("/readyz")
    assert ready.status_code == 200
    assert check(ready, "/readyz", "get")["checks"] == {"postgresql": "ok"}
    assert b"http_requests_total" in check(catalog.get("/metrics"), "/metrics", "get")


def test_database_down_gives_documented_503s(make_catalog_app: Any) -> None:
    client = make_catalog_app(
        database_url="postgresql://postgres@127.0.0.1:1/none", db_timeout_s=0.2
    ).test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert "postgresql" in check(ready, "/readyz", "get")["checks"]
    down = client.get("/v1/images/1")
    assert down.status_code == 503
    assert check(down, "/v1/images/{image_id}", "get")["type"] == "urn:medsearch:problem:database-unavailable"
    batch = upload_batch(client, [png(1)])
    assert check(batch, "/v1/images/batch", "post")["status"] == 503
    states = client.put(STATES, json={"items": [{"id": 1, "state": "indexed"}]})
    assert check(states, STATES_PATH, "put")["status"] == 503
    listed = client.get(STATES, query_string={"from": 0, "to": 10})
    assert check(listed, STATES_PATH, "get")["status"] == 503


def test_identity_answers(identity_catalog: FlaskClient, database_url: str) -> None:
    client = identity_catalog
    created = client.post("/v1/tokens", json={"name": "ci", "role": "editor", "expires_at": None})
    assert created.status_code == 201
    token = check(created, "/v1/tokens", "post")["token"]
    secret = created.json["secret"]  # type: ignore[index]
    assert check(client.get("/v1/tokens"), "/v1/tokens", "get")["items"] == [token]
    verified = check(client.post("/v1/tokens/verify", json={"secret": secret}), "/v1/tokens/verify", "post")
    assert verified["identity"]["token_id"] == token["id"]

    subject = f"token:{token['id']}"
    started = client.post(
        "/v1/sessions", json={"subject": subject, "role": "editor", "token_id": token["id"]}
    )
    assert started.status_code == 201
    session = check(started, "/v1/sessions", "post")
    both = {"secret": session["secret"], "csrf_token": session["csrf_token"]}
    assert check(client.post("/v1/sessions/verify", json=both), "/v1/sessions/verify", "post")["csrf_ok"]
    ended = client.delete("/v1/sessions", json={"secret": session["secret"]})
    assert ended.status_code == 204
    check(ended, "/v1/sessions", "delete")
    revoked = client.delete(f"/v1/tokens/{token['id']}")
    assert revoked.status_code == 204
    check(revoked, "/v1/tokens/{token_id}", "delete")

    cases: list[tuple[TestResponse, int, str, str]] = [
        (client.post("/v1/tokens/verify", json={"secret": secret}), 401, "/v1/tokens/verify", "post"),
        (client.post("/v1/tokens/verify", json={"secret": 1}), 422, "/v1/tokens/verify", "post"),
        (
            client.post("/v1/tokens/verify", data="{", content_type="application/json"),
            400,
            "/v1/tokens/verify",
            "post",
        ),
        (client.post("/v1/sessions/verify", json=both), 401, "/v1/sessions/verify", "post"),
        (client.post("/v1/sessions/verify", json={}), 422, "/v1/sessions/verify", "post"),
        (client.post("/v1/sessions", json={"subject": "x", "role": "x"}), 422, "/v1/sessions", "post"),
        (client.delete("/v1/sessions", json={"secret": 1}), 422, "/v1/sessions", "delete"),
        (client.post("/v1/tokens", json={"name": "x"}), 422, "/v1/tokens", "post"),
        (client.get("/v1/tokens", query_string={"x": 1}), 400, "/v1/tokens", "get"),
        (client.delete("/v1/tokens/999"), 404, "/v1/tokens/{token_id}", "delete"),
        (client.delete("/v1/tokens/x"), 400, "/v1/tokens/{token_id}", "delete"),
    ]
    for response, status, path, method in cases:
        assert response.status_code == status, (path, method, response.json)
        assert check(response, path, method)["status"] == status


def test_audit_answers(identity_catalog: FlaskClient) -> None:
    client = identity_catalog
    event = {"actor": "token:1", "role": "reader", "action": "search", "outcome": "ok", "result_ids": [1, 2]}
    for _ in range(3):
        recorded = client.post("/v1/audit", json={"event": event})
        assert recorded.status_code == 201
        check(recorded, "/v1/audit", "post")
    page = check(client.get("/v1/audit", query_string={"limit": 2, "actor": "token:1"}), "/v1/audit", "get")
    assert len(page["items"]) == 2 and page["next_cursor"]
    last = client.get("/v1/audit", query_string={"cursor": page["next_cursor"], "limit": 2})
    assert check(last, "/v1/audit", "get")["next_cursor"] is None
    exported = client.get("/v1/audit.csv", query_string={"action": "search"})
    assert exported.status_code == 200
    assert check(exported, "/v1/audit.csv", "get").startswith(b"id,at,actor,")
    for response, status, path, method in [
        (client.post("/v1/audit", json={"event": {"actor": "a"}}), 422, "/v1/audit", "post"),
        (client.post("/v1/audit", data="[", content_type="application/json"), 400, "/v1/audit", "post"),
        (client.get("/v1/audit", query_string={"action": "hack"}), 400, "/v1/audit", "get"),
        (client.get("/v1/audit.csv", query_string={"limit": 3}), 400, "/v1/audit.csv", "get"),
    ]:
        assert response.status_code == status, (path, method, response.json)
        assert check(response, path, method)["status"] == status


IDENTITY_SCHEMA_CASES = [
    ("NewToken", {"name": "ci", "role": "reader"}, True),
    ("NewToken", {"name": "ci", "role": "admin", "expires_at": "2999-01-01T00:00:00+00:00"}, True),
    ("NewToken", {"name": " ", "role": "reader"}, False),
    ("NewToken", {"name": "ci", "role": "root"}, False),
    ("NewToken", {"name": "ci", "role": "reader", "colour": "red"}, False),
    ("NewSession", {"subject": "oidc:a", "role": "reader", "ttl_s": 60}, True),
    ("NewSession", {"subject": "oidc:a", "role": "reader", "ttl_s": 59}, False),
    ("NewSession", {"subject": "a\nb", "role": "reader"}, False),
    ("NewSession", {"subject": "oidc:a"}, False),
]


@pytest.mark.parametrize(("schema", "body", "accepted"), IDENTITY_SCHEMA_CASES)
def test_identity_request_schemas_agree_with_the_code(
    identity_catalog: FlaskClient, schema: str, body: Any, accepted: bool
) -> None:
    assert (not schema_errors(f"/components/schemas/{schema}", body)) is accepted
    path = "/v1/tokens" if schema == "NewToken" else "/v1/sessions"
    response = identity_catalog.post(path, json=body)
    assert (response.status_code == 201) is accepted
    check(response, path, "post")


AUDIT_SCHEMA_CASES = [
    ({"actor": "a", "action": "sign_in", "outcome": "ok", "role": None, "detail": ""}, True),
    ({"actor": "a", "action": "search", "outcome": "ok", "result_ids": list(range(1, 1001))}, True),
    ({"actor": "a", "action": "search", "outcome": "ok", "result_ids": list(range(1, 1002))}, False),
    ({"actor": "a", "action": "search", "outcome": "ok", "detail": "a\tb"}, False),
    ({"actor": "a", "action": "search", "outcome": "done"}, False),
    ({"actor": "a", "action": "search"}, False),
]


@pytest.mark.parametrize(("event", "accepted"), AUDIT_SCHEMA_CASES)
def test_audit_event_schema_agrees_with_the_code(
    identity_catalog: FlaskClient, event: Any, accepted: bool
) -> None:
    assert (not schema_errors("/components/schemas/AuditEventToRecord", {"event": event})) is accepted
    response = identity_catalog.post("/v1/audit", json={"event": event})
    assert (response.status_code == 201) is accepted
    check(response, "/v1/audit", "post")


# -- request schemas agree with the code on what is accepted -----------------------------------------------

METADATA_CASES = [
    ({"dataset": "d"}, True),
    ({"dataset": "d", "sex": "f", "view_position": "ap", "age": 0, "study": 3, "extra": None}, True),
    ({"dataset": "d", "findings": [f"f{i}" for i in range(32)], "external_id": None}, True),
    ({"dataset": "d", "findings": [f"f{i}" for i in range(33)]}, False),
    ({"dataset": "d", "age": 131}, False),
    ({"dataset": "d", "age": True}, False),
    ({"dataset": "d", "sex": "X"}, False),
    ({"dataset": "d", "patient_id": "p" * 257}, False),
    ({"dataset": "d", "patient_id": ""}, False),
    ({"dataset": None}, False),
    ({"age": 30}, False),
    ({"dataset": "d", "colour": "red"}, False),
    (["d"], False),
]


@pytest.mark.parametrize(("metadata", "accepted"), METADATA_CASES)
def test_new_image_metadata_schema_agrees_with_the_code(
    catalog: FlaskClient, metadata: Any, accepted: bool
) -> None:
    assert (not schema_errors("/components/schemas/NewImageMetadata", metadata)) is accepted
    assert (upload(catalog, png(2), metadata).status_code in (200, 201)) is accepted


INDEX_STATE_CASES = [
    ({"state": "indexed"}, True),
    ({"state": "pending", "reason": None}, True),
    ({"state": "failed", "reason": "embedder down"}, True),
    ({"state": "failed"}, False),
    ({"state": "failed", "reason": "  "}, False),
    ({"state": "indexed", "reason": "why"}, False),
    ({"state": "done"}, False),
    ({"state": "indexed", "colour": "red"}, False),
    ({}, False),
]


@pytest.mark.parametrize(("body", "accepted"), INDEX_STATE_CASES)
def test_index_state_update_schema_agrees_with_the_code(
    catalog: FlaskClient, body: Any, accepted: bool
) -> None:
    image_id = add(catalog, 3)["id"]
    assert (not schema_errors("/components/schemas/IndexStateUpdate", body)) is accepted
    response = catalog.put(f"/v1/images/{image_id}/index-state/m", json=body)
    assert (response.status_code == 200) is accepted
    check(response, "/v1/images/{image_id}/index-state/{model_id}", "put")


INDEX_STATES_CASES = [
    ({"items": [{"id": 1, "state": "indexed"}, {"id": 2, "state": "failed", "reason": "x"}]}, True),
    ({"items": [{"id": 1, "state": "pending", "reason": None}]}, True),
    ({"items": [{"id": 1, "state": "failed"}]}, False),
    ({"items": [{"id": 1, "state": "failed", "reason": " "}]}, False),
    ({"items": [{"id": 1, "state": "indexed", "reason": "why"}]}, False),
    ({"items": [{"id": 0, "state": "indexed"}]}, False),
    ({"items": [{"id": 1, "state": "indexed", "colour": "red"}]}, False),
    ({"items": [{"state": "indexed"}]}, False),
    ({"items": []}, False),
    ({"items": [{"id": 1, "state": "indexed"}], "model": "m"}, False),
]


@pytest.mark.parametrize(("body", "accepted"), INDEX_STATES_CASES)
def test_index_states_update_schema_agrees_with_the_code(
    catalog: FlaskClient, body: Any, accepted: bool
) -> None:
    add(catalog, 1)
    add(catalog, 2)
    assert (not schema_errors("/components/schemas/IndexStatesUpdate", body)) is accepted
    response = catalog.put(STATES, json=body)
    assert (response.status_code == 200) is accepted
    check(response, STATES_PATH, "put")


def test_dicom_answers(catalog: FlaskClient, make_catalog_app: Any, tmp_path: Any) -> None:
    pixels = (np.arange(64 * 48, dtype=np.uint32) % 251).astype(np.uint8).reshape(48, 64)
    made = identified_dicom(pixels, Patient("ZQXOPENAPI"))
    created = upload(catalog, made.data, {"dataset": "dicom"})
    assert created.status_code == 201
    body = check(created, "/v1/images", "post")
    assert body["mime_type"] == "application/dicom" and body["metadata"]["extra"] == {"modality": "DX"}
    stored = catalog.get(f"/v1/images/{body['id']}/file")
    assert stored.mimetype == "application/dicom"
    check(stored, "/v1/images/{image_id}/file", "get")
    refused = [
        upload(catalog, identified_dicom(pixels, Patient("ZQXMR"), modality="MR").data),
        upload(catalog, identified_dicom(pixels, Patient("ZQXBURNT"), burned_in="YES").data),
        upload(catalog, identified_dicom(np.stack([pixels] * 2), Patient("ZQXFRAMES"), frames=2).data),
    ]
    for response in refused:
        assert response.status_code == 422
        check(response, "/v1/images", "post")
    batch = upload_batch(catalog, [made.data, identified_dicom(pixels, Patient("ZQXMR"), modality="MR").data])
    assert [i["status"] for i in check(batch, "/v1/images/batch", "post")["items"]] == [200, 422]
    (tmp_path / "a-file").write_text("")
    keyless = make_catalog_app(
        pseudonym_key=None, pseudonym_key_file=tmp_path / "a-file" / "key"
    ).test_client()
    no_key = upload(keyless, made.data)
    assert no_key.status_code == 503
    assert check(no_key, "/v1/images", "post")["type"] == "urn:medsearch:problem:pseudonym-key-unavailable"
    items = check(upload_batch(keyless, [made.data]), "/v1/images/batch", "post")["items"]
    assert items[0]["status"] == 503
