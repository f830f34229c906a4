"""The search service's OpenAPI document: valid, complete, shipped, and true to what the API really answers.

Real requests go through the app on both real backends (Milvus Lite and a Milvus server); each answer
is checked against what the document gives for that path, method and status: its media type, its
required headers and its JSON body. The response schemas forbid unknown members, so a field added,
renamed or dropped in the code without the document fails here. A table of cases answers every status
the document lists, and a test holds the table and the document to each other.
"""

from __future__ import annotations

import base64
import dataclasses
import socket
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pytest
from flask.testing import FlaskClient
from openapi_spec_validator import validate
from pymilvus import MilvusClient
from werkzeug.test import TestResponse

from medsearch_search.app import create_app
from medsearch_search.service import SearchService
from medsearch_search.store import MilvusStore
from tests.conftest import REPO_ROOT
from tests.search.conftest import new_model_id, search_settings, unit_vectors, upsert
from tests.support.openapi import HTTP_METHODS, OpenApiDocument, app_routes

OPENAPI = OpenApiDocument("medsearch_search")
DOCUMENT = OPENAPI.document
check = OPENAPI.check
schema_errors = OPENAPI.schema_errors
assert_plain_problem = OPENAPI.plain_problem

PROBLEM = "urn:medsearch:problem:"

MODELS = "/v1/models"
MODEL = "/v1/models/{model_id}"
VECTORS = "/v1/models/{model_id}/vectors"
VECTOR = "/v1/models/{model_id}/vectors/{vector_id}"
VECTOR_IDS = "/v1/models/{model_id}/vector-ids"
NEIGHBORS = "/v1/models/{model_id}/neighbors"
SEARCH = "/v1/models/{model_id}/search"
MAP_JOBS = "/v1/models/{model_id}/map-jobs"
MAP_JOB = "/v1/models/{model_id}/map-jobs/current"
MAP = "/v1/models/{model_id}/map"

DIM = 8
VECTORS_STORED = unit_vectors(3, DIM, seed=17)
ITEMS: list[dict[str, Any]] = [
    {
        "id": 1,
        "vector": VECTORS_STORED[0].tolist(),
        "attributes": {
            "dataset": "nih",
            "patient_id": "p1",
            "sex": "f",
            "age": 61,
            "view_position": "pa",
            "findings": ["Mass", "Effusion", "Mass"],
        },
    },
    {"id": 2, "vector": VECTORS_STORED[1].tolist(), "attributes": {}},
    {"id": 3, "vector": VECTORS_STORED[2].tolist(), "attributes": {"sex": "O", "age": 0}},
]
# Handlers that touch nothing that can fail: no real request makes them answer their documented 500.
NO_REAL_500 = {("/v1/openapi.json", "get", "500"), ("/healthz", "get", "500"), ("/metrics", "get", "500")}

T = TypeVar("T")


class FailingStore(MilvusStore):
    """A store whose every Milvus call fails in a way nobody planned for: what a 500 looks like."""

    def _call(self, what: str, action: Callable[[MilvusClient], T]) -> T:
        raise RuntimeError(f"an unplanned failure (secret-ish internals) while trying to {what}")


@dataclass(frozen=True)
class Clients:
    """The service on the backend under test, and variants of it that answer the rarer statuses."""

    search: FlaskClient
    model_id: str  # holds ITEMS
    limited: FlaskClient  # the same store; at most 3 items and 2 query vectors a request
    small_body: FlaskClient  # the same store; bodies of at most 1024 bytes
    down: FlaskClient  # a Milvus that cannot be reached
    broken: FlaskClient  # a store that fails unexpectedly


def closed_port() -> int:
    """A local TCP port nothing listens on (bound once by us, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture(scope="module")
def clients(search: FlaskClient, backend: str, tmp_path_factory: pytest.TempPathFactory) -> Clients:
    model_id = new_model_id()
    stored = upsert(search, model_id, ITEMS)
    assert stored.status_code == 200, stored.get_data(as_text=True)
    service: SearchService = search.application.extensions["medsearch_search"]
    # Variants share the store: Milvus Lite allows one client per folder and process.
    limited = dataclasses.replace(service.settings, max_items=3, max_queries=2)
    small_body = dataclasses.replace(service.settings, max_request_bytes=1024)
    if backend == "lite":
        in_the_way = tmp_path_factory.mktemp("milvus-down") / "a-file"
        in_the_way.write_text("a file where Milvus Lite's folder should be\n")
        unreachable = str(in_the_way / "search.db")
    else:
        unreachable = f"http://127.0.0.1:{closed_port()}"
    down = search_settings(unreachable, milvus_timeout_s=2.0)
    return Clients(
        search=search,
        model_id=model_id,
        limited=create_app(limited, store=service.store).test_client(),
        small_body=create_app(small_body, store=service.store).test_client(),
        down=create_app(down).test_client(),
        broken=create_app(service.settings, store=FailingStore(service.settings)).test_client(),
    )


# -- the document itself -------------------------------------------------------------------------------------


def test_the_document_is_valid_openapi_3_1() -> None:
    validate(DOCUMENT)
    assert DOCUMENT["openapi"] == "3.1.0"


def test_the_package_ships_the_document() -> None:
    # An editable install finds the file in src/; a built wheel only when package-data names it.
    project = tomllib.loads((REPO_ROOT / "services/search/pyproject.toml").read_text(encoding="utf-8"))
    assert "openapi.json" in project["tool"]["setuptools"]["package-data"]["medsearch_search"]


def test_the_served_document_is_the_file(search: FlaskClient) -> None:
    response = search.get("/v1/openapi.json")
    assert check(response, "/v1/openapi.json", "get") == DOCUMENT


def test_every_route_of_the_app_is_documented_and_every_documented_route_exists(search: FlaskClient) -> None:
    app = search.application
    routes = app_routes(app)
    assert {(VECTORS, "put"), (SEARCH, "post"), ("/readyz", "get")} <= routes
    documented = OPENAPI.operations()
    assert routes - documented == set(), "routes missing from openapi.json"
    assert documented - routes == set(), "openapi.json documents routes the app does not have"


# -- real answers against the document -----------------------------------------------------------------------


def at(path: str, model_id: str, vector_id: int | str = "") -> str:
    return path.replace("{model_id}", model_id).replace("{vector_id}", str(vector_id))


def query(c: Clients, **body: Any) -> dict[str, Any]:
    return {"vectors": [VECTORS_STORED[0].tolist()], **body}


def upsert_again(c: Clients) -> TestResponse:
    return c.search.put(at(VECTORS, c.model_id), json={"items": [ITEMS[2]]})


def delete_stored(c: Clients) -> TestResponse:
    extra = {"id": 50, "vector": VECTORS_STORED[1].tolist()}
    assert c.search.put(at(VECTORS, c.model_id), json={"items": [extra]}).status_code == 200
    deleted = c.search.delete(at(VECTOR, c.model_id, 50))
    assert c.search.get(at(VECTOR, c.model_id, 50)).status_code == 404
    return deleted


def search_filtered(c: Clients) -> TestResponse:
    flt = {"dataset": ["nih"], "sex": ["F"], "age": {"min": 40}, "exclude_ids": [2, 3]}
    return c.search.post(at(SEARCH, c.model_id), json=query(c, k=5, filter=flt, one_per_patient=True))


# A model of 25 vectors per backend, mapped by the map cases in their order: start, start
# again while it runs, read the job, read the finished map.
_MAPPED: dict[int, str] = {}


def mapped_model(c: Clients) -> str:
    if id(c.search) not in _MAPPED:
        model_id = new_model_id()
        items = [{"id": i + 1, "vector": v.tolist()} for i, v in enumerate(unit_vectors(25, DIM, seed=29))]
        assert upsert(c.search, model_id, items).status_code == 200
        _MAPPED[id(c.search)] = model_id
    return _MAPPED[id(c.search)]


def start_map(c: Clients) -> TestResponse:
    return c.search.post(at(MAP_JOBS, mapped_model(c)))


def finished_map(c: Clients) -> TestResponse:
    model_id = mapped_model(c)
    service: SearchService = c.search.application.extensions["medsearch_search"]
    service.maps.wait(model_id, 300)
    return c.search.get(at(MAP, model_id))


def expect_running(c: Clients, body: Any) -> None:
    assert body["state"] == "running" and body["vectors"] == 25


def expect_mapped(c: Clients, body: Any) -> None:
    assert sorted(body["points"]["id"]) == list(range(1, 26)) and body["job"]["state"] == "done"


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    method: str
    status: int
    send: Callable[[Clients], TestResponse]
    problem_type: str | None = None  # the problem's type, for an error
    detail: str = ""  # words the problem's detail holds
    expect: Callable[[Clients, Any], None] | None = None  # further checks of a success's body


def expect_one_upserted(c: Clients, body: Any) -> None:
    assert body == {"upserted": 1}


def expect_listed(c: Clients, body: Any) -> None:
    [model] = [m for m in body["models"] if m["model_id"] == c.model_id]
    assert model["dim"] == DIM and model["count"] == len(ITEMS)
    assert [m["model_id"] for m in body["models"]] == sorted(m["model_id"] for m in body["models"])


def expect_model(c: Clients, body: Any) -> None:
    assert body["model_id"] == c.model_id and body["dim"] == DIM and body["count"] == len(ITEMS)
    listed = check(c.search.get(MODELS), MODELS, "get")
    assert body in listed["models"]


def expect_normalized_attributes(c: Clients, body: Any) -> None:
    assert body["id"] == 1
    assert body["attributes"] == {
        "dataset": "nih",
        "patient_id": "p1",
        "sex": "F",
        "age": 61,
        "view_position": "PA",
        "findings": ["Mass", "Effusion"],
    }


def expect_unknown_attributes(c: Clients, body: Any) -> None:
    assert body["attributes"] == dict.fromkeys(
        ["dataset", "patient_id", "sex", "age", "view_position"], None
    ) | {"findings": []}


def expect_stored_ids(c: Clients, body: Any) -> None:
    assert body == {"ids": [item["id"] for item in ITEMS]}


def expect_no_ids(c: Clients, body: Any) -> None:
    assert body == {"ids": []}


def expect_read_in_order(c: Clients, body: Any) -> None:
    assert [item["id"] for item in body["vectors"]] == [3, 1]
    assert body["missing"] == [999]
    for item in body["vectors"]:
        vector = np.frombuffer(base64.b64decode(item["vector"]), dtype="<f4")
        np.testing.assert_allclose(vector, VECTORS_STORED[item["id"] - 1], atol=1e-6)


def expect_every_stored_vector_scanned(c: Clients, body: Any) -> None:
    assert body["vectors"] == len(ITEMS)
    assert all(a < b and score >= 1e-9 for a, b, score in body["pairs"])


def expect_self_first(c: Clients, body: Any) -> None:
    [hits] = body["results"]
    assert hits[0]["id"] == 1 and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)


def expect_only_matching(c: Clients, body: Any) -> None:
    assert [hit["id"] for hit in body["results"][0]] == [1]


CASES: list[Case] = [
    # 2xx
    Case("list models", MODELS, "get", 200, lambda c: c.search.get(MODELS), expect=expect_listed),
    Case(
        "get a model", MODEL, "get", 200, lambda c: c.search.get(at(MODEL, c.model_id)), expect=expect_model
    ),
    Case(
        "upsert",
        VECTORS,
        "put",
        200,
        upsert_again,
        expect=expect_one_upserted,
    ),
    Case(
        "get a vector",
        VECTOR,
        "get",
        200,
        lambda c: c.search.get(at(VECTOR, c.model_id, 1)),
        expect=expect_normalized_attributes,
    ),
    Case(
        "get a vector of unknown attributes",
        VECTOR,
        "get",
        200,
        lambda c: c.search.get(at(VECTOR, c.model_id, 2)),
        expect=expect_unknown_attributes,
    ),
    Case(
        "read several vectors",
        VECTORS,
        "get",
        200,
        lambda c: c.search.get(at(VECTORS, c.model_id), query_string={"ids": "3, 1,999,3"}),
        expect=expect_read_in_order,
    ),
    Case("delete a vector", VECTOR, "delete", 204, delete_stored),
    Case(
        "delete what is not there",
        VECTOR,
        "delete",
        204,
        lambda c: c.search.delete(at(VECTOR, c.model_id, 999)),
    ),
    Case(
        "vector ids of a range",
        VECTOR_IDS,
        "get",
        200,
        lambda c: c.search.get(at(VECTOR_IDS, c.model_id), query_string={"from": 0, "to": 10}),
        expect=expect_stored_ids,
    ),
    Case(
        "vector ids of a model never written",
        VECTOR_IDS,
        "get",
        200,
        lambda c: c.search.get(at(VECTOR_IDS, new_model_id()), query_string={"from": 0, "to": 10}),
        expect=expect_no_ids,
    ),
    Case(
        "neighbors of a range",
        NEIGHBORS,
        "post",
        200,
        lambda c: c.search.post(at(NEIGHBORS, c.model_id), json={"from": 0, "to": 10, "threshold": 1e-9}),
        expect=expect_every_stored_vector_scanned,
    ),
    Case(
        "search",
        SEARCH,
        "post",
        200,
        lambda c: c.search.post(at(SEARCH, c.model_id), json=query(c, k=3)),
        expect=expect_self_first,
    ),
    Case("search with a filter", SEARCH, "post", 200, search_filtered, expect=expect_only_matching),
    Case("openapi", "/v1/openapi.json", "get", 200, lambda c: c.search.get("/v1/openapi.json")),
    Case("healthz", "/healthz", "get", 200, lambda c: c.search.get("/healthz")),
    Case("readyz", "/readyz", "get", 200, lambda c: c.search.get("/readyz")),
    Case("metrics", "/metrics", "get", 200, lambda c: c.search.get("/metrics")),
    # 400
    Case(
        "invalid model_id",
        MODEL,
        "get",
        400,
        lambda c: c.search.get(at(MODEL, "-x")),
        "invalid-request",
        "model_id",
    ),
    Case(
        "upsert of no JSON",
        VECTORS,
        "put",
        400,
        lambda c: c.search.put(at(VECTORS, c.model_id), data="items", content_type="text/plain"),
        "invalid-request",
        "Content-Type: application/json",
    ),
    Case(
        "vector_id not a number",
        VECTOR,
        "get",
        400,
        lambda c: c.search.get(at(VECTOR, c.model_id, "abc")),
        "invalid-request",
        "vector id",
    ),
    Case(
        "delete of vector_id 0",
        VECTOR,
        "delete",
        400,
        lambda c: c.search.delete(at(VECTOR, c.model_id, 0)),
        "invalid-request",
        "vector id",
    ),
    Case(
        "read without ids",
        VECTORS,
        "get",
        400,
        lambda c: c.search.get(at(VECTORS, c.model_id)),
        "invalid-request",
        "ids is required",
    ),
    Case(
        "read of a non-ID",
        VECTORS,
        "get",
        400,
        lambda c: c.search.get(at(VECTORS, c.model_id), query_string={"ids": "1,x"}),
        "invalid-request",
        "vector id is a positive integer",
    ),
    Case(
        "read of more IDs than the limit",
        VECTORS,
        "get",
        400,
        lambda c: c.limited.get(at(VECTORS, c.model_id), query_string={"ids": "1,2,3"}),
        "invalid-request",
        "3 vector IDs in one read; the limit is 2",
    ),
    Case(
        "vector ids of an empty range",
        VECTOR_IDS,
        "get",
        400,
        lambda c: c.search.get(at(VECTOR_IDS, c.model_id), query_string={"from": 5, "to": 5}),
        "invalid-request",
        "to (5) must be greater than from (5)",
    ),
    Case(
        "neighbors at threshold 0",
        NEIGHBORS,
        "post",
        400,
        lambda c: c.search.post(at(NEIGHBORS, c.model_id), json={"from": 0, "to": 10, "threshold": 0}),
        "invalid-request",
        "threshold must be greater than 0 and at most 1, got 0",
    ),
    Case(
        "search with k 0",
        SEARCH,
        "post",
        400,
        lambda c: c.search.post(at(SEARCH, c.model_id), json=query(c, k=0)),
        "invalid-request",
        "k must be an integer from 1 to 100",
    ),
    # 404
    Case(
        "unknown model",
        MODEL,
        "get",
        404,
        lambda c: c.search.get(at(MODEL, new_model_id())),
        "model-not-found",
        "no vectors were ever stored",
    ),
    Case(
        "vector of an unknown model",
        VECTOR,
        "get",
        404,
        lambda c: c.search.get(at(VECTOR, new_model_id(), 1)),
        "model-not-found",
        "no vectors were ever stored",
    ),
    Case(
        "read of an unknown model",
        VECTORS,
        "get",
        404,
        lambda c: c.search.get(at(VECTORS, new_model_id()), query_string={"ids": "1"}),
        "model-not-found",
        "no vectors were ever stored",
    ),
    Case(
        "unknown vector",
        VECTOR,
        "get",
        404,
        lambda c: c.search.get(at(VECTOR, c.model_id, 999)),
        "vector-not-found",
        "no vector with id 999",
    ),
    Case(
        "neighbors of an unknown model",
        NEIGHBORS,
        "post",
        404,
        lambda c: c.search.post(at(NEIGHBORS, new_model_id()), json={"from": 0, "to": 10, "threshold": 0.5}),
        "model-not-found",
        "no vectors were ever stored",
    ),
    Case(
        "search of an unknown model",
        SEARCH,
        "post",
        404,
        lambda c: c.search.post(at(SEARCH, new_model_id()), json=query(c)),
        "model-not-found",
        "no vectors were ever stored",
    ),
    # 413
    Case(
        "too many items",
        VECTORS,
        "put",
        413,
        lambda c: c.limited.put(at(VECTORS, c.model_id), json={"items": [*ITEMS, {**ITEMS[0], "id": 9}]}),
        "batch-too-large",
        "4 items in one request; the limit is 3",
    ),
    Case(
        "upsert body too large",
        VECTORS,
        "put",
        413,
        lambda c: c.small_body.put(at(VECTORS, c.model_id), json={"items": ITEMS * 4}),
        "about:blank",
        "larger than 1024 bytes",
    ),
    Case(
        "too many query vectors",
        SEARCH,
        "post",
        413,
        lambda c: c.limited.post(at(SEARCH, c.model_id), json={"vectors": VECTORS_STORED.tolist()}),
        "batch-too-large",
        "3 query vectors in one request; the limit is 2",
    ),
    Case(
        "search body too large",
        SEARCH,
        "post",
        413,
        lambda c: c.small_body.post(at(SEARCH, c.model_id), json={"vectors": VECTORS_STORED.tolist() * 4}),
        "about:blank",
        "larger than 1024 bytes",
    ),
    # 422
    Case(
        "zero vector",
        VECTORS,
        "put",
        422,
        lambda c: c.search.put(at(VECTORS, c.model_id), json={"items": [{"id": 9, "vector": [0.0] * DIM}]}),
        "invalid-vector",
        "zero vector",
    ),
    Case(
        "query of another dimension",
        SEARCH,
        "post",
        422,
        lambda c: c.search.post(at(SEARCH, c.model_id), json={"vectors": [[1.0, 2.0]]}),
        "invalid-vector",
        f"dimension 2, but this model's vectors have dimension {DIM}",
    ),
    # 500
    Case("unplanned failure: models", MODELS, "get", 500, lambda c: c.broken.get(MODELS), "about:blank"),
    Case(
        "unplanned failure: a model",
        MODEL,
        "get",
        500,
        lambda c: c.broken.get(at(MODEL, c.model_id)),
        "about:blank",
    ),
    Case(
        "unplanned failure: upsert",
        VECTORS,
        "put",
        500,
        lambda c: c.broken.put(at(VECTORS, c.model_id), json={"items": ITEMS}),
        "about:blank",
    ),
    Case(
        "unplanned failure: get",
        VECTOR,
        "get",
        500,
        lambda c: c.broken.get(at(VECTOR, c.model_id, 1)),
        "about:blank",
    ),
    Case(
        "unplanned failure: read",
        VECTORS,
        "get",
        500,
        lambda c: c.broken.get(at(VECTORS, c.model_id), query_string={"ids": "1,2"}),
        "about:blank",
    ),
    Case(
        "unplanned failure: delete",
        VECTOR,
        "delete",
        500,
        lambda c: c.broken.delete(at(VECTOR, c.model_id, 1)),
        "about:blank",
    ),
    Case(
        "unplanned failure: vector ids",
        VECTOR_IDS,
        "get",
        500,
        lambda c: c.broken.get(at(VECTOR_IDS, c.model_id), query_string={"from": 0, "to": 10}),
        "about:blank",
    ),
    Case(
        "unplanned failure: neighbors",
        NEIGHBORS,
        "post",
        500,
        lambda c: c.broken.post(at(NEIGHBORS, c.model_id), json={"from": 0, "to": 10, "threshold": 0.5}),
        "about:blank",
    ),
    Case(
        "unplanned failure: search",
        SEARCH,
        "post",
        500,
        lambda c: c.broken.post(at(SEARCH, c.model_id), json=query(c)),
        "about:blank",
    ),
    Case(
        "unplanned failure: readyz", "/readyz", "get", 500, lambda c: c.broken.get("/readyz"), "about:blank"
    ),
    # 503
    Case(
        "milvus down: models",
        MODELS,
        "get",
        503,
        lambda c: c.down.get(MODELS),
        "milvus-unavailable",
        "Milvus",
    ),
    Case(
        "milvus down: a model",
        MODEL,
        "get",
        503,
        lambda c: c.down.get(at(MODEL, c.model_id)),
        "milvus-unavailable",
        "Milvus",
    ),
    Case(
        "milvus down: upsert",
        VECTORS,
        "put",
        503,
        lambda c: c.down.put(at(VECTORS, c.model_id), json={"items": ITEMS}),
        "milvus-unavailable",
        "Milvus",
    ),
    Case(
        "milvus down: get",
        VECTOR,
        "get",
        503,
        lambda c: c.down.get(at(VECTOR, c.model_id, 1)),
        "milvus-unavailable",
        "Milvus",
    ),
    Case(
        "milvus down: read",
        VECTORS,
        "get",
        503,
        lambda c: c.down.get(at(VECTORS, c.model_id), query_string={"ids": "1,2"}),
        "milvus-unavailable",
        "Milvus",
    ),
    Case(
        "milvus down: delete",
        VECTOR,
        "delete",
        503,
        lambda c: c.down.delete(at(VECTOR, c.model_id, 1)),
        "milvus-unavailable",
        "Milvus",
    ),
    Case(
        "milvus down: vector ids",
        VECTOR_IDS,
        "get",
        503,
        lambda c: c.down.get(at(VECTOR_IDS, c.model_id), query_string={"from": 0, "to": 10}),
        "milvus-unavailable",
        "Milvus",
    ),
    Case(
        "milvus down: neighbors",
        NEIGHBORS,
        "post",
        503,
        lambda c: c.down.post(at(NEIGHBORS, c.model_id), json={"from": 0, "to": 10, "threshold": 0.5}),
        "milvus-unavailable",
        "Milvus",
    ),
    Case(
        "milvus down: search",
        SEARCH,
        "post",
        503,
        lambda c: c.down.post(at(SEARCH, c.model_id), json=query(c)),
        "milvus-unavailable",
        "Milvus",
    ),
    # the collection map
    Case("start a map job", MAP_JOBS, "post", 202, start_map, expect=expect_running),
    Case(
        "start a map job while one runs", MAP_JOBS, "post", 409, start_map, "job-running", "already running"
    ),
    Case("the current map job", MAP_JOB, "get", 200, lambda c: c.search.get(at(MAP_JOB, mapped_model(c)))),
    Case("the finished map", MAP, "get", 200, finished_map, expect=expect_mapped),
    Case(
        "a map of too few vectors",
        MAP_JOBS,
        "post",
        422,
        lambda c: c.search.post(at(MAP_JOBS, c.model_id)),
        "too-few-vectors",
        "a map needs at least 20",
    ),
    Case(
        "a map job of an unknown model",
        MAP_JOBS,
        "post",
        404,
        lambda c: c.search.post(at(MAP_JOBS, new_model_id())),
        "model-not-found",
        "no vectors were ever stored",
    ),
    Case(
        "no map job yet",
        MAP_JOB,
        "get",
        404,
        lambda c: c.search.get(at(MAP_JOB, c.model_id)),
        "map-not-found",
        "no map job was ever started",
    ),
    Case(
        "no map yet",
        MAP,
        "get",
        404,
        lambda c: c.search.get(at(MAP, c.model_id)),
        "map-not-found",
        "start a map job",
    ),
    Case(
        "a map job of a bad model ID",
        MAP_JOBS,
        "post",
        400,
        lambda c: c.search.post(at(MAP_JOBS, "-bad")),
        "invalid-request",
    ),
    Case(
        "the map job of a bad model ID",
        MAP_JOB,
        "get",
        400,
        lambda c: c.search.get(at(MAP_JOB, "-bad")),
        "invalid-request",
    ),
    Case(
        "the map of a bad model ID",
        MAP,
        "get",
        400,
        lambda c: c.search.get(at(MAP, "-bad")),
        "invalid-request",
    ),
    Case(
        "milvus down: a map job",
        MAP_JOBS,
        "post",
        503,
        lambda c: c.down.post(at(MAP_JOBS, c.model_id)),
        "milvus-unavailable",
        "Milvus",
    ),
    Case(
        "milvus down: the map job",
        MAP_JOB,
        "get",
        503,
        lambda c: c.down.get(at(MAP_JOB, c.model_id)),
        "milvus-unavailable",
        "Milvus",
    ),
    Case(
        "milvus down: the map",
        MAP,
        "get",
        503,
        lambda c: c.down.get(at(MAP, c.model_id)),
        "milvus-unavailable",
        "Milvus",
    ),
    Case(
        "unplanned failure: a map job",
        MAP_JOBS,
        "post",
        500,
        lambda c: c.broken.post(at(MAP_JOBS, c.model_id)),
        "about:blank",
    ),
    Case(
        "unplanned failure: the map job",
        MAP_JOB,
        "get",
        500,
        lambda c: c.broken.get(at(MAP_JOB, c.model_id)),
        "about:blank",
    ),
    Case(
        "unplanned failure: the map",
        MAP,
        "get",
        500,
        lambda c: c.broken.get(at(MAP, c.model_id)),
        "about:blank",
    ),
    Case(
        "milvus down: readyz",
        "/readyz",
        "get",
        503,
        lambda c: c.down.get("/readyz"),
        "not-ready",
        "search is not ready (milvus: Milvus",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_answer_is_the_one_the_document_gives(clients: Clients, case: Case) -> None:
    response = case.send(clients)
    assert response.status_code == case.status, response.get_data(as_text=True)
    body = check(response, case.path, case.method)
    if case.problem_type is not None:
        want = case.problem_type if case.problem_type == "about:blank" else PROBLEM + case.problem_type
        assert body["type"] == want
        assert case.detail in body["detail"]
    if case.status == 500:
        assert "secret-ish" not in body["detail"], "a 500 must not show the failure's internals"
    if case.expect is not None:
        case.expect(clients, body)


def test_every_documented_answer_has_a_case() -> None:
    documented = {
        (path, method, status)
        for path, item in DOCUMENT["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
        for status in operation["responses"]
    }
    cased = {(case.path, case.method, str(case.status)) for case in CASES}
    assert cased - documented == set(), "cases of answers the document does not list"
    assert documented - NO_REAL_500 - cased == set(), "documented answers that no case produces"


def test_each_413_kind_the_document_names_has_a_case() -> None:
    kinds = {(case.path, case.problem_type) for case in CASES if case.status == 413}
    assert kinds == {
        (path, kind) for path in (VECTORS, SEARCH) for kind in ("batch-too-large", "about:blank")
    }


def test_a_broken_milvus_is_named_without_its_uri_in_readyz(clients: Clients) -> None:
    body = check(clients.down.get("/readyz"), "/readyz", "get")
    assert body["checks"]["milvus"].startswith("Milvus ")
    service: SearchService = clients.down.application.extensions["medsearch_search"]
    # Where Milvus is stays in the log: a caller (an admin of the gateway, too) sees only its name.
    assert service.settings.milvus_uri_redacted not in body["checks"]["milvus"]
    assert check(clients.down.get("/healthz"), "/healthz", "get") == {"status": "ok", "service": "search"}


def test_health_readiness_and_metrics(clients: Clients) -> None:
    client = clients.search
    assert check(client.get("/healthz"), "/healthz", "get") == {"status": "ok", "service": "search"}
    ready = check(client.get("/readyz"), "/readyz", "get")
    assert ready == {"status": "ready", "service": "search", "checks": {"milvus": "ok"}}
    assert b"http_requests_total" in check(client.get("/metrics"), "/metrics", "get")


def test_the_request_id_is_returned(clients: Clients) -> None:
    response = clients.search.get(at(MODEL, clients.model_id), headers={"X-Request-ID": "req-42.a:b"})
    check(response, MODEL, "get")
    assert response.headers["X-Request-ID"] == "req-42.a:b"


def test_unknown_path_and_wrong_method_are_the_problems_the_document_states(clients: Clients) -> None:
    client = clients.search
    unknown = client.get("/v2/models")
    assert unknown.status_code == 404
    assert_plain_problem(unknown)
    slash_in_model_id = client.get(f"/v1/models/{clients.model_id}/x/vectors/1")
    assert slash_in_model_id.status_code == 404
    assert_plain_problem(slash_in_model_id)
    wrong_method = client.post(at(VECTORS, clients.model_id), json={"items": ITEMS})
    assert wrong_method.status_code == 405 and "PUT" in wrong_method.headers["Allow"].split(", ")
    assert_plain_problem(wrong_method)
