"""Every kind of bad input gets a 4xx problem+json that says what was wrong, writes nothing, and the
service keeps serving.

Writes go both to a model that has vectors (its count must not change) and to a model that has none
(no collection may appear). Every test runs on Milvus Lite and on a Milvus server.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from medsearch_search.app import create_app
from medsearch_search.service import SearchService
from tests.search.conftest import new_model_id, unit_vectors, upsert
from tests.support.id_ranges import BAD_QUERY_RANGES, BAD_THRESHOLDS, range_rows_for

DIM = 4
STORED = unit_vectors(3, DIM, seed=3)
STORED_ITEMS: list[dict[str, Any]] = [
    {"id": i + 1, "vector": vector.tolist(), "attributes": {"dataset": "nih", "patient_id": f"p{i}"}}
    for i, vector in enumerate(STORED)
]
VECTOR = [0.5, -0.25, 1.0, 2.0]
MISSING = object()  # a member left out


def b64(values: list[float]) -> str:
    """A vector in the base64 form: little-endian float32."""
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()


@dataclass(frozen=True)
class Raw:
    """A body sent as these exact bytes, for what `json=` cannot say (NaN, broken JSON, other types)."""

    data: str | bytes
    content_type: str = "application/json"


@dataclass(frozen=True)
class Existing:
    client: FlaskClient
    model_id: str


@pytest.fixture(scope="module")
def existing(search: FlaskClient) -> Existing:
    """A model holding STORED, the one place bad writes could land."""
    model_id = new_model_id()
    response = upsert(search, model_id, STORED_ITEMS)
    assert response.status_code == 200, response.get_data(as_text=True)
    return Existing(search, model_id)


@pytest.fixture(scope="module")
def limited(existing: Existing) -> FlaskClient:
    """The same store behind small limits: 3 items, 2 query vectors, 1024 bytes of body."""
    service: SearchService = existing.client.application.extensions["medsearch_search"]
    # The store is shared: Milvus Lite allows one client per folder and process.
    settings = dataclasses.replace(service.settings, max_items=3, max_queries=2, max_request_bytes=1024)
    return create_app(settings, store=service.store).test_client()


def send(client: FlaskClient, method: str, url: str, body: Any) -> TestResponse:
    if isinstance(body, Raw):
        return client.open(url, method=method, data=body.data, content_type=body.content_type)
    return client.open(url, method=method, json=body)


def assert_refused(response: TestResponse, status: int, words: str) -> dict[str, Any]:
    """A problem+json of this status whose detail holds these words."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    problem: dict[str, Any] = response.json  # type: ignore[assignment]
    assert problem["status"] == status
    assert words in problem["detail"], problem["detail"]
    return problem


def count(client: FlaskClient, model_id: str) -> int:
    response = client.get(f"/v1/models/{model_id}")
    assert response.status_code == 200, response.get_data(as_text=True)
    number: int = response.json["count"]  # type: ignore[index]
    return number


def assert_no_model(client: FlaskClient, model_id: str) -> None:
    """No collection exists for this model_id: Milvus is asked, not a cache."""
    response = client.get(f"/v1/models/{quote(model_id, safe='')}")
    assert_refused(response, 404, f"no vectors were ever stored for model {model_id}")


def assert_not_listed(client: FlaskClient, model_id: str) -> None:
    """For a model_id the API cannot name: no collection of the service reads back as it."""
    listed = client.get("/v1/models").json
    assert listed is not None
    assert model_id not in [model["model_id"] for model in listed["models"]]


def assert_still_serving(existing: Existing, *, counted: bool = True) -> None:
    """The model answers (each stored vector is its own nearest) and, when counted, holds what it held."""
    client, model_id = existing.client, existing.model_id
    response = client.post(f"/v1/models/{model_id}/search", json={"vectors": STORED.tolist(), "k": 1})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert [hits[0]["id"] for hits in response.json["results"]] == [1, 2, 3]  # type: ignore[index]
    if counted:
        assert count(client, model_id) == len(STORED)


# -- upsert ------------------------------------------------------------------------------------------------


def item(**changes: Any) -> dict[str, Any]:
    """A valid item with these members changed (MISSING: left out)."""
    base: dict[str, Any] = {"id": 100, "vector": VECTOR, "attributes": {"dataset": "nih"}}
    merged = {**base, **changes}
    return {key: value for key, value in merged.items() if value is not MISSING}


def with_attributes(**attributes: Any) -> dict[str, Any]:
    return {"items": [item(attributes={"dataset": "nih", **attributes})]}


def items(*many: Any) -> dict[str, Any]:
    return {"items": list(many)}


def raw_vector(text: str) -> Raw:
    return Raw('{"items": [{"id": 100, "vector": ' + text + "}]}")


# (case, body, status, words in the detail, only for a model that has vectors)
UPSERT_CASES: list[tuple[str, Any, int, str, bool]] = [
    # the body
    ("not JSON", Raw('{"items": [{"id": 1,'), 400, "not valid JSON", False),
    ("empty body", Raw(""), 400, "not valid JSON", False),
    ("invalid UTF-8", Raw(b'{"items": []}\xff\xfe'), 400, "not valid JSON", False),
    (
        "text content type",
        Raw(json.dumps(items(item())), "text/plain"),
        400,
        "Content-Type: application/json",
        False,
    ),
    ("form content type", Raw("items=1", "application/x-www-form-urlencoded"), 400, "Content-Type", False),
    ("no content type", Raw(json.dumps(items(item())), ""), 400, "Content-Type: application/json", False),
    ("body a list", [item()], 400, "the body must be a JSON object with items", False),
    ("body a string", "items", 400, "the body must be a JSON object with items", False),
    ("body a number", 1, 400, "the body must be a JSON object with items", False),
    # items
    ("items missing", {}, 400, "items is missing", False),
    ("items misspelled", {"item": [item()]}, 400, "items is missing", False),
    ("items empty", {"items": []}, 400, "items is empty", False),
    ("items an object", {"items": item()}, 400, "items must be a list", False),
    ("items a string", {"items": "1,2"}, 400, "items must be a list", False),
    ("items null", {"items": None}, 400, "items must be a list, got null", False),
    ("item a number", items(1), 400, "items[0] must be an object", False),
    ("item a list", items([100, VECTOR]), 400, "items[0] must be an object", False),
    ("item null", items(None), 400, "items[0] must be an object", False),
    ("unknown item field", items(item(score=1.0)), 400, "items[0] must be an object with id, vector", False),
    ("second item bad", items(item(), item(id=101, extra=1)), 400, "items[1]", False),
    # id
    ("id missing", items(item(id=MISSING)), 400, "items[0].id must be a positive integer", False),
    ("id null", items(item(id=None)), 400, "items[0].id must be a positive integer", False),
    ("id 0", items(item(id=0)), 400, "items[0].id must be a positive integer", False),
    ("id negative", items(item(id=-5)), 400, "items[0].id must be a positive integer", False),
    ("id true", items(item(id=True)), 400, "items[0].id must be a positive integer", False),
    ("id a string", items(item(id="100")), 400, "items[0].id must be a positive integer", False),
    ("id a fraction", items(item(id=100.5)), 400, "items[0].id must be a positive integer", False),
    ("id a float", items(item(id=100.0)), 400, "items[0].id must be a positive integer", False),
    ("id over 2^63-1", items(item(id=2**63)), 400, "items[0].id must be a positive integer", False),
    ("id far over 2^63-1", items(item(id=10**30)), 400, "items[0].id must be a positive integer", False),
    ("duplicate ids", items(item(), item(id=7), item()), 400, "items repeat the id(s) [100]", False),
    # vector
    (
        "vector missing",
        items(item(vector=MISSING)),
        400,
        "vector #0 must be a non-empty list of numbers",
        False,
    ),
    ("vector null", items(item(vector=None)), 400, "vector #0 must be a non-empty list of numbers", False),
    ("vector empty", items(item(vector=[])), 400, "vector #0 must be a non-empty list of numbers", False),
    ("vector a string", items(item(vector="0.5,1")), 400, "vector #0 is not valid base64", False),
    ("base64 unpadded", items(item(vector=b64([1, 2, 3, 4])[:-2])), 400, "is not valid base64", False),
    ("base64 of 3 bytes", items(item(vector="AAAA")), 400, "3 bytes is not a whole number of float32", False),
    ("base64 empty", items(item(vector="")), 400, "0 bytes is not a whole number", False),
    ("base64 NaN", items(item(vector=b64([1, float("nan"), 1, 1]))), 422, "holds NaN or infinity", False),
    ("base64 infinity", items(item(vector=b64([1, 1, float("inf"), 1]))), 422, "holds NaN", False),
    ("base64 zero", items(item(vector=b64([0, 0, 0, 0]))), 422, "is a zero vector", False),
    (
        "base64 of another dimension",
        items(item(vector=b64([1, 2, 3]))),
        422,
        "dimension 3, but this model's vectors have dimension 4",
        True,
    ),
    ("base64 over Milvus's dimension", items(item(vector=b64([1.0] * 32769))), 422, "limit of 32768", False),
    ("vector an object", items(item(vector={"0": 1.0})), 400, "must be a non-empty list of numbers", False),
    (
        "vector of strings",
        items(item(vector=["0.5", "1", "2", "3"])),
        400,
        "vector #0 must hold only numbers",
        False,
    ),
    ("vector with a null", items(item(vector=[1.0, None, 1.0, 1.0])), 400, "must hold only numbers", False),
    (
        "vector of booleans",
        items(item(vector=[True, False, True, True])),
        400,
        "must hold only numbers",
        False,
    ),
    ("vector nested", items(item(vector=[VECTOR])), 400, "must hold only numbers", False),
    ("second vector bad", items(item(), item(id=101, vector=["x"] * DIM)), 400, "vector #1 must hold", False),
    (
        "dimensions differ",
        items(item(), item(id=101, vector=[1.0, 2.0, 3.0])),
        422,
        "different dimensions [3, 4]",
        False,
    ),
    (
        "wrong dimension",
        items(item(vector=[1.0, 2.0, 3.0])),
        422,
        "dimension 3, but this model's vectors have dimension 4",
        True,
    ),
    ("over Milvus's dimension", items(item(vector=[1.0] * 32769)), 422, "dimension 32769", False),
    ("NaN", raw_vector("[NaN, 1, 1, 1]"), 422, "vector #0 holds NaN or infinity", False),
    ("Infinity", raw_vector("[1, Infinity, 1, 1]"), 422, "holds NaN or infinity", False),
    ("-Infinity", raw_vector("[1, 1, -Infinity, 1]"), 422, "holds NaN or infinity", False),
    ("a float beyond double", raw_vector("[1, 1, 1, 1e400]"), 422, "holds NaN or infinity", False),
    (
        "NaN in the second item",
        Raw('{"items": [{"id": 100, "vector": [1, 1, 1, 1]}, {"id": 101, "vector": [1, 1, 1, NaN]}]}'),
        422,
        "vector #1 holds NaN or infinity",
        False,
    ),
    ("zero vector", items(item(vector=[0.0] * DIM)), 422, "vector #0 is a zero vector", False),
    ("integer zero vector", items(item(vector=[0] * DIM)), 422, "is a zero vector", False),
    # attributes
    (
        "attributes a string",
        items(item(attributes="nih")),
        400,
        "items[0].attributes must be an object",
        False,
    ),
    (
        "attributes a list",
        items(item(attributes=["nih"])),
        400,
        "items[0].attributes must be an object",
        False,
    ),
    ("attributes unknown field", with_attributes(diagnosis="x"), 400, "unknown field(s): diagnosis", False),
    ("dataset a number", with_attributes(dataset=1), 400, "attributes.dataset must be a string", False),
    (
        "patient_id a list",
        with_attributes(patient_id=["p1"]),
        400,
        "attributes.patient_id must be a string",
        False,
    ),
    (
        "view_position a boolean",
        with_attributes(view_position=True),
        400,
        "view_position must be a string",
        False,
    ),
    ("sex X", with_attributes(sex="X"), 400, "attributes.sex must be one of M, F, O", False),
    ("sex a word", with_attributes(sex="female"), 400, "attributes.sex must be one of M, F, O", False),
    ("sex a number", with_attributes(sex=1), 400, "attributes.sex must be a string", False),
    ("age a string", with_attributes(age="40"), 400, "attributes.age must be an integer", False),
    ("age a fraction", with_attributes(age=40.5), 400, "attributes.age must be an integer", False),
    ("age true", with_attributes(age=True), 400, "attributes.age must be an integer", False),
    ("age negative", with_attributes(age=-1), 400, "attributes.age must be between 0 and 130", False),
    ("age 131", with_attributes(age=131), 400, "attributes.age must be between 0 and 130", False),
    ("findings a string", with_attributes(findings="Mass"), 400, "findings must be a list of strings", False),
    ("finding a number", with_attributes(findings=["Mass", 3]), 400, "findings[1] must be a string", False),
    ("finding null", with_attributes(findings=[None]), 400, "findings[0] must be a string, got null", False),
    ("finding empty", with_attributes(findings=["  "]), 400, "findings[0] must not be empty", False),
    (
        "findings too long in all",
        with_attributes(findings=["🫁" * 255 + chr(0x1F600 + i) for i in range(32)]),
        400,
        "findings are too long in all",
        False,
    ),
    ("33 findings", with_attributes(findings=[f"f{i}" for i in range(33)]), 400, "limit is 32", False),
    ("dataset of 257 chars", with_attributes(dataset="d" * 257), 400, "longer than 256 characters", False),
    ("finding of 257 chars", with_attributes(findings=["f" * 257]), 400, "longer than 256 characters", False),
    ("empty patient_id", with_attributes(patient_id=""), 400, "patient_id must not be empty", False),
    (
        "NUL in patient_id",
        with_attributes(patient_id="p\x001"),
        400,
        "patient_id contains a control character",
        False,
    ),
    (
        "newline in dataset",
        with_attributes(dataset="a\nb"),
        400,
        "dataset contains a control character",
        False,
    ),
    ("DEL in a finding", with_attributes(findings=["Ma\x7fss"]), 400, "contains a control character", False),
    ("escape in view_position", with_attributes(view_position="P\x1bA"), 400, "control character", False),
]


@pytest.mark.parametrize(
    ("body", "status", "words", "existing_only"),
    [case[1:] for case in UPSERT_CASES],
    ids=[case[0] for case in UPSERT_CASES],
)
def test_bad_upsert_is_refused_and_writes_nothing(
    existing: Existing, body: Any, status: int, words: str, existing_only: bool
) -> None:
    client = existing.client
    assert_refused(send(client, "PUT", f"/v1/models/{existing.model_id}/vectors", body), status, words)
    assert_still_serving(existing)
    if not existing_only:
        fresh = new_model_id()
        assert_refused(send(client, "PUT", f"/v1/models/{fresh}/vectors", body), status, words)
        assert_no_model(client, fresh)


def test_more_items_than_the_limit_is_413_and_writes_nothing(
    existing: Existing, limited: FlaskClient
) -> None:
    body = items(*(item(id=100 + i) for i in range(4)))
    assert_refused(limited.put(f"/v1/models/{existing.model_id}/vectors", json=body), 413, "4 items")
    fresh = new_model_id()
    problem = assert_refused(limited.put(f"/v1/models/{fresh}/vectors", json=body), 413, "the limit is 3")
    assert problem["type"] == "urn:medsearch:problem:batch-too-large"
    assert_no_model(existing.client, fresh)
    assert_still_serving(existing)
    # The limit is the limit: three items are fine (stored again unchanged).
    assert (
        limited.put(f"/v1/models/{existing.model_id}/vectors", json=items(*STORED_ITEMS)).status_code == 200
    )
    assert_still_serving(existing)


def test_more_query_vectors_than_the_limit_is_413(existing: Existing, limited: FlaskClient) -> None:
    url = f"/v1/models/{existing.model_id}/search"
    problem = assert_refused(
        limited.post(url, json={"vectors": STORED.tolist(), "k": 1}),
        413,
        "3 query vectors in one request; the limit is 2",
    )
    assert problem["type"] == "urn:medsearch:problem:batch-too-large"
    assert limited.post(url, json={"vectors": STORED[:2].tolist(), "k": 1}).status_code == 200
    assert_still_serving(existing)


def test_a_body_over_the_size_limit_is_413_and_writes_nothing(
    existing: Existing, limited: FlaskClient
) -> None:
    big = items(item(vector=[0.123456789] * 200))
    assert len(json.dumps(big)) > 1024
    url = f"/v1/models/{existing.model_id}/vectors"
    problem = assert_refused(limited.put(url, json=big), 413, "The request is larger than 1024 bytes")
    assert problem["type"] == "about:blank"
    fresh = new_model_id()
    assert_refused(limited.put(f"/v1/models/{fresh}/vectors", json=big), 413, "larger than 1024 bytes")
    assert_no_model(existing.client, fresh)
    query = {"vectors": [[0.123456789] * DIM] * 40}
    assert_refused(limited.post(f"/v1/models/{existing.model_id}/search", json=query), 413, "1024 bytes")
    assert_still_serving(existing)


def test_deleting_a_vector_of_an_unknown_model_creates_no_model(existing: Existing) -> None:
    fresh = new_model_id()
    assert existing.client.delete(f"/v1/models/{fresh}/vectors/1").status_code == 204
    assert_no_model(existing.client, fresh)


# -- search ------------------------------------------------------------------------------------------------


def query(**body: Any) -> dict[str, Any]:
    return {"vectors": [STORED[0].tolist()], "k": 3, **body}


def filtered(**flt: Any) -> dict[str, Any]:
    return query(filter=flt)


STRING_LIST_FIELDS = ("dataset", "sex", "view_position", "patient_id", "exclude_patients")


def string_list_cases() -> list[tuple[str, Any, int, str]]:
    cases: list[tuple[str, Any, int, str]] = []
    for name in STRING_LIST_FIELDS:
        where = f"filter.{name}"
        value = "F" if name == "sex" else "x"
        cases += [
            (
                f"{name} a string",
                filtered(**{name: value}),
                400,
                f"{where} must be a list of strings, got a string",
            ),
            (
                f"{name} an object",
                filtered(**{name: {"in": [value]}}),
                400,
                f"{where} must be a list of strings",
            ),
            (f"{name} null", filtered(**{name: None}), 400, f"{where} must be a list of strings, got null"),
            (f"{name} empty", filtered(**{name: []}), 400, f"{where} is empty"),
            (f"{name} item a number", filtered(**{name: [value, 3]}), 400, f"{where}[1] must be a string"),
            (f"{name} item null", filtered(**{name: [None]}), 400, f"{where}[0] must be a string, got null"),
            (f"{name} item a list", filtered(**{name: [[value]]}), 400, f"{where}[0] must be a string"),
            (f"{name} item blank", filtered(**{name: [" "]}), 400, f"{where}[0] must not be empty"),
            (
                f"{name} 1001 items",
                filtered(**{name: [value] * 1001}),
                400,
                f"{where} has 1001 items; the limit is 1000",
            ),
            (f"{name} item of 257 chars", filtered(**{name: ["v" * 257]}), 400, "longer than 256 characters"),
            (
                f"{name} item with NUL",
                filtered(**{name: ["a\x00b"]}),
                400,
                f"{where}[0] contains a control character (NUL)",
            ),
        ]
    return cases


SEARCH_CASES: list[tuple[str, Any, int, str]] = [
    # the body
    ("not JSON", Raw('{"vectors": [[1, 2'), 400, "not valid JSON"),
    ("text content type", Raw(json.dumps(query()), "text/plain"), 400, "Content-Type: application/json"),
    ("body a list", [STORED[0].tolist()], 400, "the body must be a JSON object with vectors"),
    (
        "unknown field",
        query(limit=5),
        400,
        "unknown field(s): limit; known: vectors, k, filter, one_per_patient",
    ),
    ("vectors missing", {"k": 3}, 400, "vectors is missing"),
    ("vectors empty", query(vectors=[]), 400, "vectors is empty"),
    (
        "vectors one vector",
        query(vectors=STORED[0].tolist()),
        400,
        "vectors #0 must be a non-empty list of numbers",
    ),
    ("vectors a string", query(vectors="1,2,3,4"), 400, "vectors must be a list"),
    (
        "query vector of strings",
        query(vectors=[["1", "2", "3", "4"]]),
        400,
        "vectors #0 must hold only numbers",
    ),
    ("query vector of booleans", query(vectors=[[True] * DIM]), 400, "vectors #0 must hold only numbers"),
    ("query vector empty", query(vectors=[[]]), 400, "vectors #0 must be a non-empty list"),
    ("query base64 broken", query(vectors=["not base64!"]), 400, "vectors #0 is not valid base64"),
    ("query base64 of 6 bytes", query(vectors=["AAAAAAAA"]), 400, "6 bytes is not a whole number"),
    ("query base64 NaN", query(vectors=[b64([1, 1, 1, float("nan")])]), 422, "vectors #0 holds NaN"),
    (
        "query base64 of another dimension",
        query(vectors=[b64([1, 2])]),
        422,
        "dimension 2, but this model's vectors have dimension 4",
    ),
    (
        "query of another dimension",
        query(vectors=[[1.0, 2.0]]),
        422,
        "dimension 2, but this model's vectors have dimension 4",
    ),
    ("queries of two dimensions", query(vectors=[VECTOR, [1.0, 2.0]]), 422, "different dimensions [2, 4]"),
    ("query NaN", Raw('{"vectors": [[1, NaN, 1, 1]]}'), 422, "vectors #0 holds NaN or infinity"),
    (
        "query Infinity",
        Raw('{"vectors": [[1, 1, 1, 1], [Infinity, 1, 1, 1]]}'),
        422,
        "vectors #1 holds NaN or infinity",
    ),
    ("query zero", query(vectors=[[0.0] * DIM]), 422, "vectors #0 is a zero vector"),
    # k
    ("k 0", query(k=0), 400, "k must be an integer from 1 to 100, got 0"),
    ("k 101", query(k=101), 400, "k must be an integer from 1 to 100, got 101"),
    ("k negative", query(k=-1), 400, "k must be an integer from 1 to 100"),
    ("k a string", query(k="10"), 400, 'k must be an integer from 1 to 100, got "10"'),
    ("k a fraction", query(k=1.5), 400, "k must be an integer from 1 to 100, got 1.5"),
    ("k a float", query(k=10.0), 400, "k must be an integer from 1 to 100, got 10.0"),
    ("k true", query(k=True), 400, "k must be an integer from 1 to 100, got true"),
    ("k null", query(k=None), 400, "k must be an integer from 1 to 100, got null"),
    # one_per_patient
    (
        "one_per_patient a string",
        query(one_per_patient="yes"),
        400,
        'one_per_patient must be true or false, got "yes"',
    ),
    ("one_per_patient 1", query(one_per_patient=1), 400, "one_per_patient must be true or false, got 1"),
    (
        "one_per_patient null",
        query(one_per_patient=None),
        400,
        "one_per_patient must be true or false, got null",
    ),
    # filter
    ("filter a list", query(filter=[{"dataset": ["nih"]}]), 400, "filter must be an object, got a list"),
    ("filter a string", query(filter='dataset == "nih"'), 400, "filter must be an object, got a string"),
    ("filter a number", query(filter=1), 400, "filter must be an object"),
    ("unknown filter field", filtered(diagnosis=["x"]), 400, "filter has unknown field(s): 'diagnosis'"),
    ("raw expression as a field", filtered(**{"id > 0": True}), 400, "filter has unknown field(s): 'id > 0'"),
    *string_list_cases(),
    ("sex X", filtered(sex=["F", "X"]), 400, "filter.sex values must be among M, F, O, got 'X'"),
    # age
    ("age a number", filtered(age=40), 400, "filter.age must be an object"),
    ("age a list", filtered(age=[40, 70]), 400, "filter.age must be an object"),
    ("age a string", filtered(age="40-70"), 400, "filter.age must be an object"),
    ("age empty", filtered(age={}), 400, "filter.age must be an object"),
    ("age unknown key", filtered(age={"min": 40, "from": 50}), 400, 'with "min" and/or "max"'),
    (
        "age min > max",
        filtered(age={"min": 70, "max": 40}),
        400,
        "filter.age.min (70) is greater than filter.age.max (40)",
    ),
    ("age min a string", filtered(age={"min": "40"}), 400, "filter.age.min must be an integer, got a string"),
    (
        "age max a fraction",
        filtered(age={"max": 40.5}),
        400,
        "filter.age.max must be an integer, got a number",
    ),
    ("age min true", filtered(age={"min": True}), 400, "filter.age.min must be an integer, got a boolean"),
    ("age min negative", filtered(age={"min": -1}), 400, "filter.age.min must be between 0 and 130, got -1"),
    ("age max 131", filtered(age={"max": 131}), 400, "filter.age.max must be between 0 and 130, got 131"),
    # findings
    ("findings a list", filtered(findings=["Mass"]), 400, "filter.findings must be an object"),
    ("findings a string", filtered(findings="Mass"), 400, "filter.findings must be an object"),
    ("findings empty", filtered(findings={}), 400, "filter.findings must be an object"),
    ("findings unknown key", filtered(findings={"some": ["Mass"]}), 400, '"any", "all" and/or "none"'),
    *(
        case
        for key in ("any", "all", "none")
        for case in [
            (
                f"findings.{key} a string",
                filtered(findings={key: "Mass"}),
                400,
                f"filter.findings.{key} must be a list of strings",
            ),
            (
                f"findings.{key} null",
                filtered(findings={key: None}),
                400,
                f"filter.findings.{key} must be a list of strings, got null",
            ),
            (f"findings.{key} empty", filtered(findings={key: []}), 400, f"filter.findings.{key} is empty"),
            (
                f"findings.{key} item a number",
                filtered(findings={key: [1]}),
                400,
                f"filter.findings.{key}[0] must be a string",
            ),
            (
                f"findings.{key} item with NUL",
                filtered(findings={key: ["M\x00"]}),
                400,
                "contains a control character",
            ),
        ]
    ),
    # exclude_ids
    (
        "exclude_ids a number",
        filtered(exclude_ids=1),
        400,
        "filter.exclude_ids must be a non-empty list of image IDs",
    ),
    ("exclude_ids null", filtered(exclude_ids=None), 400, "filter.exclude_ids must be a non-empty list"),
    ("exclude_ids empty", filtered(exclude_ids=[]), 400, "filter.exclude_ids must be a non-empty list"),
    (
        "exclude_ids item a string",
        filtered(exclude_ids=["1"]),
        400,
        "filter.exclude_ids[0] must be an integer, got a string",
    ),
    (
        "exclude_ids item true",
        filtered(exclude_ids=[2, True]),
        400,
        "filter.exclude_ids[1] must be an integer, got a boolean",
    ),
    ("exclude_ids item 0", filtered(exclude_ids=[0]), 400, "filter.exclude_ids[0] must be between 1 and"),
    (
        "exclude_ids item over 2^63-1",
        filtered(exclude_ids=[2**63]),
        400,
        "filter.exclude_ids[0] must be between 1 and",
    ),
    (
        "exclude_ids 1001 items",
        filtered(exclude_ids=list(range(1, 1002))),
        400,
        "filter.exclude_ids has 1001 items; the limit is 1000",
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "words"), [case[1:] for case in SEARCH_CASES], ids=[case[0] for case in SEARCH_CASES]
)
def test_bad_search_is_refused(existing: Existing, body: Any, status: int, words: str) -> None:
    response = send(existing.client, "POST", f"/v1/models/{existing.model_id}/search", body)
    assert_refused(response, status, words)
    assert_still_serving(existing, counted=False)  # a search writes nothing: no count to compare


def test_search_of_an_unknown_model_is_404_and_creates_nothing(existing: Existing) -> None:
    fresh = new_model_id()
    response = existing.client.post(f"/v1/models/{fresh}/search", json=query())
    problem = assert_refused(response, 404, f"no vectors were ever stored for model {fresh}")
    assert problem["type"] == "urn:medsearch:problem:model-not-found"
    assert_refused(existing.client.get(f"/v1/models/{fresh}"), 404, fresh)
    assert_refused(existing.client.get(f"/v1/models/{fresh}/vectors/1"), 404, fresh)
    assert_no_model(existing.client, fresh)


# -- model_id and vector_id in the path ------------------------------------------------------------------


BAD_MODEL_IDS = [
    "bad id",
    "-x",
    ".x",
    "_x",
    "..",
    "x" * 129,
    "x" * 200,
    "modèle",
    "a;drop",
    'a"b',
    "a*",
]


@pytest.mark.parametrize("model_id", BAD_MODEL_IDS, ids=lambda m: repr(m[:20]))
def test_an_invalid_model_id_is_400_everywhere_and_creates_nothing(existing: Existing, model_id: str) -> None:
    client = existing.client
    at = f"/v1/models/{quote(model_id, safe='')}"
    words = "a model_id is 1-128 of A-Z a-z 0-9 . _ - starting with a letter or digit"
    assert_refused(client.get(at), 400, words)
    assert_refused(client.put(f"{at}/vectors", json=items(item())), 400, words)
    assert_refused(client.post(f"{at}/search", json=query()), 400, words)
    assert_refused(client.get(f"{at}/vectors/1"), 400, words)
    assert_refused(client.delete(f"{at}/vectors/1"), 400, words)
    assert_refused(client.post(f"{at}/neighbors", json=NEIGHBORS), 400, words)
    assert_not_listed(client, model_id)
    assert_still_serving(existing)


def test_a_model_id_too_long_for_a_milvus_name_is_400(existing: Existing) -> None:
    # 128 characters fit the model_id's pattern, but each "_" takes two in the collection's name.
    model_id = "a" + "_" * 127
    assert_refused(existing.client.get(f"/v1/models/{model_id}"), 400, "too long to name a Milvus collection")
    response = existing.client.put(f"/v1/models/{model_id}/vectors", json=items(item()))
    assert_refused(response, 400, "too long to name a Milvus collection")
    assert_not_listed(existing.client, model_id)
    # The longest plain model_id is valid: unknown, not malformed.
    assert_refused(existing.client.get(f"/v1/models/{'a' * 128}"), 404, "no vectors were ever stored")


def test_a_model_id_holding_a_slash_is_no_route(existing: Existing) -> None:
    # "/" (or %2F, which WSGI decodes first) ends the path segment: no route has such a model_id.
    client, fresh = existing.client, new_model_id()
    for response in (
        client.get(f"/v1/models/../{fresh}"),
        client.get(f"/v1/models/..%2F{fresh}"),
        client.put(f"/v1/models/../{fresh}/vectors", json=items(item())),
        client.put(f"/v1/models/{fresh}/x/vectors", json=items(item())),
        client.post(f"/v1/models/{fresh}%2Fx/search", json=query()),
    ):
        problem = assert_refused(response, 404, "The requested URL was not found")
        assert problem["type"] == "about:blank"
    assert_no_model(client, fresh)
    assert_still_serving(existing)


BAD_VECTOR_IDS = ["abc", "0", "-1", "+1", "1.5", "1e3", "0x10", "%201", "1%20", str(2**63), "9" * 30]


@pytest.mark.parametrize("vector_id", BAD_VECTOR_IDS)
def test_an_invalid_vector_id_is_400(existing: Existing, vector_id: str) -> None:
    url = f"/v1/models/{existing.model_id}/vectors/{vector_id}"
    words = "a vector id is a positive integer (the catalog's image id)"
    problem = assert_refused(existing.client.get(url), 400, words)
    assert problem["type"] == "urn:medsearch:problem:invalid-request"
    assert_refused(existing.client.delete(url), 400, words)
    assert_still_serving(existing)


def test_the_largest_vector_id_is_valid_and_missing(existing: Existing) -> None:
    url = f"/v1/models/{existing.model_id}/vectors/{2**63 - 1}"
    problem = assert_refused(existing.client.get(url), 404, f"has no vector with id {2**63 - 1}")
    assert problem["type"] == "urn:medsearch:problem:vector-not-found"
    assert existing.client.delete(url).status_code == 204
    assert_still_serving(existing)


def test_get_of_a_missing_vector_is_404(existing: Existing) -> None:
    url = f"/v1/models/{existing.model_id}/vectors/12345"
    problem = assert_refused(
        existing.client.get(url), 404, f"model {existing.model_id} has no vector with id 12345"
    )
    assert problem["type"] == "urn:medsearch:problem:vector-not-found"


@pytest.mark.parametrize(("params", "words"), BAD_QUERY_RANGES, ids=lambda v: repr(v)[:40])
def test_a_bad_range_of_vector_ids_is_400(existing: Existing, params: dict[str, str], words: str) -> None:
    response = existing.client.get(f"/v1/models/{existing.model_id}/vector-ids", query_string=params)
    problem = assert_refused(response, 400, words)
    assert problem["type"] == "urn:medsearch:problem:invalid-request"
    assert_still_serving(existing)


def test_the_widest_range_of_vector_ids_lists_them_all(existing: Existing) -> None:
    response = existing.client.get(
        f"/v1/models/{existing.model_id}/vector-ids", query_string={"from": 0, "to": 16_000}
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json == {"ids": [1, 2, 3]}
    at_the_top = {"from": 2**63 - 2, "to": 2**63 - 1}
    assert existing.client.get(
        f"/v1/models/{existing.model_id}/vector-ids", query_string=at_the_top
    ).json == {"ids": []}
    bad_model = existing.client.get("/v1/models/-x/vector-ids", query_string={"from": 0, "to": 5})
    assert_refused(bad_model, 400, "a model_id is 1-128 of")


# -- neighbors (the near-duplicate scan) ------------------------------------------------------------------

NEIGHBORS = {"from": 0, "to": 10, "threshold": 0.5}
BAD_NEIGHBORS: list[tuple[Any, str]] = [
    *(
        ({**body, "threshold": 0.5} if isinstance(body, dict) else body, words)
        for body, words in range_rows_for({"threshold", "k"})
    ),
    *(({**NEIGHBORS, "threshold": value}, words) for value, words in BAD_THRESHOLDS),
    ({"from": 0, "to": 10}, "threshold must be a number greater than 0 and at most 1, got null"),
    ({**NEIGHBORS, "k": 0}, "k must be between 1 and 50, got 0"),
    ({**NEIGHBORS, "k": 51}, "k must be between 1 and 50, got 51"),
    ({**NEIGHBORS, "k": "3"}, 'k must be an integer, got a string "3"'),
    ({**NEIGHBORS, "k": 3.0}, "k must be an integer, got a number"),
    ({**NEIGHBORS, "filter": {}}, "unknown field(s): filter; known: from, to, threshold, k"),
    (
        Raw('{"from": 0, "to": 10, "threshold": NaN}'),
        "threshold must be greater than 0 and at most 1, got nan",
    ),
    (Raw("{"), "the body is not valid JSON"),
    (Raw("from=0&to=10", "application/x-www-form-urlencoded"), "Content-Type: application/json"),
]


@pytest.mark.parametrize(("body", "words"), BAD_NEIGHBORS, ids=lambda v: repr(v)[:40])
def test_a_bad_neighbors_request_is_400_and_names_what_is_wrong(
    existing: Existing, body: Any, words: str
) -> None:
    response = send(existing.client, "POST", f"/v1/models/{existing.model_id}/neighbors", body)
    problem = assert_refused(response, 400, words)
    assert problem["type"] == "urn:medsearch:problem:invalid-request"
    assert_still_serving(existing)


def test_neighbors_of_an_unknown_model_is_404_and_creates_nothing(existing: Existing) -> None:
    fresh = new_model_id()
    response = existing.client.post(f"/v1/models/{fresh}/neighbors", json=NEIGHBORS)
    assert_refused(response, 404, f"no vectors were ever stored for model {fresh}")
    assert_no_model(existing.client, fresh)


def test_the_widest_range_of_neighbors_scans_every_vector(existing: Existing) -> None:
    """Stored vectors 1-3, more than one chunk of query vectors (the limited app reads 2 at a time)."""
    widest = {"from": 0, "to": 16_000, "threshold": 1e-9, "k": 50}
    response = existing.client.post(f"/v1/models/{existing.model_id}/neighbors", json=widest)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json is not None and response.json["vectors"] == 3
    at_the_top = {"from": 2**63 - 2, "to": 2**63 - 1, "threshold": 1}
    top = existing.client.post(f"/v1/models/{existing.model_id}/neighbors", json=at_the_top)
    assert top.json == {"pairs": [], "vectors": 0}


def test_neighbors_read_in_chunks_of_max_queries_find_the_same_pairs(
    existing: Existing, limited: FlaskClient
) -> None:
    body = {"from": 0, "to": 100, "threshold": 1e-9, "k": 2}
    whole = existing.client.post(f"/v1/models/{existing.model_id}/neighbors", json=body)
    chunked = limited.post(f"/v1/models/{existing.model_id}/neighbors", json=body)
    assert whole.status_code == chunked.status_code == 200, chunked.get_data(as_text=True)
    assert whole.json == chunked.json


# -- edge cases that once failed ----------------------------------------------------------------------------


def test_a_superscript_digit_as_vector_id_is_400(existing: Existing) -> None:
    response = existing.client.get(f"/v1/models/{existing.model_id}/vectors/{quote('²')}")
    assert_refused(response, 400, "a vector id is a positive integer")


def test_an_arabic_indic_digit_as_vector_id_is_400(existing: Existing) -> None:
    response = existing.client.get(f"/v1/models/{existing.model_id}/vectors/{quote('١')}")
    assert_refused(response, 400, "a vector id is a positive integer")


def test_an_integer_too_large_for_a_double_in_a_vector_is_422(existing: Existing) -> None:
    body = raw_vector("[1, 1, 1, 1" + "0" * 400 + "]")
    response = send(existing.client, "PUT", f"/v1/models/{existing.model_id}/vectors", body)
    assert_refused(response, 422, "vector #0")
    assert_still_serving(existing)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_a_vector_whose_norm_overflows_searches_like_its_direction(existing: Existing) -> None:
    url = f"/v1/models/{existing.model_id}/search"
    direction = np.asarray(STORED[1], dtype=np.float64)
    huge = existing.client.post(url, json={"vectors": [(direction * 1e300).tolist()], "k": 3})
    plain = existing.client.post(url, json={"vectors": [direction.tolist()], "k": 3})
    assert plain.status_code == 200 and plain.json is not None
    if huge.status_code != 422:
        assert huge.status_code == 200 and huge.json is not None
        assert huge.json["results"][0][0]["id"] == 2
        assert huge.json["results"][0][0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_json_nested_too_deep_is_400(existing: Existing) -> None:
    body = Raw("[" * 100_000 + "]" * 100_000)
    response = send(existing.client, "PUT", f"/v1/models/{existing.model_id}/vectors", body)
    assert_refused(response, 400, "JSON")
    assert_still_serving(existing)


def test_an_unknown_member_beside_items_is_400(existing: Existing) -> None:
    # Should it be accepted, it only stores item 1 again, unchanged.
    body = {"items": [STORED_ITEMS[0]], "mode": "insert"}
    response = send(existing.client, "PUT", f"/v1/models/{existing.model_id}/vectors", body)
    assert_refused(response, 400, "mode")
    assert_still_serving(existing)


def test_a_patient_id_of_256_four_byte_characters_is_stored(
    existing: Existing,
) -> None:
    fresh, patient = new_model_id(), "🫁" * 256  # 256 characters, the limit; 1024 bytes
    response = upsert(
        existing.client, fresh, [{"id": 1, "vector": VECTOR, "attributes": {"patient_id": patient}}]
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    stored = existing.client.get(f"/v1/models/{fresh}/vectors/1").json
    assert stored is not None and stored["attributes"]["patient_id"] == patient
