"""Batch ingest through the real gateway process and real services: each image is stored and
indexed, or fails, on its own, with the answer a single ingest would give; a malformed batch
stores nothing; a batch cut short by a service stays pending and sending it again completes it."""

from __future__ import annotations

import io
import json
import secrets
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from tests.embedder.dicoms import dicom
from tests.gateway.conftest import HTTP_TIMEOUT_S, Indexed, Stack, search

pytestmark = pytest.mark.integration

PROBLEM = "urn:medsearch:problem:"


def fresh_png(size: int = 64) -> bytes:
    """Random pixels: bytes no other test (or run) has stored."""
    out = io.BytesIO()
    Image.frombytes("L", (size, size), secrets.token_bytes(size * size)).save(out, format="PNG")
    return out.getvalue()


def send_batch(stack: Stack, images: list[bytes], metadata: Any) -> requests.Response:
    return requests.post(
        f"{stack.gateway}/api/v1/images/batch",
        files=[("image", (f"{i}.png", data)) for i, data in enumerate(images)],
        data={}
        if metadata is None
        else {"metadata": metadata if isinstance(metadata, str) else json.dumps(metadata)},
        headers=stack.auth,
        timeout=HTTP_TIMEOUT_S,
    )


def image_count(stack: Stack) -> int:
    count: int = requests.get(
        f"{stack.gateway}/api/v1/stats", headers=stack.auth, timeout=HTTP_TIMEOUT_S
    ).json()["images"]
    return count


def delete(stack: Stack, image_ids: list[int]) -> None:
    for image_id in image_ids:
        requests.delete(
            f"{stack.gateway}/api/v1/images/{image_id}", headers=stack.auth, timeout=HTTP_TIMEOUT_S
        )


def test_a_mixed_batch_indexes_the_good_images_and_says_what_is_wrong_with_each(
    stack: Stack, indexed: list[Indexed]
) -> None:
    new, too_big = fresh_png(), io.BytesIO()
    large = Image.new("L", (2100, 2100), 40)  # over the embedder's pixel limit, under the catalog's
    large.paste(Image.frombytes("L", (16, 16), secrets.token_bytes(256)))  # bytes of its own
    large.save(too_big, format="PNG")
    known = indexed[5]
    cases = [  # (bytes, metadata, status, problem type or None)
        (new, {"dataset": "batch", "sex": "f"}, 201, None),
        (new, {"dataset": "batch"}, 200, None),  # the same bytes again in one batch
        (known.path.read_bytes(), {"dataset": "nih"}, 200, None),  # indexed long ago
        (new[:-30] + b"\x00" * 30, {"dataset": "batch"}, 422, "image-rejected"),  # corrupt
        (fresh_png(), {"dataset": "batch", "age": 300}, 422, "image-rejected"),  # bad metadata
        (too_big.getvalue(), {"dataset": "batch"}, 422, "stored-but-rejected"),  # the model refuses it
        # A DICOM the catalog does not keep: not a radiograph.
        (
            dicom(np.zeros((32, 32), dtype=np.uint8), modality="MR"),
            {"dataset": "batch"},
            422,
            "image-rejected",
        ),
        (b"", {"dataset": "batch"}, 400, "invalid-request"),
        (b"%PDF-1.7 not an image", {"dataset": "batch"}, 415, "unsupported-upload"),
    ]
    before = image_count(stack)
    response = send_batch(stack, [data for data, *_ in cases], [meta for _, meta, *_ in cases])
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    stored = {item["image"]["id"] for item in items if "image" in item}
    stored |= {item["image_id"] for item in items if "image_id" in item}
    try:
        assert [item["index"] for item in items] == list(range(len(cases)))
        assert [item["status"] for item in items] == [status for _, _, status, _ in cases]
        for item, (_, _, _, kind) in zip(items, cases, strict=True):
            if kind is None:
                assert item["indexed"] is True and item["image"]["index_state"] == "indexed"
            else:
                assert item["type"] == PROBLEM + kind and item["detail"], item
        first, again, old = items[0], items[1], items[2]
        assert first["image"]["metadata"]["sex"] == "F" and first["already_indexed"] is False
        assert again["image"]["id"] == first["image"]["id"] and again["already_indexed"] is True
        assert old["image"]["id"] == known.image_id and old["already_indexed"] is True
        assert "age" in items[4]["detail"]
        refused = items[5]
        assert refused["index_state"] == "failed" and "pixels" in refused["detail"]
        # Only the new image and the one the model refuses were stored.
        assert image_count(stack) == before + 2
        record = requests.get(
            f"{stack.gateway}/api/v1/images/{refused['image_id']}", headers=stack.auth, timeout=30
        ).json()
        assert record["index_state"] == "failed"
        hits = search(stack, new, k=1).json()["results"]
        assert hits[0]["image"]["id"] == first["image"]["id"] and hits[0]["score"] > 0.999
    finally:
        delete(stack, sorted(stored - {known.image_id}))


@pytest.mark.parametrize(
    ("count", "metadata", "says"),
    [
        (2, None, "metadata"),
        (2, "not json", "not valid JSON"),
        (2, {"dataset": "batch"}, "JSON array"),
        (2, [{"dataset": "batch"}], "one object per image"),
        (33, [{"dataset": "batch"}] * 33, "1 to 32 files"),
    ],
)
def test_a_malformed_batch_is_a_400_and_stores_nothing(
    stack: Stack, indexed: list[Indexed], count: int, metadata: Any, says: str
) -> None:
    before = image_count(stack)
    response = send_batch(stack, [fresh_png(16) for _ in range(count)], metadata)
    assert response.status_code == 400, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert says in response.json()["detail"]
    assert image_count(stack) == before


def test_a_batch_with_no_image_or_not_multipart_is_a_400(stack: Stack) -> None:
    url = f"{stack.gateway}/api/v1/images/batch"
    empty = requests.post(
        url, files={"other": ("x", b"x")}, data={"metadata": "[]"}, headers=stack.auth, timeout=30
    )
    assert empty.status_code == 400 and "'image'" in empty.json()["detail"]
    not_multipart = requests.post(url, json={"image": "x"}, headers=stack.auth, timeout=30)
    assert not_multipart.status_code == 400 and "multipart/form-data" in not_multipart.json()["detail"]


def test_a_batch_cut_short_stays_pending_and_sending_it_again_completes_it(
    stack: Stack, indexed: list[Indexed], restore_proxies: None
) -> None:
    images = [fresh_png() for _ in range(3)]
    metadata = [{"dataset": "batch-retry", "patient_id": f"p{i}"} for i in range(3)]
    stack.proxies["search"].cut()
    cut = send_batch(stack, images, metadata)
    stack.proxies["search"].restore()
    assert cut.status_code == 200, cut.text
    items = cut.json()["items"]
    image_ids = [item.get("image_id") for item in items]
    try:
        for item in items:
            assert item["status"] == 503 and item["type"] == PROBLEM + "ingest-incomplete"
            assert item["dependency"] == "search" and item["index_state"] == "pending"
        pending = requests.get(
            f"{stack.gateway}/api/v1/pending", params={"limit": 500}, headers=stack.auth, timeout=30
        ).json()
        assert {item["id"] for item in pending["items"]} >= set(image_ids)

        again = send_batch(stack, images, metadata).json()["items"]
        assert [item["status"] for item in again] == [200, 200, 200]
        assert [item["image"]["id"] for item in again] == image_ids
        assert all(item["already_indexed"] is False and item["indexed"] for item in again)
        for data, image_id in zip(images, image_ids, strict=True):
            assert search(stack, data, k=1).json()["results"][0]["image"]["id"] == image_id
    finally:
        delete(stack, [i for i in image_ids if i is not None])


def test_the_catalog_down_refuses_the_whole_batch_naming_it(
    stack: Stack, indexed: list[Indexed], restore_proxies: None
) -> None:
    stack.proxies["catalog"].cut()
    response = send_batch(stack, [fresh_png()], [{"dataset": "batch"}])
    stack.proxies["catalog"].restore()
    assert response.status_code == 503 and response.json()["dependency"] == "catalog"
