"""Every kind of bad input gets a 4xx problem+json that names the problem, and writes nothing."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from PIL import Image
from werkzeug.test import TestResponse

from tests.catalog.conftest import row_counts, upload
from tests.support.id_ranges import BAD_QUERY_RANGES

NIH_IMAGE = "nih_cxr14/images/00000100_000.png"


def encoded(image_format: str, size: tuple[int, int] = (32, 32), mode: str = "L") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color=128).save(out, format=image_format)
    return out.getvalue()


def corrupt_png_crc(data: bytes) -> bytes:
    """Flip a byte inside the first IDAT chunk's data: the chunk's CRC no longer matches."""
    at = data.index(b"IDAT") + 4 + 10
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def dicom_like() -> bytes:
    return b"\x00" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00" + b"\x00" * 64


def deep_json(depth: int) -> str:
    return '{"dataset": "x", "extra": ' + '{"a": ' * depth + "1" + "}" * depth + "}"


# (case, file bytes or a function of the real NIH image's bytes, metadata, status, words in the detail)
UPLOAD_CASES: list[tuple[str, Any, Any, int, str]] = [
    ("text file", b"just some text, not pixels", None, 415, "not an image"),
    ("empty file", b"", None, 415, "empty"),
    ("html named png", b"<html><script>alert(1)</script></html>", None, 415, "not an image"),
    ("truncated png", lambda real: real[: len(real) // 2], None, 422, "truncated or corrupt"),
    ("png with bad crc", corrupt_png_crc, None, 422, "corrupt"),
    ("png header only", lambda real: real[:33], None, 422, "PNG"),
    ("truncated jpeg", lambda real: encoded("JPEG", (256, 256))[:300], None, 422, "truncated or corrupt"),
    ("gif", encoded("GIF", mode="P"), None, 415, "GIF images are not supported"),
    ("bmp", encoded("BMP"), None, 415, "BMP images are not supported"),
    ("tiff", encoded("TIFF"), None, 415, "TIFF images are not supported"),
    ("webp", encoded("WEBP", mode="RGB"), None, 415, "WebP images are not supported"),
    ("dicom without pixel data", dicom_like(), None, 422, "no pixel data"),
    ("malformed metadata json", None, '{"dataset": "x",', 400, "not valid JSON"),
    ("metadata not an object", None, '["x"]', 422, "must be a JSON object"),
    ("metadata missing dataset", None, {"age": 3}, 422, "dataset is required"),
    (
        "unknown metadata field",
        None,
        {"dataset": "x", "diagnosis": "y"},
        422,
        "unknown metadata field(s): diagnosis",
    ),
    ("age as text", None, {"dataset": "x", "age": "forty"}, 422, "age must be an integer"),
    ("age as float", None, {"dataset": "x", "age": 40.5}, 422, "age must be an integer"),
    ("age as boolean", None, {"dataset": "x", "age": True}, 422, "age must be an integer"),
    ("age above 130", None, {"dataset": "x", "age": 131}, 422, "between 0 and 130"),
    ("negative age", None, {"dataset": "x", "age": -1}, 422, "between 0 and 130"),
    ("unknown sex", None, {"dataset": "x", "sex": "X"}, 422, "sex must be one of"),
    ("findings not a list", None, {"dataset": "x", "findings": "Mass"}, 422, "findings must be a list"),
    (
        "finding not text",
        None,
        {"dataset": "x", "findings": ["Mass", 3]},
        422,
        "findings[1] must be a string",
    ),
    (
        "too many findings",
        None,
        {"dataset": "x", "findings": [f"f{i}" for i in range(33)]},
        422,
        "limit is 32",
    ),
    ("empty dataset", None, {"dataset": "  "}, 422, "dataset must not be empty"),
    ("over-long text", None, {"dataset": "x", "patient_id": "p" * 257}, 422, "longer than 256"),
    ("nul in text", None, {"dataset": "x", "patient_id": "p\u00001"}, 422, "a control character"),
    ("nul in extra", None, {"dataset": "x", "extra": {"note": "a\u0000b"}}, 422, "NUL"),
    ("extra not an object", None, {"dataset": "x", "extra": [1]}, 422, "extra must be a JSON object"),
    ("extra too large", None, {"dataset": "x", "extra": {"note": "n" * 17000}}, 422, "larger than 16384"),
    ("extra too deep", None, deep_json(20), 422, "nested deeper"),
    ("metadata nested to break the parser", None, "[" * 30000 + "]" * 30000, 422, "metadata"),
    ("nan in metadata", None, '{"dataset": "x", "extra": {"v": NaN}}', 400, "not valid JSON"),
    (
        "oversized metadata",
        None,
        json.dumps({"dataset": "x", "extra": {"n": "n" * 70000}}),
        422,
        "limit is 65536",
    ),
    ("study negative", None, {"dataset": "x", "study": -2}, 422, "study must be between"),
]


@pytest.mark.parametrize(
    ("file", "metadata", "status", "detail"),
    [case[1:] for case in UPLOAD_CASES],
    ids=[case[0] for case in UPLOAD_CASES],
)
def test_bad_upload_is_refused_and_writes_nothing(
    catalog: FlaskClient,
    database_url: str,
    test_data: Path,
    file: Any,
    metadata: Any,
    status: int,
    detail: str,
) -> None:
    real = (test_data / NIH_IMAGE).read_bytes()
    data = real if file is None else file(real) if callable(file) else file
    before = row_counts(database_url)
    response = upload(catalog, data, metadata)
    assert_problem(response, status, detail)
    assert row_counts(database_url) == before
    assert upload(catalog, real).status_code in (200, 201)  # still serving


def assert_problem(response: TestResponse, status: int, detail: str) -> None:
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/problem+json"
    body = response.json
    assert body is not None
    assert body["status"] == status and body["title"] and body["type"]
    assert detail.lower() in body["detail"].lower(), body["detail"]


def test_upload_over_the_byte_limit_is_413(
    make_catalog_app: Callable[..., Any], database_url: str, test_data: Path
) -> None:
    client = make_catalog_app(max_upload_bytes=100_000).test_client()
    before = row_counts(database_url)
    response = upload(client, (test_data / NIH_IMAGE).read_bytes())
    assert_problem(response, 413, "limit is 100000")
    # Far beyond it, werkzeug refuses the body before reading it: still problem+json.
    huge = upload(client, b"\x89PNG\r\n\x1a\n" + b"\x00" * 1_300_000)
    assert_problem(huge, 413, "larger than")
    assert row_counts(database_url) == before


def test_stale_if_match_on_a_file_is_a_412_problem_without_the_bytes(catalog: FlaskClient) -> None:
    created = upload(catalog, encoded("PNG"))
    assert created.json is not None
    response = catalog.get(f"/v1/images/{created.json['id']}/file", headers={"If-Match": '"stale"'})
    assert_problem(response, 412, "If-Match")


def test_decompression_bomb_is_refused_by_pixel_count(catalog: FlaskClient, database_url: str) -> None:
    bomb = encoded("PNG", size=(10_000, 10_000))  # 100 megapixels in about 100 KB
    assert len(bomb) < 200_000
    before = row_counts(database_url)
    assert_problem(upload(catalog, bomb), 422, "too many pixels")
    # Below Pillow's own warning (89 megapixels) but above ours (64): still refused, by size.
    assert_problem(upload(catalog, encoded("PNG", size=(8500, 8500))), 422, "8500x8500 (72250000 pixels)")
    assert row_counts(database_url) == before


def test_pixel_limit_is_configurable(make_catalog_app: Callable[..., Any], test_data: Path) -> None:
    client = make_catalog_app(max_image_pixels=1_000_000).test_client()
    assert_problem(upload(client, (test_data / NIH_IMAGE).read_bytes()), 422, "limit is 1000000 pixels")


def test_upload_without_exactly_one_file_is_400(catalog: FlaskClient, database_url: str) -> None:
    none = catalog.post(
        "/v1/images", data={"metadata": '{"dataset": "x"}'}, content_type="multipart/form-data"
    )
    assert_problem(none, 400, "exactly one image")
    two = catalog.post(
        "/v1/images",
        data={"file": [(io.BytesIO(encoded("PNG")), "a.png"), (io.BytesIO(encoded("PNG")), "b.png")]},
        content_type="multipart/form-data",
    )
    assert_problem(two, 400, "got 2")
    assert_problem(
        catalog.post("/v1/images", data=b"raw", content_type="image/png"), 400, "exactly one image"
    )
    no_metadata = catalog.post(
        "/v1/images", data={"file": (io.BytesIO(encoded("PNG")), "a.png")}, content_type="multipart/form-data"
    )
    assert_problem(no_metadata, 422, "'metadata'")
    assert row_counts(database_url) == {"images": 0, "image_files": 0, "index_states": 0}


@pytest.mark.parametrize(("params", "words"), BAD_QUERY_RANGES, ids=lambda v: repr(v)[:40])
def test_a_bad_range_of_index_states_is_400(
    catalog: FlaskClient, database_url: str, params: dict[str, str], words: str
) -> None:
    before = row_counts(database_url)
    response = catalog.get("/v1/models/m1/index-states", query_string=params)
    assert_problem(response, 400, words)
    assert response.json is not None and response.json["type"] == "urn:medsearch:problem:malformed-request"
    assert row_counts(database_url) == before


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "detail"),
    [
        ("GET", "/v1/images/abc", None, 400, "positive integer"),
        ("GET", "/v1/images/0", None, 400, "positive integer"),
        ("GET", "/v1/images/-3", None, 400, "positive integer"),
        ("GET", "/v1/images/99999999999999999999", None, 400, "positive integer"),
        ("GET", "/v1/images/%D9%A3", None, 400, "positive integer"),  # an Arabic-Indic digit
        ("GET", "/v1/images/424242", None, 404, "no image has ID 424242"),
        ("GET", "/v1/images/424242/file", None, 404, "no image has ID"),
        ("GET", "/v1/images/424242/thumbnail", None, 404, "no image has ID"),
        ("DELETE", "/v1/images/abc", None, 400, "positive integer"),
        ("DELETE", "/v1/images/424242", None, 404, "no image has ID"),
        ("PATCH", "/v1/images/424242", {"age": 3}, 404, "no image has ID"),
        ("PATCH", "/v1/images/{id}", None, 400, "must be JSON"),
        ("PATCH", "/v1/images/{id}", "{not json", 400, "not valid JSON"),
        ("PATCH", "/v1/images/{id}", {}, 422, "names no field"),
        ("PATCH", "/v1/images/{id}", {"dataset": None}, 422, "dataset must be a non-empty string"),
        ("PATCH", "/v1/images/{id}", {"owner": "me"}, 422, "unknown metadata field(s): owner"),
        ("PATCH", "/v1/images/{id}", {"age": 200}, 422, "between 0 and 130"),
        ("PUT", "/v1/images/{id}/index-state/m1", {"state": "done"}, 422, "state must be one of"),
        ("PUT", "/v1/images/{id}/index-state/m1", {"state": "failed"}, 422, "needs a 'reason'"),
        (
            "PUT",
            "/v1/images/{id}/index-state/m1",
            {"state": "indexed", "reason": "x"},
            422,
            "only for the failed",
        ),
        (
            "PUT",
            "/v1/images/{id}/index-state/m1",
            {"state": "indexed", "by": "me"},
            422,
            "unknown field(s): by",
        ),
        ("PUT", "/v1/images/{id}/index-state/bad%20model", {"state": "indexed"}, 400, "a model ID is"),
        ("PUT", "/v1/images/424242/index-state/m1", {"state": "indexed"}, 404, "no image has ID"),
        ("GET", "/v1/images?colour=red", None, 400, "unknown parameter(s): colour"),
        ("GET", "/v1/images?age_min=old", None, 400, "'age_min' must be an integer"),
        ("GET", "/v1/images?age_min=60&age_max=20", None, 400, "greater than age_max"),
        ("GET", "/v1/images?limit=0", None, 400, "'limit' must be between 1 and 500"),
        ("GET", "/v1/images?cursor=not-a-cursor", None, 400, "not a cursor"),
        ("GET", "/v1/images?cursor=eyJhZnRlciI6ICJ4In0", None, 400, "not a cursor"),
        ("GET", "/v1/images?index_state=pending", None, 400, "go together"),
        ("GET", "/v1/images?model_id=m1&index_state=lost", None, 400, "index_state must be one of"),
        ("GET", "/v1/images?ids=1,x", None, 400, "positive integer"),
        ("GET", "/v1/images?ids=", None, 400, "at least one"),
        ("GET", "/v1/images?ids=1&dataset=x", None, 400, "cannot be combined"),
        ("GET", "/v1/models/m1/pending?include_failed=maybe", None, 400, "true or false"),
        ("GET", "/v1/models/bad$model/pending", None, 400, "a model ID is"),
        ("GET", "/v1/nothing-here", None, 404, "not found"),
        ("GET", "/static/app.js", None, 404, "not found"),
        ("GET", "/v1/images/" + "9" * 5000, None, 400, "positive integer"),
        ("PUT", "/v1/images/{id}/index-state/abc%0A", {"state": "indexed"}, 400, "a model ID is"),
        (
            "PUT",
            "/v1/images/{id}/index-state/m1",
            {"state": "failed", "reason": "\u0000 "},
            422,
            "needs a 'reason'",
        ),
        ("PUT", "/v1/images/{id}/index-state/m1", "[1,", 400, "the index state is not valid JSON"),
        ("GET", "/v1/images?ids=1&ids=2", None, 400, "'ids' comes once"),
        ("GET", "/v1/images?limit=1_0", None, 400, "'limit' must be an integer"),
        ("GET", "/v1/images?limit=+5", None, 400, "'limit' must be an integer"),
        ("GET", "/v1/images?sex=X", None, 400, "'sex' must be one of"),
        ("GET", "/v1/models/m1/pending?dataset=x", None, 400, "unknown parameter(s): dataset"),
        ("POST", "/v1/images/{id}", None, 405, "not allowed"),
    ],
)
def test_bad_request_is_refused_and_changes_nothing(
    catalog: FlaskClient, database_url: str, method: str, path: str, body: Any, status: int, detail: str
) -> None:
    created = upload(catalog, encoded("PNG"), {"dataset": "x", "age": 30})
    assert created.json is not None
    image_id = created.json["id"]
    before = row_counts(database_url)
    kwargs: dict[str, Any] = {}
    if isinstance(body, str):
        kwargs = {"data": body, "content_type": "application/json"}
    elif body is not None:
        kwargs = {"json": body}
    response = catalog.open(path.replace("{id}", str(image_id)), method=method, **kwargs)
    assert_problem(response, status, detail)
    assert row_counts(database_url) == before
    assert catalog.get(f"/v1/images/{image_id}").json == created.json
