"""Steered search and similarity maps through the gateway, on the real stack, every answer
checked against the OpenAPI document.

- Relevance feedback: the query vector is Rocchio's (exploring.py); the scores the gateway
  returns are the cosine of that vector with each result's stored vector, recomputed here from
  the search service's own vectors; marked images never come back.
- Search by region: a region of an upload or of a stored image is embedded as a whole image.
- Similarity maps: each map sums to the score the search gave that result.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pytest
import requests
from flask.testing import FlaskClient
from numpy.typing import NDArray
from PIL import Image
from werkzeug.test import TestResponse

from medsearch_client.client import GatewayClient
from medsearch_common.vectors import unpack_vector
from medsearch_gateway.app import create_app
from medsearch_gateway.exploring import MAX_EXAMPLES, NEGATIVE_WEIGHT, POSITIVE_WEIGHT, rocchio
from tests.gateway.conftest import HTTP_TIMEOUT_S, Indexed, Stack, medsearch
from tests.gateway.test_openapi import OPENAPI, UNKNOWN_ID, fresh_png, gateway_settings, problem, signed_in

pytestmark = pytest.mark.integration

SEARCH = "/api/v1/search"
MAPS = "/api/v1/similarity-maps"


@pytest.fixture(scope="module")
def gateway(stack: Stack, indexed: list[Indexed]) -> FlaskClient:
    return signed_in(create_app(gateway_settings(stack.urls)).test_client(), stack)


def post(client: FlaskClient, path: str, upload: bytes | None = None, **fields: Any) -> TestResponse:
    data: dict[str, Any] = {name: str(value) for name, value in fields.items()}
    if upload is not None:
        data["image"] = (io.BytesIO(upload), "upload")
    return client.post(path, data=data, content_type="multipart/form-data")


def results(response: TestResponse, path: str = SEARCH) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.get_data(as_text=True)
    body: dict[str, Any] = OPENAPI.check(response, path, "post")
    found: list[dict[str, Any]] = body["results"]
    return found


def stored_vector(stack: Stack, model_id: str, image_id: int) -> NDArray[np.float32]:
    answer = requests.get(
        f"{stack.urls['search']}/v1/models/{model_id}/vectors/{image_id}", timeout=HTTP_TIMEOUT_S
    )
    assert answer.status_code == 200, answer.text
    vector = answer.json()["vector"]
    packed = vector if isinstance(vector, str) else None
    if packed is not None:
        return np.frombuffer(unpack_vector(packed), dtype="<f4")
    return np.asarray(vector, dtype=np.float32)


def model_of(client: FlaskClient) -> str:
    model_id: str = client.get("/api/v1/stats").json["model"]["model_id"]  # type: ignore[index]
    return model_id


def test_rocchio_weights_and_normalization() -> None:
    q, p, n = np.eye(3, dtype=np.float32)
    steered = rocchio(q, [p], [n])
    expected = np.array([1.0, POSITIVE_WEIGHT, -NEGATIVE_WEIGHT])
    assert np.allclose(steered, expected / np.linalg.norm(expected), atol=1e-6)
    assert np.allclose(rocchio(None, [p, q], []), np.array([1, 1, 0]) / np.sqrt(2), atol=1e-6)


def test_marked_images_steer_the_query_and_never_come_back(
    gateway: FlaskClient, stack: Stack, indexed: list[Indexed]
) -> None:
    query = indexed[0]
    plain = results(post(gateway, SEARCH, query_id=query.image_id, k=10))
    assert query.image_id not in [hit["image"]["id"] for hit in plain]
    liked, disliked = plain[0]["image"]["id"], plain[1]["image"]["id"]
    steered_answer = post(gateway, SEARCH, query_id=query.image_id, positive=liked, negative=disliked, k=10)
    steered = results(steered_answer)
    assert steered_answer.json["query"] == {  # type: ignore[index]
        "image_id": query.image_id,
        "region": None,
        "positive": [liked],
        "negative": [disliked],
    }
    ids = [hit["image"]["id"] for hit in steered]
    assert not {query.image_id, liked, disliked} & set(ids) and len(ids) == 10
    model_id = model_of(gateway)
    vector = rocchio(
        stored_vector(stack, model_id, query.image_id),
        [stored_vector(stack, model_id, liked)],
        [stored_vector(stack, model_id, disliked)],
    )
    for hit in steered[:3]:
        expected = float(vector @ stored_vector(stack, model_id, hit["image"]["id"]))
        assert hit["score"] == pytest.approx(expected, abs=1e-4)
    # Refined again, with more marks: still none of them back.
    again = results(
        post(gateway, SEARCH, query_id=query.image_id, positive=f"{liked},{ids[0]}", negative=disliked)
    )
    assert not {query.image_id, liked, disliked, ids[0]} & {hit["image"]["id"] for hit in again}


def test_positives_alone_are_a_query_without_an_upload(gateway: FlaskClient, indexed: list[Indexed]) -> None:
    liked = [indexed[3].image_id, indexed[4].image_id]
    form = gateway.post(SEARCH, data={"positive": ",".join(map(str, liked)), "k": "5"})
    found = results(form)
    assert len(found) == 5 and not set(liked) & {hit["image"]["id"] for hit in found}


def test_an_upload_with_marks_is_steered_too(gateway: FlaskClient, indexed: list[Indexed]) -> None:
    upload = indexed[5].path.read_bytes()
    plain = results(post(gateway, SEARCH, upload, k=5))
    assert plain[0]["image"]["id"] == indexed[5].image_id  # itself, first
    steered = results(post(gateway, SEARCH, upload, negative=indexed[5].image_id, k=5))
    assert indexed[5].image_id not in {hit["image"]["id"] for hit in steered}


def test_a_region_of_an_upload_or_a_stored_image_is_searched_as_an_image(
    gateway: FlaskClient, indexed: list[Indexed]
) -> None:
    item = indexed[6]
    data = item.path.read_bytes()
    box = (200, 150, 600, 550)
    crop = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("L").crop(box).save(crop, format="PNG")
    by_crop = results(post(gateway, SEARCH, crop.getvalue(), k=5))
    region = ",".join(map(str, box))
    by_region = post(gateway, SEARCH, data, region=region, k=5)
    assert by_region.json["query"]["region"] == list(box)  # type: ignore[index]
    by_stored_region = results(post(gateway, SEARCH, query_id=item.image_id, region=region, k=5))
    crop_scores = [(hit["image"]["id"], round(hit["score"], 4)) for hit in by_crop]
    assert [(hit["image"]["id"], round(hit["score"], 4)) for hit in results(by_region)] == crop_scores
    # A stored query leaves itself out; otherwise the same ranking.
    assert [hit["image"]["id"] for hit in by_stored_region] == [
        hit_id for hit_id, _ in crop_scores if hit_id != item.image_id
    ][: len(by_stored_region)]


def test_maps_sum_to_the_scores_of_the_search(gateway: FlaskClient, indexed: list[Indexed]) -> None:
    query = indexed[0]
    found = results(post(gateway, SEARCH, query_id=query.image_id, k=4))
    ids = [hit["image"]["id"] for hit in found]
    answer = post(gateway, MAPS, query_id=query.image_id, result_id=",".join(map(str, ids)))
    assert answer.status_code == 200, answer.get_data(as_text=True)
    body = OPENAPI.check(answer, MAPS, "post")
    assert [item["image_id"] for item in body["maps"]] == ids and body["errors"] == []
    for hit, item in zip(found, body["maps"], strict=True):
        assert item["score"] == pytest.approx(hit["score"], abs=1e-4)
        assert np.sum(item["query_map"]) == pytest.approx(hit["score"], abs=1e-4)
        assert np.sum(item["result_map"]) == pytest.approx(hit["score"], abs=1e-4)
    assert body["query"]["image_id"] == query.image_id and len(body["query"]["extent"]) == 4


def test_maps_of_an_uploaded_region_and_a_missing_result(
    gateway: FlaskClient, indexed: list[Indexed]
) -> None:
    answer = post(
        gateway,
        MAPS,
        indexed[1].path.read_bytes(),
        region="100,100,400,500",
        result_id=f"{indexed[2].image_id},{UNKNOWN_ID}",
    )
    assert answer.status_code == 200, answer.get_data(as_text=True)
    body = OPENAPI.check(answer, MAPS, "post")
    assert [item["image_id"] for item in body["maps"]] == [indexed[2].image_id]
    assert body["errors"] == [
        {"image_id": UNKNOWN_ID, "status": 404, "detail": f"image {UNKNOWN_ID} does not exist"}
    ]
    assert body["query"]["region"] == [100, 100, 400, 500]
    left, top, right, bottom = body["query"]["extent"]
    assert 0 < left < right < 1 and top < bottom


@pytest.mark.parametrize(
    ("fields", "status", "kind", "words"),
    [
        (
            {"query_id": "{a}", "positive": "{b}", "negative": "{b}"},
            400,
            "invalid-request",
            "both positive and negative",
        ),
        ({"query_id": "{a}", "positive": "{a}"}, 400, "invalid-request", "is the query"),
        (
            {"positive": ",".join(str(i) for i in range(1, MAX_EXAMPLES + 2))},
            400,
            "invalid-request",
            f"more than {MAX_EXAMPLES}",
        ),
        (
            {"query_id": "{a}", "positive": str(UNKNOWN_ID)},
            422,
            "example-not-found",
            f"positive image {UNKNOWN_ID} is not",
        ),
        ({"query_id": "{a}", "negative": "x1"}, 400, "invalid-request", "negative image ID"),
        ({"k": "5"}, 400, "invalid-request", "or at least one positive image ID"),
        (
            {"region": "0,0,300,300", "positive": "{b}"},
            400,
            "invalid-request",
            "a region is of the query image",
        ),
        ({"query_id": "{a}", "region": "300,300,300,500"}, 400, "invalid-request", "no area"),
        ({"query_id": "{a}", "region": "1,2,3"}, 400, "invalid-request", "four whole numbers"),
        ({"query_id": "{a}", "region": "900,900,1200,1200"}, 422, "image-rejected", "not inside"),
        ({"query_id": "{a}", "region": "0,0,40,300"}, 422, "image-rejected", "at least 64 px"),
        ({"query_id": str(UNKNOWN_ID)}, 404, "image-not-found", str(UNKNOWN_ID)),
        (
            {"positive": "{b}", "negative": f"{{a}},{UNKNOWN_ID}"},
            422,
            "example-not-found",
            f"negative image {UNKNOWN_ID} is not",
        ),
        # One read fetches the query's vector and the marks': the query's absence is told first.
        ({"query_id": str(UNKNOWN_ID), "positive": "{b}"}, 404, "image-not-found", str(UNKNOWN_ID)),
    ],
)
def test_a_bad_steered_search_is_a_problem_that_says_what_is_wrong(
    gateway: FlaskClient, indexed: list[Indexed], fields: dict[str, str], status: int, kind: str, words: str
) -> None:
    filled = {
        name: value.format(a=indexed[0].image_id, b=indexed[1].image_id) for name, value in fields.items()
    }
    body = problem(post(gateway, SEARCH, **filled), SEARCH, "post", status, kind)
    assert words in body["detail"], body["detail"]


def test_an_image_without_a_vector_is_refused_as_query_or_example(
    gateway: FlaskClient, stack: Stack, indexed: list[Indexed]
) -> None:
    added = requests.post(  # stored in the catalog directly: an image not indexed yet
        f"{stack.urls['catalog']}/v1/images",
        files={"file": ("a.png", fresh_png())},
        data={"metadata": json.dumps({"dataset": "explore-pending"})},
        timeout=HTTP_TIMEOUT_S,
    )
    assert added.status_code == 201, added.text
    pending, a = added.json()["id"], indexed[0].image_id
    try:
        for fields, words in (
            ({"query_id": pending, "positive": a}, f"image {pending} has no vector"),
            ({"positive": f"{a},{pending}"}, f"positive image {pending} has no vector"),
            ({"query_id": a, "negative": pending}, f"negative image {pending} has no vector"),
        ):
            body = problem(post(gateway, SEARCH, **fields), SEARCH, "post", 409, "not-indexed")
            assert words in body["detail"], body["detail"]
    finally:
        requests.delete(f"{stack.urls['catalog']}/v1/images/{pending}", timeout=HTTP_TIMEOUT_S)


def test_an_upload_and_a_query_id_together_are_refused(gateway: FlaskClient, indexed: list[Indexed]) -> None:
    body = problem(
        post(gateway, SEARCH, indexed[0].path.read_bytes(), query_id=indexed[1].image_id),
        SEARCH, "post", 400, "invalid-request",
    )  # fmt: skip
    assert "not both" in body["detail"]


@pytest.mark.parametrize(
    ("fields", "status", "kind", "words"),
    [
        (
            {"query_id": "{a}", "result_id": ",".join(str(i) for i in range(1, 18))},
            400,
            "invalid-request",
            "1 to 16",
        ),
        ({"query_id": "{a}"}, 400, "invalid-request", "1 to 16"),
        ({"result_id": "{b}"}, 400, "invalid-request", "either an image or a query_id"),
        (
            {"query_id": "{a}", "result_id": "{b}", "model_id": "resnet50-other"},
            409,
            "model-mismatch",
            "active model",
        ),
        (
            {"query_id": "{a}", "result_id": str(UNKNOWN_ID)},
            404,
            "image-not-found",
            "none of the result images",
        ),
        (
            {"query_id": "{a}", "result_id": "{b}", "region": "0,0,10,10"},
            422,
            "image-rejected",
            "at least 64 px",
        ),
    ],
)
def test_a_bad_maps_request_is_a_problem_that_says_what_is_wrong(
    gateway: FlaskClient, indexed: list[Indexed], fields: dict[str, str], status: int, kind: str, words: str
) -> None:
    filled = {
        name: value.format(a=indexed[0].image_id, b=indexed[1].image_id) for name, value in fields.items()
    }
    body = problem(post(gateway, MAPS, **filled), MAPS, "post", status, kind)
    assert words in body["detail"], body["detail"]


def test_a_reader_may_explore_and_a_stranger_may_not(stack: Stack, indexed: list[Indexed]) -> None:
    form = {"query_id": str(indexed[0].image_id), "result_id": str(indexed[1].image_id)}
    reader = requests.post(
        f"{stack.gateway}{MAPS}", data=form, headers=stack.auth_as("reader"), timeout=HTTP_TIMEOUT_S
    )
    assert reader.status_code == 200, reader.text
    stranger = requests.post(f"{stack.gateway}{MAPS}", data=form, timeout=HTTP_TIMEOUT_S)
    assert stranger.status_code == 401


def test_medsearch_search_like_and_unlike(stack: Stack, indexed: list[Indexed]) -> None:
    query, liked, disliked = indexed[0].image_id, indexed[1].image_id, indexed[2].image_id
    done = medsearch(
        stack, "search", "--query-id", str(query), "--like", str(liked), "--unlike", str(disliked),
        "--k", "5", "--json", role="reader",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["query"] == {"image_id": query, "region": None, "positive": [liked], "negative": [disliked]}
    assert len(answer["results"]) == 5
    assert not {query, liked, disliked} & {hit["image"]["id"] for hit in answer["results"]}
    region = medsearch(stack, "search", str(indexed[3].path), "--region", "100,100,500,500", role="reader")
    assert region.returncode == 0 and region.stdout.strip(), region.stderr
    nothing = medsearch(stack, "search", role="reader")
    assert nothing.returncode == 2 and "--like" in nothing.stderr


def test_the_python_client_steers_and_explains(stack: Stack, indexed: list[Indexed]) -> None:
    client = GatewayClient(stack.gateway, token=stack.tokens["reader"])
    steered = client.search(
        like=[indexed[1].image_id, indexed[2].image_id], unlike=[indexed[3].image_id], k=3
    )
    assert len(steered["results"]) == 3
    ids = [hit["image"]["id"] for hit in steered["results"]]
    maps = client.similarity_maps(ids, query_id=indexed[1].image_id)
    assert [item["image_id"] for item in maps["maps"]] == ids


def test_several_images_are_searched_at_once_each_with_its_results(
    gateway: FlaskClient, indexed: list[Indexed]
) -> None:
    files = [
        (io.BytesIO(indexed[7].path.read_bytes()), "a"),
        (io.BytesIO(b"not an image at all"), "b"),
        (io.BytesIO(indexed[8].path.read_bytes()), "c"),
    ]
    answer = gateway.post(
        "/api/v1/searches", data={"image": files, "k": "3"}, content_type="multipart/form-data"
    )
    assert answer.status_code == 200, answer.get_data(as_text=True)
    body = OPENAPI.check(answer, "/api/v1/searches", "post")
    first, refused, third = body["searches"]
    assert first["results"][0]["image"]["id"] == indexed[7].image_id and len(first["results"]) == 3
    assert third["results"][0]["image"]["id"] == indexed[8].image_id
    assert refused["index"] == 1 and refused["status"] == 415 and "PNG, JPEG or DICOM" in refused["detail"]
    # The same scores as one search at a time.
    alone = results(post(gateway, SEARCH, indexed[8].path.read_bytes(), k=3))
    assert [(hit["image"]["id"], round(hit["score"], 5)) for hit in third["results"]] == [
        (hit["image"]["id"], round(hit["score"], 5)) for hit in alone
    ]


def test_a_batch_search_of_none_or_too_many_images_is_refused(
    gateway: FlaskClient, indexed: list[Indexed]
) -> None:
    data = indexed[0].path.read_bytes()
    too_many = [(io.BytesIO(data), f"{i}") for i in range(33)]
    for files in ([], too_many):
        answer = gateway.post("/api/v1/searches", data={"image": files}, content_type="multipart/form-data")
        body = problem(answer, "/api/v1/searches", "post", 400, "invalid-request")
        assert "1 to 32 files" in body["detail"]
