"""Similarity maps on the real model (random:42 weights, ONNX Runtime as served, and TensorFlow).

The maps decompose the cosine score exactly (maps.py): each image's map sums to the score the
search service ranks by, an image against itself gives the same map both ways, and a change
confined to one quadrant of an image shows in that quadrant of its map.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient
from numpy.typing import NDArray
from PIL import Image
from werkzeug.test import TestResponse

from medsearch_embedder.maps import Placement, pair_maps
from medsearch_embedder.model import GRID, Embedder
from medsearch_embedder.preprocessing import INPUT_SIZE, MIN_REGION_PX, Prepared, Region
from tests.embedder.conftest import post_images, vectors_of
from tests.support.openapi import OpenApiDocument

OPENAPI = OpenApiDocument("medsearch_embedder")

TOLERANCE = 1e-4  # the bound; float64 sums of float32 features hold to about 1e-7


def png(pixels: NDArray[np.uint8]) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, format="PNG")
    return out.getvalue()


def post_maps(client: FlaskClient, query: bytes, results: list[bytes], **form: str) -> TestResponse:
    data: dict[str, Any] = {
        "query": (io.BytesIO(query), "query"),
        "results": [(io.BytesIO(result), f"result-{i}") for i, result in enumerate(results)],
        **form,
    }
    return client.post("/v1/similarity-maps", data=data, content_type="multipart/form-data")


def answer(response: TestResponse) -> dict[str, Any]:
    """A 200 answer, checked against the OpenAPI document."""
    assert response.status_code == 200, response.get_data(as_text=True)
    body: dict[str, Any] = OPENAPI.check(response, "/v1/similarity-maps", "post")
    return body


@pytest.fixture(scope="module")
def xrays(test_data: Path) -> list[bytes]:
    paths = sorted((test_data / "nih_cxr14" / "images").glob("*.png"))[:4]
    return [path.read_bytes() for path in paths]


def test_each_map_sums_to_the_score_the_search_ranks_by(client: FlaskClient, xrays: list[bytes]) -> None:
    query, *results = xrays
    body = answer(post_maps(client, query, results))
    vectors = vectors_of(post_images(client, xrays))
    assert [item["index"] for item in body["maps"]] == [0, 1, 2] and body["errors"] == []
    for item in body["maps"]:
        served = float(vectors[0].astype(np.float64) @ vectors[item["index"] + 1].astype(np.float64))
        assert item["score"] == pytest.approx(served, abs=TOLERANCE)
        for grid in (item["query_map"], item["result_map"]):
            cells = np.asarray(grid)
            assert cells.shape == (GRID, GRID)
            assert cells.sum() == pytest.approx(served, abs=TOLERANCE)


@pytest.mark.parametrize("runtime", ["onnx", "tensorflow"])
def test_both_runtimes_give_features_whose_mean_is_the_vector(
    runtime: str, embedder: Embedder, tensorflow_embedder: Embedder, xrays: list[bytes]
) -> None:
    model = embedder if runtime == "onnx" else tensorflow_embedder
    size = (INPUT_SIZE, INPUT_SIZE)
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(x)).convert("L").resize(size)) for x in xrays[:2]])
    features = model.features(pixels)
    vectors = model.embed(pixels)
    assert features.shape == (2, GRID, GRID, 2048) and features.min() >= 0  # after the ReLU
    pooled = features.astype(np.float64).mean(axis=(1, 2))
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    assert np.abs(pooled - vectors).max() < 1e-5
    maps = pair_maps(features[0], features[1])
    assert maps.score == pytest.approx(float(vectors[0] @ vectors[1]), abs=TOLERANCE)


def test_an_image_against_itself_has_the_same_map_both_ways(client: FlaskClient, xrays: list[bytes]) -> None:
    (item,) = answer(post_maps(client, xrays[0], [xrays[0]]))["maps"]
    assert item["query_map"] == item["result_map"]
    assert item["score"] == pytest.approx(1.0, abs=TOLERANCE)


@pytest.mark.parametrize("other", [0, 2, 3])
def test_a_change_in_one_quadrant_shows_in_that_quadrant_of_the_map(
    client: FlaskClient, xrays: list[bytes], other: int
) -> None:
    """The result is the query with its top-left quadrant taken from another X-ray: against
    the query, its map changes most there. The quadrant's 112 px cover cells 0 to 3 (the 4th
    in part); the cells wholly in the other three quadrants change several times less."""

    def square(data: bytes) -> NDArray[np.uint8]:
        return np.asarray(Image.open(io.BytesIO(data)).convert("L").resize((INPUT_SIZE, INPUT_SIZE)))

    original = square(xrays[1])
    changed = original.copy()
    half = INPUT_SIZE // 2
    changed[:half, :half] = square(xrays[other])[:half, :half]
    same = np.asarray(answer(post_maps(client, png(original), [png(original)]))["maps"][0]["result_map"])
    differs = np.asarray(answer(post_maps(client, png(original), [png(changed)]))["maps"][0]["result_map"])
    change = np.abs(differs - same)
    inside = change[:4, :4]
    outside = np.concatenate([change[4:, :].ravel(), change[:4, 4:].ravel()])
    assert change.max() == inside.max()
    assert inside.mean() > 3 * outside.mean(), (inside.mean(), outside.mean())


def test_the_query_s_features_are_computed_once_for_all_its_results(
    client: FlaskClient, xrays: list[bytes]
) -> None:
    query, *results = xrays
    first = answer(post_maps(client, query, results[:1]))["maps"][0]
    again = answer(post_maps(client, query, results))["maps"]  # the query and result 0 from the cache
    assert again[0] == first and len(again) == 3


def test_a_region_is_embedded_as_an_image_and_placed_back_on_the_original(
    client: FlaskClient, xrays: list[bytes]
) -> None:
    query = xrays[0]
    width, height = Image.open(io.BytesIO(query)).size
    box = (width // 4, height // 4, width // 4 + 300, height // 4 + 200)
    body = answer(post_maps(client, query, xrays[1:2], region=",".join(map(str, box))))
    assert body["region"] == list(box)
    # The region's letterbox, 300 x 200 px scaled to 224 wide: 224/300 = 0.7467 px per pixel,
    # padded top and bottom by (224 - 149) / 2 px.
    left, top, right, bottom = body["query_extent"]
    assert left == pytest.approx(box[0] / width, abs=1e-4)
    assert right == pytest.approx(box[2] / width, abs=1e-4)
    assert top < box[1] / height and bottom > box[3] / height
    cropped = Image.open(io.BytesIO(query)).convert("L").crop(box)
    crop_png = io.BytesIO()
    cropped.save(crop_png, format="PNG")
    whole_crop = answer(post_maps(client, crop_png.getvalue(), xrays[1:2]))["maps"][0]
    assert body["maps"][0]["score"] == pytest.approx(whole_crop["score"], abs=TOLERANCE)


def test_placement_of_a_tall_image_centres_it_between_padding() -> None:
    placement = Placement.of(Prepared(np.zeros((1, 1), np.uint8), width=640, height=755))
    left, top, right, bottom = placement.extent
    assert top == pytest.approx(0.0) and bottom == pytest.approx(1.0, abs=1e-3)
    assert left < 0 < 1 < right and left == pytest.approx(1 - right, abs=1e-2)


@pytest.mark.parametrize(
    ("region", "words"),
    [
        ("0,0,0,100", "no area"),
        ("100,100,50,300", "no area"),
        ("900,900,1100,1100", "not inside"),
        (f"0,0,{MIN_REGION_PX - 1},200", f"at least {MIN_REGION_PX} px"),
    ],
)
def test_a_region_the_model_cannot_read_is_a_422_saying_why(
    client: FlaskClient, xrays: list[bytes], region: str, words: str
) -> None:
    response = post_maps(client, xrays[0], xrays[1:2], region=region)
    assert response.status_code == 422, response.get_data(as_text=True)
    OPENAPI.check(response, "/v1/similarity-maps", "post")
    assert response.mimetype == "application/problem+json" and words in response.json["detail"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("form", "status", "words"),
    [
        ({"region": "1,2,3"}, 400, "four whole numbers"),
        ({"region": "a,b,c,d"}, 400, "four whole numbers"),
        ({"model_id": "resnet50-other-0000000000"}, 409, "this embedder runs"),
    ],
)
def test_a_bad_request_is_a_problem_saying_what_is_wrong(
    client: FlaskClient, xrays: list[bytes], form: dict[str, str], status: int, words: str
) -> None:
    response = post_maps(client, xrays[0], xrays[1:2], **form)
    assert response.status_code == status and words in response.json["detail"]  # type: ignore[index]
    OPENAPI.check(response, "/v1/similarity-maps", "post")


def test_too_many_results_or_no_query_are_refused(client: FlaskClient, xrays: list[bytes]) -> None:
    too_many = post_maps(client, xrays[0], [xrays[1]] * 17)
    assert too_many.status_code == 413 and "limit is 16" in too_many.json["detail"]  # type: ignore[index]
    no_query = client.post(
        "/v1/similarity-maps",
        data={"results": [(io.BytesIO(xrays[1]), "r")]},
        content_type="multipart/form-data",
    )
    assert no_query.status_code == 400 and "'query'" in no_query.json["detail"]  # type: ignore[index]


def test_a_bad_result_fails_alone_and_a_bad_query_fails_the_request(
    client: FlaskClient, xrays: list[bytes]
) -> None:
    body = answer(post_maps(client, xrays[0], [b"not an image", xrays[1]]))
    assert [item["index"] for item in body["maps"]] == [1]
    assert [error["index"] for error in body["errors"]] == [0] and body["errors"][0]["status"] in (415, 422)
    bad_query = post_maps(client, b"not an image", [xrays[1]])
    assert bad_query.status_code in (415, 422)


def test_a_blank_query_has_nothing_to_compare(client: FlaskClient, xrays: list[bytes]) -> None:
    blank = png(np.zeros((256, 256), dtype=np.uint8))
    response = post_maps(client, blank, [xrays[1]])
    # Random weights may still see features in black: then its maps are scored as any other.
    assert response.status_code in (200, 422)
    if response.status_code == 422:
        assert "no features" in response.json["detail"]  # type: ignore[index]


def test_pair_maps_of_featureless_images_are_zero() -> None:
    zeros = np.zeros((GRID, GRID, 8), dtype=np.float32)
    maps = pair_maps(zeros, np.ones((GRID, GRID, 8), dtype=np.float32))
    assert maps.score == 0 and not maps.query.any() and not maps.result.any()


def test_region_str_names_its_corners() -> None:
    assert str(Region(1, 2, 3, 4)) == "(1, 2, 3, 4)"


def test_an_embedding_of_a_region_is_the_embedding_of_that_crop(
    client: FlaskClient, xrays: list[bytes]
) -> None:
    box = (100, 150, 500, 450)
    response = client.post(
        f"/v1/embeddings?region={','.join(map(str, box))}",
        data={"images": [(io.BytesIO(xrays[0]), "q")]},
        content_type="multipart/form-data",
    )
    crop = io.BytesIO()
    Image.open(io.BytesIO(xrays[0])).convert("L").crop(box).save(crop, format="PNG")
    region_vector = vectors_of(response)[0]
    crop_vector = vectors_of(post_images(client, [crop.getvalue()]))[0]
    assert float(region_vector @ crop_vector) > 1 - 1e-5
    OPENAPI.check(response, "/v1/embeddings", "post")


def test_a_region_with_several_images_or_too_small_is_refused(
    client: FlaskClient, xrays: list[bytes]
) -> None:
    several = client.post(
        "/v1/embeddings?region=0,0,100,100",
        data={"images": [(io.BytesIO(xrays[0]), "a"), (io.BytesIO(xrays[1]), "b")]},
        content_type="multipart/form-data",
    )
    assert several.status_code == 400 and "exactly one" in several.json["detail"]  # type: ignore[index]
    small = client.post(
        "/v1/embeddings?region=0,0,10,10",
        data={"images": [(io.BytesIO(xrays[0]), "a")]},
        content_type="multipart/form-data",
    )
    assert small.status_code == 422 and "at least 64 px" in small.json["detail"]  # type: ignore[index]
    OPENAPI.check(small, "/v1/embeddings", "post")
