"""Bad input to POST /v1/embeddings: each is refused with a problem that says what was wrong, and the
service goes on serving. Good images are real X-rays; the bad files are made here with Pillow and pydicom.
"""

from __future__ import annotations

import io
import re
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

from medsearch_embedder.model import Embedder
from medsearch_embedder.preprocessing import InputLimits, prepare
from tests.embedder.conftest import cosine, post_images, vectors_of
from tests.embedder.dicoms import dicom

EMBEDDINGS = "/v1/embeddings"
PROBLEM = "urn:medsearch:problem:"
NIH = "nih_cxr14/images/00000075_000.png"  # 1024x1024, 428 KB
NIH_RGBA = "nih_cxr14/images/00000100_000.png"  # 1024x1024, 679 KB
HANNOVER = "covid_hannover/images/006f3a8a.png"  # 640x599, 159 KB


@pytest.fixture(scope="module")
def xray(test_data: Path) -> bytes:
    return (test_data / NIH).read_bytes()


@pytest.fixture(scope="module")
def small_xray(test_data: Path) -> bytes:
    return (test_data / HANNOVER).read_bytes()


@pytest.fixture(scope="module")
def rgba_xray(test_data: Path) -> bytes:
    return (test_data / NIH_RGBA).read_bytes()


def model_vector(embedder: Embedder, image: bytes) -> NDArray[np.float32]:
    """The vector of `image` straight from the model, without HTTP."""
    vector: NDArray[np.float32] = embedder.embed(prepare(image, InputLimits(10**9, 10**9))[np.newaxis])[0]
    return vector


@pytest.fixture(scope="module")
def reference(embedder: Embedder, xray: bytes) -> NDArray[np.float32]:
    return model_vector(embedder, xray)


@pytest.fixture(scope="module")
def small_reference(embedder: Embedder, small_xray: bytes) -> NDArray[np.float32]:
    return model_vector(embedder, small_xray)


# -- bad files, made from a real X-ray -----------------------------------------------------------------------


def encoded(xray: bytes, image_format: str) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(xray)).convert("L").save(out, format=image_format)
    return out.getvalue()


def corner(xray: bytes) -> NDArray[np.uint8]:
    """A 64 x 64 corner of the X-ray: enough pixels for a DICOM the tests make."""
    return np.asarray(Image.open(io.BytesIO(xray)).convert("L"))[:64, :64]


def truncated_png(xray: bytes) -> bytes:
    return xray[: len(xray) // 2]


def truncated_jpeg(xray: bytes) -> bytes:
    jpeg = encoded(xray, "JPEG")
    return jpeg[: len(jpeg) // 2]


def multi_frame_dicom(xray: bytes) -> bytes:
    return dicom(np.stack([corner(xray)] * 2), frames=2)


def jpeg_ls_dicom(xray: bytes) -> bytes:
    return dicom(corner(xray), syntax=JPEGLSLossless)


def text(_xray: bytes) -> bytes:
    return b"PA chest X-ray of patient 17, see the attached report\n"


def gif(xray: bytes) -> bytes:
    out = io.BytesIO()
    Image.fromarray(corner(xray)).save(out, format="GIF")
    return out.getvalue()


def pdf(_xray: bytes) -> bytes:
    return b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n"


def empty(_xray: bytes) -> bytes:
    return b""


def too_large(xray: bytes) -> bytes:
    """The X-ray itself, for an app whose byte limit is below its size."""
    return xray


def huge_png(_xray: bytes) -> bytes:
    """A small file that declares 144 million pixels: past Pillow's bomb warning and the service's limit."""
    out = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(out, format="PNG")
    return out.getvalue()


# -- checks --------------------------------------------------------------------------------------------------


def assert_refused(response: TestResponse, status: int, *words: str) -> dict[str, Any]:
    """A problem+json answer with `status` whose detail contains each of `words`."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    problem: dict[str, Any] = response.json  # type: ignore[assignment]
    assert problem["status"] == status and problem["title"]
    for word in words:
        assert word in problem["detail"], f"{word!r} not in {problem['detail']!r}"
    return problem


def assert_still_serves(client: FlaskClient, xray: bytes, reference: NDArray[np.float32]) -> None:
    """A good image still embeds, to the vector the model gives it."""
    [vector] = vectors_of(post_images(client, [xray])).values()
    assert cosine(vector, reference) > 0.9999


def errors_of(problem_or_answer: dict[str, Any]) -> list[tuple[int, int, str]]:
    return [(e["index"], e["status"], e["type"].removeprefix(PROBLEM)) for e in problem_or_answer["errors"]]


# -- the request as a whole ----------------------------------------------------------------------------------

Send = Callable[[FlaskClient, bytes], TestResponse]

MALFORMED_REQUESTS: list[tuple[str, Send, tuple[str, ...]]] = [
    ("empty body", lambda c, x: c.post(EMBEDDINGS), ("multipart/form-data", "'images'")),
    (
        "JSON body",
        lambda c, x: c.post(EMBEDDINGS, json={"images": ["00000075_000.png"]}),
        ("multipart/form-data", "(got application/json)"),
    ),
    (
        "raw PNG body",
        lambda c, x: c.post(EMBEDDINGS, data=x, content_type="image/png"),
        ("multipart/form-data", "(got image/png)"),
    ),
    (
        "multipart without a file",
        lambda c, x: c.post(EMBEDDINGS, data={"note": "chest PA"}, content_type="multipart/form-data"),
        ("no file in the multipart field 'images'",),
    ),
    (
        "file in the field 'image'",
        lambda c, x: post_images(c, [x], field="image"),
        ("unexpected file field 'image'", "send images in 'images'"),
    ),
    (
        "'images' as a text field",
        lambda c, x: c.post(
            EMBEDDINGS, data={"images": "00000075_000.png"}, content_type="multipart/form-data"
        ),
        ("'images' must hold files, not text",),
    ),
    (
        "an unknown encoding",
        lambda c, x: c.post(
            EMBEDDINGS + "?encoding=float16",
            data={"images": [(io.BytesIO(x), "x.png")]},
            content_type="multipart/form-data",
        ),
        ('encoding must be "float" or "base64", got \'float16\'',),
    ),
]


@pytest.mark.parametrize(
    ("send", "words"), [case[1:] for case in MALFORMED_REQUESTS], ids=[case[0] for case in MALFORMED_REQUESTS]
)
def test_a_malformed_request_is_a_400_that_says_what_to_send(
    client: FlaskClient, xray: bytes, reference: NDArray[np.float32], send: Send, words: tuple[str, ...]
) -> None:
    problem = assert_refused(send(client, xray), 400, *words)
    assert problem["type"] == PROBLEM + "malformed-request" and "errors" not in problem
    assert_still_serves(client, xray, reference)


def test_more_images_than_the_limit_is_a_413_and_the_limit_itself_is_served(
    make_embedder_app: Callable[..., Flask], xray: bytes, small_xray: bytes, reference: NDArray[np.float32]
) -> None:
    client = make_embedder_app(max_images_per_request=2, max_queue=2).test_client()
    problem = assert_refused(
        post_images(client, [small_xray] * 3), 413, "3 images in one request; the limit is 2"
    )
    assert problem["type"] == PROBLEM + "too-many-images"
    assert sorted(vectors_of(post_images(client, [xray, small_xray]))) == [0, 1]
    assert_still_serves(client, xray, reference)


def test_a_request_larger_than_the_limit_is_a_413(
    make_embedder_app: Callable[..., Flask], xray: bytes, reference: NDArray[np.float32]
) -> None:
    client = make_embedder_app(max_request_bytes=1024).test_client()
    # The limit is 1024 bytes of images plus 1 MiB of room for the multipart framing.
    problem = assert_refused(post_images(client, [xray] * 3), 413, "The request is larger than")
    assert problem["type"] == "about:blank"
    assert_still_serves(client, xray, reference)


# -- one image at a time -------------------------------------------------------------------------------------

BAD_IMAGES: list[tuple[str, Callable[[bytes], bytes], int, str, tuple[str, ...]]] = [
    ("empty file", empty, 415, "not-an-image", ("the file is empty",)),
    ("text", text, 415, "not-an-image", ("not an image", "not PNG, JPEG or DICOM")),
    ("GIF", gif, 415, "unsupported-image", ("GIF images are not supported", "PNG, JPEG or DICOM")),
    ("PDF", pdf, 415, "unsupported-image", ("PDF images are not supported", "PNG, JPEG or DICOM")),
    ("truncated PNG", truncated_png, 422, "image-rejected", ("PNG image is truncated",)),
    ("truncated JPEG", truncated_jpeg, 422, "image-rejected", ("JPEG image is truncated",)),
    ("multi-frame DICOM", multi_frame_dicom, 422, "multi-frame-image", ("2 frames", "one frame per image")),
    (
        "DICOM compression without a decoder",
        jpeg_ls_dicom,
        415,
        "unsupported-image",
        ("JPEG-LS Lossless", "(1.2.840.10008.1.2.4.80)", "cannot be decoded"),
    ),
    ("PNG of 144 million pixels", huge_png, 422, "too-many-pixels", ("too many pixels", "64000000")),
]


@pytest.mark.parametrize(
    ("make", "status", "slug", "words"),
    [case[1:] for case in BAD_IMAGES],
    ids=[case[0] for case in BAD_IMAGES],
)
def test_a_bad_image_alone_is_refused_with_its_reason(
    client: FlaskClient,
    xray: bytes,
    reference: NDArray[np.float32],
    make: Callable[[bytes], bytes],
    status: int,
    slug: str,
    words: tuple[str, ...],
) -> None:
    problem = assert_refused(post_images(client, [make(xray)]), status, *words)
    assert problem["type"] == PROBLEM + slug
    # The one image's reason, also as the request's only error.
    assert problem["errors"] == [
        {"index": 0, "status": status, "type": PROBLEM + slug, "detail": problem["detail"]}
    ]
    assert_still_serves(client, xray, reference)


def test_an_image_over_the_byte_limit_is_a_413_for_that_image_alone(
    make_embedder_app: Callable[..., Flask], xray: bytes, small_xray: bytes
) -> None:
    client = make_embedder_app(max_image_bytes=len(xray) - 1).test_client()
    limit_words = f"the file is {len(xray)} bytes; the limit is {len(xray) - 1}"
    alone = assert_refused(post_images(client, [xray]), 413, limit_words)
    assert alone["type"] == PROBLEM + "upload-too-large"

    answer = post_images(client, [xray, small_xray])
    assert list(vectors_of(answer)) == [1]
    assert errors_of(answer.json) == [(0, 413, "upload-too-large")]  # type: ignore[arg-type]
    assert limit_words in answer.json["errors"][0]["detail"]  # type: ignore[index]
    # A file of exactly the limit is accepted.
    exact = make_embedder_app(max_image_bytes=len(xray)).test_client()
    assert list(vectors_of(post_images(exact, [xray]))) == [0]


def test_an_image_over_the_pixel_limit_is_a_422_for_that_image_alone(
    make_embedder_app: Callable[..., Flask], xray: bytes, small_xray: bytes
) -> None:
    client = make_embedder_app(max_image_pixels=1024 * 1024 - 1).test_client()
    words = "the image has too many pixels: 1024x1024 (1048576 pixels); the limit is 1048575 pixels"
    assert assert_refused(post_images(client, [xray]), 422, words)["type"] == PROBLEM + "too-many-pixels"
    answer = post_images(client, [small_xray, xray])  # 640x599 fits
    assert list(vectors_of(answer)) == [0]
    assert errors_of(answer.json) == [(1, 422, "too-many-pixels")]  # type: ignore[arg-type]


# -- good and bad images together ----------------------------------------------------------------------------


def test_good_images_among_bad_ones_embed_as_they_would_alone(
    client: FlaskClient, xray: bytes, small_xray: bytes, rgba_xray: bytes
) -> None:
    images = [xray, text(xray), small_xray, truncated_png(xray), multi_frame_dicom(xray), rgba_xray]
    answer = post_images(client, images)
    together = vectors_of(answer)
    assert sorted(together) == [0, 2, 5]
    body: dict[str, Any] = answer.json  # type: ignore[assignment]
    assert errors_of(body) == [
        (1, 415, "not-an-image"),
        (3, 422, "image-rejected"),
        (4, 422, "multi-frame-image"),
    ]
    details = [error["detail"] for error in body["errors"]]
    assert "PNG, JPEG or DICOM" in details[0] and "truncated" in details[1] and "2 frames" in details[2]
    for index in together:
        [alone] = vectors_of(post_images(client, [images[index]])).values()
        assert cosine(together[index], alone) > 0.9999, index
    assert cosine(together[0], together[2]) < 0.9999  # different X-rays, different vectors


@pytest.mark.parametrize(
    ("makes", "status", "statuses"),
    [
        ((text, truncated_png, jpeg_ls_dicom), 422, [415, 422, 415]),
        ((too_large, text), 422, [413, 415]),
        ((text, gif, pdf), 415, [415, 415, 415]),
        ((truncated_jpeg, multi_frame_dicom), 422, [422, 422]),
        ((too_large, too_large), 413, [413, 413]),
    ],
    ids=["415 and 422", "413 and 415", "all 415", "all 422", "all 413"],
)
def test_when_every_image_is_bad_the_status_is_theirs_or_422_when_they_differ(
    make_embedder_app: Callable[..., Flask],
    xray: bytes,
    small_xray: bytes,
    small_reference: NDArray[np.float32],
    makes: tuple[Callable[[bytes], bytes], ...],
    status: int,
    statuses: list[int],
) -> None:
    client = make_embedder_app(max_image_bytes=len(xray) - 1).test_client()  # for `too_large`
    response = post_images(client, [make(xray) for make in makes])
    problem = assert_refused(response, status, f"none of the {len(makes)} images could be embedded")
    assert problem["type"] == PROBLEM + "images-rejected"
    assert [(e["index"], e["status"]) for e in problem["errors"]] == list(enumerate(statuses))
    assert all(e["detail"] for e in problem["errors"])
    assert_still_serves(client, small_xray, small_reference)


# -- what comes with every answer ----------------------------------------------------------------------------


def test_the_model_says_its_random_weights_are_not_meaningful(client: FlaskClient, xray: bytes) -> None:
    model = client.get("/v1/model")
    assert model.status_code == 200
    info: dict[str, Any] = model.json  # type: ignore[assignment]
    assert info["meaningful"] is False and info["weights"] == "random:42"
    assert "Random weights" in info["warning"] and "not meaningful" in info["warning"]
    answer = post_images(client, [xray])
    assert answer.status_code == 200
    assert answer.json["model"]["model_id"] == info["model_id"]  # type: ignore[index]
    assert answer.json["model"] == info  # type: ignore[index]


def test_the_request_id_is_returned_on_answers_and_problems(client: FlaskClient, xray: bytes) -> None:
    sent = {"X-Request-ID": "study-17.upload:2"}
    assert re.fullmatch("[0-9a-f]{32}", post_images(client, [xray]).headers["X-Request-ID"])  # made up
    good = client.post(
        EMBEDDINGS,
        data={"images": [(io.BytesIO(xray), "x.png")]},
        content_type="multipart/form-data",
        headers=sent,
    )
    assert good.status_code == 200 and good.headers["X-Request-ID"] == "study-17.upload:2"
    bad = client.post(EMBEDDINGS, data=b"{}", content_type="application/json", headers=sent)
    assert bad.status_code == 400 and bad.headers["X-Request-ID"] == "study-17.upload:2"
    unsafe = client.get("/v1/model", headers={"X-Request-ID": "not safe\tto log"})
    assert unsafe.headers["X-Request-ID"] not in ("", "not safe\tto log")
