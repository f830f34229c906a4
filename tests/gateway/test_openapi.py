"""The gateway's OpenAPI document: valid, complete, shipped, and true to what the API really answers.

Real requests go through an in-process gateway app that talks to the session's four real services
(tests/gateway/conftest.py), with the shared data ingested; each answer is checked against what the
document gives for that path, method and status: its media type, its required headers and its JSON body.
The response schemas forbid unknown members, so a field added, renamed or dropped in the code without
the document fails here. Apps whose services sit at a closed port or never answer give the 503s and 504s.
"""

from __future__ import annotations

import dataclasses
import io
import json
import secrets
import socket
import tomllib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests
from flask.testing import FlaskClient
from openapi_spec_validator import validate
from PIL import Image
from werkzeug.test import TestResponse

from medsearch_common.settings import Binding
from medsearch_gateway.app import create_app
from medsearch_gateway.settings import GatewaySettings, Upstream
from tests.conftest import REPO_ROOT
from tests.embedder.dicoms import dicom
from tests.gateway.conftest import HTTP_TIMEOUT_S, Indexed, Stack
from tests.support.openapi import OpenApiDocument, app_routes
from tests.support.processes import free_port

pytestmark = pytest.mark.integration

OPENAPI = OpenApiDocument("medsearch_gateway")
DOCUMENT = OPENAPI.document
check = OPENAPI.check

PROBLEM = "urn:medsearch:problem:"
SEARCH = "/api/v1/search"
SIMILAR = "/api/v1/images/{image_id}/similar"
IMAGES = "/api/v1/images"
IMAGE = "/api/v1/images/{image_id}"
PREVIEWS = "/api/v1/previews"
STATS = "/api/v1/stats"
UNKNOWN_ID = 987654321
SERVICES = ("embedder", "search", "catalog")


def gateway_settings(urls: dict[str, str], **overrides: Any) -> GatewaySettings:
    return GatewaySettings(
        binding=Binding("127.0.0.1", 0),
        embedder=Upstream("embedder", urls["embedder"], 30),
        search=Upstream("search", urls["search"], 10),
        catalog=Upstream("catalog", urls["catalog"], 10),
        **overrides,
    )


def closed_url() -> str:
    """A local address nothing listens on."""
    return f"http://127.0.0.1:{free_port()}"


def offline_app(**overrides: Any) -> FlaskClient:
    """A gateway whose services are all unreachable: for answers it gives before calling any.
    Anonymous readers are let in, since no catalog is there to verify a token."""
    settings = gateway_settings({name: closed_url() for name in SERVICES}, anonymous_readers=True)
    return create_app(dataclasses.replace(settings, **overrides)).test_client()


def signed_in(client: FlaskClient, stack: Stack) -> FlaskClient:
    """`client` sending the admin's token with every request."""
    client.environ_base["HTTP_AUTHORIZATION"] = stack.auth["Authorization"]
    return client


@pytest.fixture(scope="module")
def gateway(stack: Stack, indexed: list[Indexed]) -> FlaskClient:
    # The services' own URLs, not their proxies: outage tests elsewhere cut those.
    return signed_in(create_app(gateway_settings(stack.urls)).test_client(), stack)


@pytest.fixture
def hung_url() -> Iterator[str]:
    """A listener whose backlog accepts connections that are never answered: a service that hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def fresh_png(size: int = 64) -> bytes:
    """Random pixels: bytes no other test (or run) has stored."""
    out = io.BytesIO()
    Image.frombytes("L", (size, size), secrets.token_bytes(size * size)).save(out, format="PNG")
    return out.getvalue()


def post_upload(client: FlaskClient, path: str, data: bytes, **fields: str) -> TestResponse:
    return client.post(
        path,
        data={"image": (io.BytesIO(data), "upload"), **fields},
        content_type="multipart/form-data",
    )


def problem(response: TestResponse, path: str, method: str, status: int, kind: str) -> dict[str, Any]:
    """The documented problem of this status and type, with a detail."""
    assert response.status_code == status, response.get_data(as_text=True)
    body: dict[str, Any] = check(response, path, method)
    assert body["type"] == (kind if kind == "about:blank" else PROBLEM + kind) and body["detail"]
    return body


# -- the document itself ----------------------------------------------------------------------------


def test_the_document_is_valid_openapi_3_1() -> None:
    validate(DOCUMENT)
    assert DOCUMENT["openapi"] == "3.1.0"


def test_the_package_ships_the_document() -> None:
    # An editable install finds the file in src/; a built wheel only when package-data names it.
    project = tomllib.loads((REPO_ROOT / "services/gateway/pyproject.toml").read_text(encoding="utf-8"))
    assert "openapi.json" in project["tool"]["setuptools"]["package-data"]["medsearch_gateway"]


def test_the_served_document_is_the_file() -> None:
    response = offline_app().get("/api/v1/openapi.json")
    assert check(response, "/api/v1/openapi.json", "get") == DOCUMENT


def test_every_route_of_the_app_is_documented_and_every_documented_route_exists() -> None:
    app = offline_app().application
    routes = app_routes(app, skip_endpoint_prefix="ui.")  # the web page and its static files
    assert {(SEARCH, "post"), (IMAGE, "delete"), ("/readyz", "get")} <= routes
    assert {path for path, _ in routes if not path.startswith("/api/v1/")} == {
        "/healthz",
        "/readyz",
        "/metrics",
    }
    documented = OPENAPI.operations()
    assert routes - documented == set(), "routes missing from openapi.json"
    assert documented - routes == set(), "openapi.json documents routes the app does not have"


# -- real answers against the document --------------------------------------------------------------


def test_search_answers(gateway: FlaskClient, indexed: list[Indexed]) -> None:
    item = indexed[0]
    query = item.path.read_bytes()
    flt = json.dumps({"dataset": [item.metadata["dataset"]]})
    found = post_upload(gateway, SEARCH, query, k="3", filter=flt, one_per_patient="false")
    assert found.status_code == 200, found.get_data(as_text=True)
    body = check(found, SEARCH, "post")
    assert body["results"][0]["image"]["id"] == item.image_id
    assert [hit["rank"] for hit in body["results"]] == list(range(1, len(body["results"]) + 1))
    assert body["results"][0]["image"]["index_state"] == "indexed"

    problem(post_upload(gateway, SEARCH, query, k="0"), SEARCH, "post", 400, "invalid-request")
    refused = post_upload(gateway, SEARCH, query, filter='{"colour": ["red"]}')
    assert "colour" in problem(refused, SEARCH, "post", 400, "invalid-request")["detail"]
    problem(post_upload(gateway, SEARCH, b"%PDF-1.7 not an image"), SEARCH, "post", 415, "unsupported-upload")
    corrupt = b"\x89PNG\r\n\x1a\n" + bytes(40)
    problem(post_upload(gateway, SEARCH, corrupt), SEARCH, "post", 422, "image-rejected")


def test_search_refusals_before_any_service_is_asked() -> None:
    client = offline_app(max_upload_bytes=1024)
    not_multipart = client.post(SEARCH, json={"image": "x"})
    assert "multipart/form-data" in problem(not_multipart, SEARCH, "post", 400, "invalid-request")["detail"]
    too_large = b"\x89PNG\r\n\x1a\n" + bytes(2048)
    problem(post_upload(client, SEARCH, too_large), SEARCH, "post", 413, "upload-too-large")


def test_similar_answers(gateway: FlaskClient, stack: Stack, indexed: list[Indexed]) -> None:
    item = indexed[0]
    flt = json.dumps({"view_position": [item.metadata["view_position"]]})
    similar = gateway.get(
        f"/api/v1/images/{item.image_id}/similar",
        query_string={"k": 5, "one_per_patient": "true", "filter": flt},
    )
    assert similar.status_code == 200, similar.get_data(as_text=True)
    body = check(similar, SIMILAR, "get")
    assert body["query"] == {"image_id": item.image_id} and body["results"]
    assert item.image_id not in {hit["image"]["id"] for hit in body["results"]}

    problem(gateway.get(f"/api/v1/images/{UNKNOWN_ID}/similar"), SIMILAR, "get", 404, "image-not-found")
    unknown_param = gateway.get(f"/api/v1/images/{item.image_id}/similar", query_string={"colour": "red"})
    problem(unknown_param, SIMILAR, "get", 400, "invalid-request")
    bad_filter = gateway.get(f"/api/v1/images/{item.image_id}/similar", query_string={"filter": "{bad"})
    problem(bad_filter, SIMILAR, "get", 400, "invalid-request")

    # Stored in the catalog directly: an image without a vector yet.
    added = requests.post(
        f"{stack.urls['catalog']}/v1/images",
        files={"file": ("a.png", fresh_png())},
        data={"metadata": json.dumps({"dataset": "openapi-pending"})},
        timeout=HTTP_TIMEOUT_S,
    )
    assert added.status_code == 201, added.text
    pending_id = added.json()["id"]
    try:
        problem(gateway.get(f"/api/v1/images/{pending_id}/similar"), SIMILAR, "get", 409, "not-indexed")
        assert check(gateway.get(f"/api/v1/images/{pending_id}"), IMAGE, "get")["index_state"] == "pending"
    finally:
        requests.delete(f"{stack.urls['catalog']}/v1/images/{pending_id}", timeout=HTTP_TIMEOUT_S)


def test_browse_and_get_answers(gateway: FlaskClient, indexed: list[Indexed]) -> None:
    first = gateway.get(IMAGES, query_string={"dataset": "nih", "limit": 2})
    assert first.status_code == 200, first.get_data(as_text=True)
    page = check(first, IMAGES, "get")
    assert len(page["items"]) == 2 and page["next_cursor"]
    assert {image["metadata"]["dataset"] for image in page["items"]} == {"nih"}
    second = gateway.get(IMAGES, query_string={"dataset": "nih", "limit": 2, "cursor": page["next_cursor"]})
    assert check(second, IMAGES, "get")["items"][0]["id"] > page["items"][-1]["id"]
    problem(gateway.get(IMAGES, query_string={"colour": "red"}), IMAGES, "get", 400, "invalid-request")
    problem(gateway.get(IMAGES, query_string={"limit": 100000}), IMAGES, "get", 400, "invalid-request")

    item = indexed[-1]
    image = check(gateway.get(f"/api/v1/images/{item.image_id}"), IMAGE, "get")
    assert image["id"] == item.image_id and image["index_state"] == "indexed"
    assert image["metadata"]["external_id"] == item.metadata["external_id"]
    assert image["file_url"] == f"/api/v1/images/{item.image_id}/file"
    problem(gateway.get(f"/api/v1/images/{UNKNOWN_ID}"), IMAGE, "get", 404, "image-not-found")
    problem(gateway.get("/api/v1/images/abc"), IMAGE, "get", 400, "invalid-request")


def test_stats_answer(gateway: FlaskClient, indexed: list[Indexed]) -> None:
    stats = check(gateway.get(STATS), STATS, "get")
    assert stats["images"] >= len(indexed) and stats["datasets"]["nih"] >= 1
    assert stats["model"]["meaningful"] is False and stats["index"]["indexed"] >= len(indexed)


def test_add_again_and_delete_answers(gateway: FlaskClient, indexed: list[Indexed]) -> None:
    data = fresh_png()
    metadata = json.dumps({"dataset": "openapi", "sex": "f", "findings": ["Mass"]})
    created = post_upload(gateway, IMAGES, data, metadata=metadata)
    assert created.status_code == 201, created.get_data(as_text=True)
    body = check(created, IMAGES, "post")
    image_id = body["image"]["id"]
    deleted = False
    try:
        assert body["indexed"] is True and body["image"]["index_state"] == "indexed"
        assert body["image"]["metadata"]["sex"] == "F"
        again = post_upload(gateway, IMAGES, data, metadata=metadata)
        assert again.status_code == 200
        assert check(again, IMAGES, "post")["image"]["id"] == image_id

        removed = gateway.delete(f"/api/v1/images/{image_id}")
        assert removed.status_code == 204
        check(removed, IMAGE, "delete")
        deleted = True
        problem(gateway.get(f"/api/v1/images/{image_id}"), IMAGE, "get", 404, "image-not-found")
        problem(gateway.delete(f"/api/v1/images/{image_id}"), IMAGE, "delete", 404, "image-not-found")
    finally:
        if not deleted:
            gateway.delete(f"/api/v1/images/{image_id}")


def test_index_and_pending_answers(gateway: FlaskClient, indexed: list[Indexed]) -> None:
    item = indexed[3]
    done = gateway.post(f"/api/v1/images/{item.image_id}/index")
    assert done.status_code == 200
    assert check(done, "/api/v1/images/{image_id}/index", "post")["already_indexed"] is True
    forced = gateway.post(f"/api/v1/images/{item.image_id}/index?force=true")
    assert check(forced, "/api/v1/images/{image_id}/index", "post")["already_indexed"] is False
    problem(
        gateway.post(f"/api/v1/images/{item.image_id}/index?force=maybe"),
        "/api/v1/images/{image_id}/index",
        "post",
        400,
        "invalid-request",
    )
    pending = gateway.get("/api/v1/pending?include_failed=true&limit=5")
    assert pending.status_code == 200
    check(pending, "/api/v1/pending", "get")
    problem(gateway.get("/api/v1/pending?colour=red"), "/api/v1/pending", "get", 400, "invalid-request")
    problem(
        gateway.post("/api/v1/images/987654321/index"),
        "/api/v1/images/{image_id}/index",
        "post",
        404,
        "image-not-found",
    )


def test_verify_answers(gateway: FlaskClient, indexed: list[Indexed]) -> None:
    verify = "/api/v1/verify"
    checked = gateway.post(verify, json={"from": 0, "to": 100})
    assert checked.status_code == 200, checked.get_data(as_text=True)
    body = check(checked, verify, "post")
    assert body["repaired"] is False and body["checked"] >= 1 and body["max_image_id"] >= 1
    refused = problem(gateway.post(verify, json={"from": 5, "to": 1}), verify, "post", 400, "invalid-request")
    assert "to (1) must be greater than from (5)" in refused["detail"]


def test_duplicates_answers(gateway: FlaskClient, indexed: list[Indexed]) -> None:
    duplicates = "/api/v1/duplicates"
    # A low threshold: random weights make every X-ray look alike, so pairs come back.
    found = gateway.post(duplicates, json={"from": 0, "to": 100, "threshold": 0.5, "k": 2})
    assert found.status_code == 200, found.get_data(as_text=True)
    body = check(found, duplicates, "post")
    assert body["pairs"] and body["images"] and body["vectors"] >= 1 and body["max_image_id"] >= 1
    refused = problem(
        gateway.post(duplicates, json={"from": 0, "to": 100, "threshold": 1.5}),
        duplicates,
        "post",
        400,
        "invalid-request",
    )
    assert "threshold must be greater than 0 and at most 1, got 1.5" in refused["detail"]


def test_add_refusals(gateway: FlaskClient, indexed: list[Indexed]) -> None:
    before = check(gateway.get(STATS), STATS, "get")["images"]
    no_metadata = post_upload(gateway, IMAGES, fresh_png())
    assert "metadata" in problem(no_metadata, IMAGES, "post", 400, "invalid-request")["detail"]
    bad_age = post_upload(gateway, IMAGES, fresh_png(), metadata=json.dumps({"dataset": "x", "age": 300}))
    assert "age" in problem(bad_age, IMAGES, "post", 422, "image-rejected")["detail"]
    an_mr = dicom(np.zeros((32, 32), dtype=np.uint8), modality="MR")
    added = post_upload(gateway, IMAGES, an_mr, metadata=json.dumps({"dataset": "x"}))
    assert "modality MR" in problem(added, IMAGES, "post", 422, "image-rejected")["detail"]
    assert check(gateway.get(STATS), STATS, "get")["images"] == before


def test_batch_answers(gateway: FlaskClient, indexed: list[Indexed]) -> None:
    batch = "/api/v1/images/batch"
    good = fresh_png()
    response = gateway.post(
        batch,
        data={
            "image": [(io.BytesIO(good), "a"), (io.BytesIO(good[:40]), "b")],
            "metadata": json.dumps([{"dataset": "openapi"}, {"dataset": "openapi"}]),
        },
        content_type="multipart/form-data",
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    items = check(response, batch, "post")["items"]
    try:
        assert [item["status"] for item in items] == [201, 422]
    finally:
        gateway.delete(f"/api/v1/images/{items[0]['image']['id']}")
    no_metadata = gateway.post(
        batch, data={"image": [(io.BytesIO(good), "a")]}, content_type="multipart/form-data"
    )
    problem(no_metadata, batch, "post", 400, "invalid-request")


@pytest.mark.parametrize(
    ("part", "types"), [("file", {"image/png"}), ("thumbnail", {"image/webp", "image/png"})]
)
def test_file_answers(gateway: FlaskClient, indexed: list[Indexed], part: str, types: set[str]) -> None:
    item = indexed[0]
    path = f"/api/v1/images/{{image_id}}/{part}"
    response = gateway.get(f"/api/v1/images/{item.image_id}/{part}")
    assert response.status_code == 200 and response.mimetype in types
    check(response, path, "get")
    if part == "file":
        assert response.data == item.path.read_bytes()
    cached = gateway.get(
        f"/api/v1/images/{item.image_id}/{part}", headers={"If-None-Match": response.headers["ETag"]}
    )
    assert cached.status_code == 304
    check(cached, path, "get")
    problem(gateway.get(f"/api/v1/images/{UNKNOWN_ID}/{part}"), path, "get", 404, "image-not-found")


def test_preview_answers(gateway: FlaskClient, indexed: list[Indexed]) -> None:
    preview = post_upload(gateway, PREVIEWS, dicom(np.arange(64 * 48, dtype=np.uint16).reshape(48, 64)))
    assert preview.status_code == 200, preview.get_data(as_text=True)
    check(preview, PREVIEWS, "post")
    problem(
        post_upload(gateway, PREVIEWS, b"GIF89a" + bytes(40)), PREVIEWS, "post", 415, "unsupported-upload"
    )


def test_health_readiness_and_metrics(gateway: FlaskClient) -> None:
    assert check(gateway.get("/healthz"), "/healthz", "get") == {"status": "ok", "service": "gateway"}
    ready = check(gateway.get("/readyz"), "/readyz", "get")
    assert ready == {"status": "ready", "service": "gateway", "checks": dict.fromkeys(SERVICES, "ok")}
    assert b"http_requests_total" in check(gateway.get("/metrics"), "/metrics", "get")


def test_the_request_id_is_returned() -> None:
    response = offline_app().get("/healthz", headers={"X-Request-ID": "req-42.a:b"})
    check(response, "/healthz", "get")
    assert response.headers["X-Request-ID"] == "req-42.a:b"


def test_unknown_path_and_wrong_method_are_the_problems_the_document_states() -> None:
    client = offline_app()
    unknown = client.get("/api/v1/nothing-here")
    assert unknown.status_code == 404
    OPENAPI.plain_problem(unknown)
    wrong_method = client.put(IMAGES)
    assert wrong_method.status_code == 405 and "POST" in wrong_method.headers["Allow"].split(", ")
    OPENAPI.plain_problem(wrong_method)


# -- services down ----------------------------------------------------------------------------------


def test_embedder_down_gives_documented_503s_and_null_models(stack: Stack, indexed: list[Indexed]) -> None:
    client = signed_in(
        create_app(gateway_settings({**stack.urls, "embedder": closed_url()})).test_client(), stack
    )
    item = indexed[0]
    down = problem(
        post_upload(client, SEARCH, item.path.read_bytes()), SEARCH, "post", 503, "upstream-unavailable"
    )
    assert down["dependency"] == "embedder"
    stats = check(client.get(STATS), STATS, "get")
    assert stats["model"] is None and stats["index"] is None and stats["images"] >= len(indexed)
    assert check(client.get(f"/api/v1/images/{item.image_id}"), IMAGE, "get")["index_state"] is None
    degraded = check(client.get("/readyz"), "/readyz", "get")
    assert degraded["status"] == "degraded"
    checks = degraded["checks"]
    assert checks["embedder"] != "ok" and checks["catalog"] == "ok"


def test_catalog_down_gives_documented_503s(stack: Stack, indexed: list[Indexed]) -> None:
    client = signed_in(
        create_app(gateway_settings({**stack.urls, "catalog": closed_url()})).test_client(), stack
    )
    assert problem(client.get(STATS), STATS, "get", 503, "upstream-unavailable")["dependency"] == "catalog"
    assert problem(client.get(IMAGES), IMAGES, "get", 503, "upstream-unavailable")["dependency"] == "catalog"
    added = post_upload(client, IMAGES, fresh_png(), metadata=json.dumps({"dataset": "x"}))
    assert problem(added, IMAGES, "post", 503, "upstream-unavailable")["dependency"] == "catalog"


def test_a_hung_embedder_gives_a_documented_504(hung_url: str) -> None:
    settings = gateway_settings({"embedder": hung_url, "search": closed_url(), "catalog": closed_url()})
    quick = dataclasses.replace(
        settings, embedder=Upstream("embedder", hung_url, 0.5), attempts=1, anonymous_readers=True
    )
    client = create_app(quick).test_client()
    hung = problem(post_upload(client, SEARCH, fresh_png()), SEARCH, "post", 504, "upstream-timeout")
    assert hung["dependency"] == "embedder"
