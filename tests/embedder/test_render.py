"""POST /v1/render: an upload back as the PNG the model's preprocessing reads, on an app with no model.

The app's weights file does not exist, so its model never loads: every answer here proves that
rendering needs no model (it works while TensorFlow is still loading).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from numpy.typing import NDArray
from PIL import Image
from pydicom.uid import JPEGLSLossless
from werkzeug.test import TestResponse

from medsearch_embedder.preprocessing import InputLimits, read_grayscale
from tests.embedder.conftest import post_render
from tests.embedder.dicoms import dicom

RENDER = "/v1/render"
PROBLEM = "urn:medsearch:problem:"
NIH = "nih_cxr14/images/00000075_000.png"  # 1024x1024, L
NIH_RGBA = "nih_cxr14/images/00000100_000.png"  # 1024x1024, RGBA
HANNOVER = "covid_hannover/images/006f3a8a.png"  # 640x599, L


def rendered(response: TestResponse) -> Image.Image:
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "image/png"
    image = Image.open(io.BytesIO(response.data))
    assert image.format == "PNG" and image.mode == "L"
    return image


def gray_of(data: bytes) -> NDArray[np.uint8]:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"))


def png_of(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def client(make_app_without_model: Callable[..., Flask]) -> FlaskClient:
    """In place of the shared model's client: here no model loads."""
    return make_app_without_model().test_client()


@pytest.mark.parametrize("path", [NIH, NIH_RGBA, HANNOVER])
def test_a_real_xray_no_larger_than_1024_comes_back_pixel_for_pixel(
    client: FlaskClient, test_data: Path, path: str
) -> None:
    data = (test_data / path).read_bytes()
    image = rendered(post_render(client, [data]))
    assert np.array_equal(np.asarray(image), gray_of(data))


def test_rendering_needs_no_model(client: FlaskClient, test_data: Path) -> None:
    assert client.get("/readyz").status_code == 503
    assert client.get("/v1/model").status_code == 503
    rendered(post_render(client, [(test_data / HANNOVER).read_bytes()]))


def test_a_larger_image_is_scaled_down_to_1024_on_its_long_side(client: FlaskClient, test_data: Path) -> None:
    source = Image.open(test_data / HANNOVER).convert("L")  # 640x599
    doubled = source.resize((source.width * 2, source.height * 2), Image.Resampling.NEAREST)
    response = post_render(client, [png_of(doubled)])
    image = rendered(response)
    assert image.size == (1024, round(1198 * 1024 / 1280))
    # The size it was decoded at: what a region drawn on the rendering is scaled back to.
    assert (response.headers["X-Image-Width"], response.headers["X-Image-Height"]) == ("1280", "1198")
    expected = np.asarray(source.resize(image.size, Image.Resampling.BILINEAR), dtype=np.float64)
    assert np.abs(np.asarray(image, dtype=np.float64) - expected).mean() < 2.0


def test_a_dicom_renders_as_the_model_reads_it(client: FlaskClient, test_data: Path) -> None:
    gray = gray_of((test_data / NIH).read_bytes())
    # 12-bit values where low is white: what a PACS might send for the same X-ray.
    data = dicom((255 - gray.astype(np.uint16)) * 16, photometric="MONOCHROME1")
    pixels = np.asarray(rendered(post_render(client, [data])))
    assert np.array_equal(pixels, np.asarray(read_grayscale(data, InputLimits(10**9, 10**9))))
    assert np.abs(pixels.astype(np.float64) - gray).mean() < 1.0


@pytest.mark.parametrize(
    ("settings", "make", "status", "slug"),
    [
        ({}, lambda x: b"GIF89a" + bytes(40), 415, "unsupported-image"),
        ({}, lambda x: b"just some text", 415, "not-an-image"),
        ({}, lambda x: dicom(gray_of(x)[:64, :64], syntax=JPEGLSLossless), 415, "unsupported-image"),
        ({}, lambda x: x[: len(x) // 2], 422, "image-rejected"),
        ({}, lambda x: dicom(np.stack([gray_of(x)[:64, :64]] * 2), frames=2), 422, "multi-frame-image"),
        ({"max_image_pixels": 1024}, lambda x: x, 422, "too-many-pixels"),
        ({"max_image_bytes": 1024}, lambda x: x, 413, "upload-too-large"),
    ],
    ids=["gif", "text", "dicom-without-decoder", "truncated", "multi-frame", "pixels", "bytes"],
)
def test_a_bad_image_is_the_problem_embeddings_give_for_it(
    make_app_without_model: Callable[..., Flask],
    test_data: Path,
    settings: dict[str, Any],
    make: Callable[[bytes], bytes],
    status: int,
    slug: str,
) -> None:
    client = make_app_without_model(**settings).test_client()
    response = post_render(client, [make((test_data / HANNOVER).read_bytes())])
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    problem = response.json
    assert problem is not None and problem["type"] == PROBLEM + slug and problem["status"] == status
    assert "errors" not in problem


Send = Callable[[FlaskClient, bytes], TestResponse]


@pytest.mark.parametrize(
    ("send", "words"),
    [
        (lambda c, x: c.post(RENDER), "multipart/form-data"),
        (lambda c, x: c.post(RENDER, data=x, content_type="image/png"), "(got image/png)"),
        (
            lambda c, x: c.post(RENDER, data={"note": "chest PA"}, content_type="multipart/form-data"),
            "no file in the multipart field 'image'",
        ),
        (lambda c, x: post_render(c, [x], field="images"), "unexpected file field 'images'"),
        (
            lambda c, x: c.post(RENDER, data={"image": "x.png"}, content_type="multipart/form-data"),
            "'image' must hold files, not text",
        ),
        (lambda c, x: post_render(c, [x, x]), "exactly one file in the multipart field 'image' (got 2)"),
    ],
    ids=["empty", "raw-png", "no-file", "field-images", "text-field", "two-files"],
)
def test_a_malformed_request_is_a_400_that_says_what_to_send(
    client: FlaskClient, test_data: Path, send: Send, words: str
) -> None:
    response = send(client, (test_data / HANNOVER).read_bytes())
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    problem = response.json
    assert problem is not None and problem["type"] == PROBLEM + "malformed-request"
    assert words in problem["detail"]
