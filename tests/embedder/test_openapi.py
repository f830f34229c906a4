"""The embedder's OpenAPI document: valid, complete, shipped, and true to what the API really answers.

Real requests go through the app on the session's ResNet-50; each answer is checked against what the
document gives for that path, method and status: its media type, its required headers and its JSON
body. The response schemas forbid unknown members, so a field added, renamed or dropped in the code
without the document fails here.
"""

from __future__ import annotations

import io
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate
from PIL import Image
from pydicom.uid import JPEGLSLossless
from werkzeug.test import TestResponse

from medsearch_embedder.app import create_app
from medsearch_embedder.model import Embedder
from medsearch_embedder.weights import WeightsSpec
from tests.conftest import REPO_ROOT
from tests.embedder.conftest import embedder_settings, post_images, post_render
from tests.embedder.dicoms import dicom
from tests.support.openapi import OpenApiDocument, app_routes

OPENAPI = OpenApiDocument("medsearch_embedder")
DOCUMENT = OPENAPI.document
check = OPENAPI.check
schema_errors = OPENAPI.schema_errors
assert_plain_problem = OPENAPI.plain_problem

PROBLEM = "urn:medsearch:problem:"
EMBEDDINGS = "/v1/embeddings"
RENDER = "/v1/render"

NIH_L = "nih_cxr14/images/00000075_000.png"
NIH_RGBA = "nih_cxr14/images/00000100_000.png"
HANNOVER = "covid_hannover/images/006f3a8a.png"
# How long a failed model load may take to show in /readyz before the test gives up (a hang guard).
LOAD_FAILURE_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def xrays(test_data: Path) -> list[bytes]:
    """Three real X-rays: NIH 8-bit gray, NIH RGBA, Hannover (not square)."""
    return [(test_data / path).read_bytes() for path in (NIH_L, NIH_RGBA, HANNOVER)]


def corner_of(xray: bytes) -> Any:
    return np.asarray(Image.open(io.BytesIO(xray)).convert("L"))[:64, :64]


# -- the document itself -------------------------------------------------------------------------------------


def test_the_document_is_valid_openapi_3_1() -> None:
    validate(DOCUMENT)
    assert DOCUMENT["openapi"] == "3.1.0"


def test_the_package_ships_the_document() -> None:
    # An editable install finds the file in src/; a built wheel only when package-data names it.
    project = tomllib.loads((REPO_ROOT / "services/embedder/pyproject.toml").read_text(encoding="utf-8"))
    assert "openapi.json" in project["tool"]["setuptools"]["package-data"]["medsearch_embedder"]


def test_the_served_document_is_the_file(client: FlaskClient) -> None:
    response = client.get("/v1/openapi.json")
    assert check(response, "/v1/openapi.json", "get") == DOCUMENT


def test_every_route_of_the_app_is_documented_and_every_documented_route_exists(client: FlaskClient) -> None:
    app = client.application
    routes = app_routes(app)
    assert {(EMBEDDINGS, "post"), (RENDER, "post"), ("/v1/model", "get"), ("/readyz", "get")} <= routes
    documented = OPENAPI.operations()
    assert routes - documented == set(), "routes missing from openapi.json"
    assert documented - routes == set(), "openapi.json documents routes the app does not have"


# -- real answers against the document -----------------------------------------------------------------------


def test_embeddings_of_several_images(client: FlaskClient, xrays: list[bytes]) -> None:
    response = post_images(client, xrays)
    assert response.status_code == 200
    body = check(response, EMBEDDINGS, "post")
    assert [item["index"] for item in body["data"]] == [0, 1, 2] and body["errors"] == []
    model = client.get("/v1/model")
    assert check(model, "/v1/model", "get") == body["model"]
    assert body["model"]["meaningful"] is False and body["model"]["warning"]


def test_embeddings_with_some_images_rejected(client: FlaskClient, xrays: list[bytes]) -> None:
    response = post_images(client, [xrays[0], b"not an image", xrays[2][:300]])
    assert response.status_code == 200
    body = check(response, EMBEDDINGS, "post")
    assert [item["index"] for item in body["data"]] == [0]
    assert [(e["index"], e["status"]) for e in body["errors"]] == [(1, 415), (2, 422)]


Send = Callable[[FlaskClient, list[bytes]], TestResponse]

PROBLEM_CASES: list[tuple[str, dict[str, Any], Send, int, str]] = [
    (
        "not multipart",
        {},
        lambda c, x: c.post(EMBEDDINGS, data=x[0], content_type="image/png"),
        400,
        "malformed-request",
    ),
    (
        "no file",
        {},
        lambda c, x: c.post(EMBEDDINGS, data={"note": "x"}, content_type="multipart/form-data"),
        400,
        "malformed-request",
    ),
    (
        "too many images",
        {"max_images_per_request": 2, "max_queue": 2},
        lambda c, x: post_images(c, x),
        413,
        "too-many-images",
    ),
    ("request too large", {"max_request_bytes": 1024}, lambda c, x: post_images(c, x * 2), 413, ""),
    (
        "image too large",
        {"max_image_bytes": 1024},
        lambda c, x: post_images(c, x[:1]),
        413,
        "upload-too-large",
    ),
    (
        "images too large",
        {"max_image_bytes": 1024},
        lambda c, x: post_images(c, x[:2]),
        413,
        "images-rejected",
    ),
    ("not an image", {}, lambda c, x: post_images(c, [b"just some text"]), 415, "not-an-image"),
    ("a GIF", {}, lambda c, x: post_images(c, [b"GIF89a" + bytes(40)]), 415, "unsupported-image"),
    (
        "DICOM without a decoder",
        {},
        lambda c, x: post_images(c, [dicom(corner_of(x[0]), syntax=JPEGLSLossless)]),
        415,
        "unsupported-image",
    ),
    ("truncated", {}, lambda c, x: post_images(c, [x[0][: len(x[0]) // 2]]), 422, "image-rejected"),
    (
        "too many pixels",
        {"max_image_pixels": 1024},
        lambda c, x: post_images(c, x[:1]),
        422,
        "too-many-pixels",
    ),
    (
        "multi-frame DICOM",
        {},
        lambda c, x: post_images(c, [dicom(np.stack([corner_of(x[0])] * 2), frames=2)]),
        422,
        "multi-frame-image",
    ),
    (
        "different reasons",
        {},
        lambda c, x: post_images(c, [b"text", x[0][:300]]),
        422,
        "images-rejected",
    ),
    (
        "same reason",
        {},
        lambda c, x: post_images(c, [b"text", b"%PDF-1.7\n"]),
        415,
        "images-rejected",
    ),
]


@pytest.mark.parametrize(
    ("settings", "send", "status", "slug"),
    [case[1:] for case in PROBLEM_CASES],
    ids=[case[0] for case in PROBLEM_CASES],
)
def test_each_refusal_of_embeddings_is_a_documented_problem(
    make_embedder_app: Callable[..., Flask],
    xrays: list[bytes],
    settings: dict[str, Any],
    send: Send,
    status: int,
    slug: str,
) -> None:
    response = send(make_embedder_app(**settings).test_client(), xrays)
    assert response.status_code == status, response.get_data(as_text=True)
    problem = check(response, EMBEDDINGS, "post")
    assert problem["type"] == (PROBLEM + slug if slug else "about:blank")


RENDER_CASES: list[tuple[str, dict[str, Any], Send, int, str]] = [
    ("a PNG", {}, lambda c, x: post_render(c, [x[2]]), 200, ""),
    (
        "no file",
        {},
        lambda c, x: c.post(RENDER, data={"note": "x"}, content_type="multipart/form-data"),
        400,
        "malformed-request",
    ),
    ("two files", {}, lambda c, x: post_render(c, [x[2], x[2]]), 400, "malformed-request"),
    # Past the 1 MiB allowed for the multipart framing, too.
    ("request too large", {"max_request_bytes": 1024}, lambda c, x: post_render(c, [x[1] * 3]), 413, ""),
    (
        "image too large",
        {"max_image_bytes": 1024},
        lambda c, x: post_render(c, [x[2]]),
        413,
        "upload-too-large",
    ),
    ("not an image", {}, lambda c, x: post_render(c, [b"just some text"]), 415, "not-an-image"),
    ("a GIF", {}, lambda c, x: post_render(c, [b"GIF89a" + bytes(40)]), 415, "unsupported-image"),
    ("truncated", {}, lambda c, x: post_render(c, [x[2][:300]]), 422, "image-rejected"),
    (
        "too many pixels",
        {"max_image_pixels": 1024},
        lambda c, x: post_render(c, [x[2]]),
        422,
        "too-many-pixels",
    ),
]


@pytest.mark.parametrize(
    ("settings", "send", "status", "slug"),
    [case[1:] for case in RENDER_CASES],
    ids=[case[0] for case in RENDER_CASES],
)
def test_each_answer_of_render_is_documented(
    make_app_without_model: Callable[..., Flask],
    xrays: list[bytes],
    settings: dict[str, Any],
    send: Send,
    status: int,
    slug: str,
) -> None:
    response = send(make_app_without_model(**settings).test_client(), xrays)
    assert response.status_code == status, response.mimetype
    body = check(response, RENDER, "post")
    if status != 200:
        assert body["type"] == (PROBLEM + slug if slug else "about:blank")


def test_unknown_path_and_wrong_method_are_the_problems_the_document_states(client: FlaskClient) -> None:
    unknown = client.get("/v2/embeddings")
    assert unknown.status_code == 404
    assert_plain_problem(unknown)
    wrong_method = client.get(EMBEDDINGS)
    assert wrong_method.status_code == 405 and "POST" in wrong_method.headers["Allow"].split(", ")
    assert_plain_problem(wrong_method)


@pytest.fixture
def unloadable_app(tmp_path: Path) -> Iterator[Flask]:
    """An app that loads its own model from a weights file holding garbage: the load fails."""
    weights = tmp_path / "x.h5"
    weights.write_bytes(b"these bytes are not HDF5 weights\n" * 32)
    app = create_app(embedder_settings(weights=WeightsSpec("file", path=weights)))
    app.testing = True
    yield app
    app.extensions["medsearch_embedder"].close()


def test_a_model_that_failed_to_load_gives_documented_503s(unloadable_app: Flask, xrays: list[bytes]) -> None:
    client = unloadable_app.test_client()
    deadline = time.monotonic() + LOAD_FAILURE_TIMEOUT_S
    while True:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        reason = check(ready, "/readyz", "get")["checks"]["model"]
        if reason.startswith("the model failed to load"):
            break
        assert reason == "the model is loading"
        if time.monotonic() > deadline:
            pytest.fail(f"/readyz did not report the failed load within {LOAD_FAILURE_TIMEOUT_S:g} s")
        time.sleep(0.05)
    assert "x.h5" in reason

    for response, path, method in [
        (post_images(client, xrays[:1]), EMBEDDINGS, "post"),
        (client.get("/v1/model"), "/v1/model", "get"),
    ]:
        assert response.status_code == 503
        problem = check(response, path, method)
        assert problem["type"] == PROBLEM + "model-not-ready" and "failed to load" in problem["detail"]
        # A failed load needs a restart: nothing to retry.
        assert "Retry-After" not in response.headers
    assert check(client.get("/healthz"), "/healthz", "get") == {"status": "ok", "service": "embedder"}


def test_a_wait_for_the_model_that_runs_out_is_a_documented_503(
    make_embedder_app: Callable[..., Flask], xrays: list[bytes]
) -> None:
    # The batcher holds a lone image for up to a minute waiting for company; the request waits 0 s.
    client = make_embedder_app(wait_timeout_s=0.0, max_delay_ms=60_000).test_client()
    response = post_images(client, xrays[:1])
    assert response.status_code == 503
    assert check(response, EMBEDDINGS, "post")["type"] == PROBLEM + "overloaded"
    assert int(response.headers["Retry-After"]) >= 1


def test_the_model_description_of_each_runtime_is_documented(
    embedder: Embedder, tensorflow_embedder: Embedder
) -> None:
    for loaded in (embedder, tensorflow_embedder):
        assert schema_errors("/components/schemas/Model", loaded.info.to_json()) == []


def test_health_readiness_model_and_metrics(client: FlaskClient) -> None:
    assert check(client.get("/healthz"), "/healthz", "get") == {"status": "ok", "service": "embedder"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert check(ready, "/readyz", "get")["checks"] == {"model": "ok"}
    model = check(client.get("/v1/model"), "/v1/model", "get")
    assert model["weights"] == "random:42" and model["model_id"].startswith("resnet50-random42-")
    assert b"embedder_batch_size" in check(client.get("/metrics"), "/metrics", "get")
