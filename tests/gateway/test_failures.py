"""Bad input and broken dependencies, through the real gateway process and real services.

Bad input: a 4xx problem+json saying what was wrong, nothing stored, and the gateway still
serving. A service down (its proxy cut) or hung: 503/504 naming it, within the timeouts.
"""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from medsearch_common.settings import Binding
from medsearch_gateway.app import create_app
from medsearch_gateway.settings import GatewaySettings, Upstream
from tests.embedder.dicoms import dicom
from tests.gateway.conftest import HTTP_TIMEOUT_S, Indexed, Stack, ingest, search
from tests.gateway.test_batch import image_count

pytestmark = pytest.mark.integration


def problem(response: requests.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["detail"]
    return body


def stats(stack: Stack) -> dict[str, Any]:
    body: dict[str, Any] = requests.get(
        f"{stack.gateway}/api/v1/stats", headers=stack.auth, timeout=HTTP_TIMEOUT_S
    ).json()
    return body


def png_bytes(size: tuple[int, int] = (64, 64), seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, size, dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, format="PNG")
    return out.getvalue()


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "form", "status", "says"),
    [
        ({}, {"k": "5"}, 400, "one file in the multipart field 'image'"),
        ({"image": ("a.png", b"")}, {}, 400, "empty"),
        ({"image": ("x-ray.png", b"%PDF-1.7 not an image")}, {}, 415, "not a PNG, JPEG or DICOM"),
        ({"image": ("x.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)}, {}, 422, "PNG"),
        ({"picture": ("a.png", png_bytes())}, {}, 400, "'image'"),
        ({"image": ("a.png", png_bytes())}, {"k": "0"}, 400, "k must be"),
        ({"image": ("a.png", png_bytes())}, {"k": "101"}, 400, "k must be"),
        ({"image": ("a.png", png_bytes())}, {"k": "ten"}, 400, "k must be"),
        ({"image": ("a.png", png_bytes())}, {"filter": "{sex: F}"}, 400, "not valid JSON"),
        ({"image": ("a.png", png_bytes())}, {"filter": "[1]"}, 400, "JSON object"),
        ({"image": ("a.png", png_bytes())}, {"filter": '{"colour": ["red"]}'}, 400, "colour"),
        ({"image": ("a.png", png_bytes())}, {"filter": '{"age": {"min": "old"}}'}, 400, "age"),
        ({"image": ("a.png", png_bytes())}, {"filter": '{"sex": "F\\" or 1==1"}'}, 400, "sex"),
        ({"image": ("a.png", png_bytes())}, {"one_per_patient": "maybe"}, 400, "one_per_patient"),
    ],
)
def test_a_bad_search_is_a_clear_4xx(
    stack: Stack, files: dict[str, Any], form: dict[str, str], status: int, says: str
) -> None:
    response = requests.post(
        f"{stack.gateway}/api/v1/search",
        files=files or {"other": ("", b"")},
        data=form,
        headers=stack.auth,
        timeout=HTTP_TIMEOUT_S,
    )
    assert says in problem(response, status)["detail"]


def test_a_search_that_is_not_multipart_is_refused(stack: Stack) -> None:
    response = requests.post(
        f"{stack.gateway}/api/v1/search", json={"image": "x"}, headers=stack.auth, timeout=30
    )
    assert "multipart/form-data" in problem(response, 400)["detail"]


@pytest.mark.parametrize(
    ("metadata", "status", "says"),
    [
        (None, 400, "metadata"),
        ("not json", 400, "not valid JSON"),
        (json.dumps({"patient_id": "p1"}), 422, "dataset"),
        (json.dumps({"dataset": "x", "age": 300}), 422, "age"),
        (json.dumps({"dataset": "x", "colour": "red"}), 422, "colour"),
    ],
)
def test_bad_metadata_stores_nothing(
    stack: Stack, indexed: list[Indexed], metadata: str | None, status: int, says: str
) -> None:
    before = stats(stack)["images"]
    form = {} if metadata is None else {"metadata": metadata}
    response = requests.post(
        f"{stack.gateway}/api/v1/images",
        files={"image": ("a.png", png_bytes(seed=99))},
        data=form,
        headers=stack.auth,
        timeout=HTTP_TIMEOUT_S,
    )
    assert says in problem(response, status)["detail"]
    assert stats(stack)["images"] == before


def test_an_image_the_model_refuses_is_stored_marked_failed_and_named(
    stack: Stack, indexed: list[Indexed]
) -> None:
    side = 2100  # over the embedder's pixel limit in this stack, under the catalog's
    data = io.BytesIO()
    Image.new("L", (side, side), 40).save(data, format="PNG")
    response = requests.post(
        f"{stack.gateway}/api/v1/images",
        files={"image": ("big.png", data.getvalue())},
        data={"metadata": json.dumps({"dataset": "too-big"})},
        headers=stack.auth,
        timeout=HTTP_TIMEOUT_S,
    )
    body = problem(response, 422)
    assert body["type"].endswith("stored-but-rejected") and body["index_state"] == "failed"
    assert "too many pixels" in body["detail"]
    record = requests.get(
        f"{stack.gateway}/api/v1/images/{body['image_id']}", headers=stack.auth, timeout=30
    ).json()
    assert record["index_state"] == "failed"
    assert (
        requests.delete(
            f"{stack.gateway}/api/v1/images/{body['image_id']}", headers=stack.auth, timeout=30
        ).status_code
        == 204
    )


def test_a_dicom_can_be_searched_and_previewed_and_one_not_a_radiograph_is_not_added(
    stack: Stack, indexed: list[Indexed]
) -> None:
    item = indexed[0]
    with Image.open(item.path) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.uint8)
    data = dicom(pixels)
    hits = search(stack, data, k=1).json()["results"]
    assert hits[0]["image"]["id"] == item.image_id and hits[0]["score"] > 0.99
    preview = requests.post(
        f"{stack.gateway}/api/v1/previews", files={"image": ("q.dcm", data)}, headers=stack.auth, timeout=60
    )
    assert preview.status_code == 200 and preview.headers["Content-Type"] == "image/png"
    with Image.open(io.BytesIO(preview.content)) as rendered:
        assert max(rendered.size) <= 1024
    before = image_count(stack)
    added = requests.post(
        f"{stack.gateway}/api/v1/images",
        files={"image": ("q.dcm", dicom(pixels, modality="MR"))},
        data={"metadata": json.dumps({"dataset": "dicom"})},
        headers=stack.auth,
        timeout=60,
    )
    assert "modality MR" in problem(added, 422)["detail"]
    assert image_count(stack) == before


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/v1/images/0", 400),
        ("/api/v1/images/abc", 400),
        ("/api/v1/images/99999999999999999999", 400),
        ("/api/v1/images/987654321", 404),
        ("/api/v1/images/987654321/file", 404),
        ("/api/v1/images/987654321/thumbnail", 404),
        ("/api/v1/images/987654321/similar", 404),
        ("/api/v1/images/1/similar?k=500", 400),
        ("/api/v1/images/1/similar?filter=%7Bbad", 400),
        ("/api/v1/images/1/similar?colour=red", 400),
        ("/api/v1/images?colour=red", 400),
        ("/api/v1/images?limit=100000", 400),
        ("/api/v1/nothing-here", 404),
    ],
)
def test_bad_reads_are_clear_4xx(stack: Stack, indexed: list[Indexed], path: str, status: int) -> None:
    problem(requests.get(f"{stack.gateway}{path}", headers=stack.auth, timeout=HTTP_TIMEOUT_S), status)


def test_more_like_an_image_not_yet_indexed_is_a_conflict(stack: Stack, indexed: list[Indexed]) -> None:
    # Stored directly in the catalog: the image has no vector yet.
    added = requests.post(
        f"{stack.urls['catalog']}/v1/images",
        files={"file": ("a.png", png_bytes(seed=7))},
        data={"metadata": json.dumps({"dataset": "pending"})},
        timeout=30,
    )
    image_id = added.json()["id"]
    response = requests.get(
        f"{stack.gateway}/api/v1/images/{image_id}/similar", headers=stack.auth, timeout=HTTP_TIMEOUT_S
    )
    assert "no vector" in problem(response, 409)["detail"]
    assert (
        requests.get(f"{stack.gateway}/api/v1/images/{image_id}", headers=stack.auth, timeout=30).json()[
            "index_state"
        ]
        == "pending"
    )
    requests.delete(f"{stack.urls['catalog']}/v1/images/{image_id}", timeout=30)


# -- a dependency down --------------------------------------------------------------------------


@pytest.mark.parametrize("down", ["embedder", "search", "catalog"])
def test_a_service_down_is_a_503_naming_it(
    stack: Stack, indexed: list[Indexed], restore_proxies: None, down: str
) -> None:
    query = indexed[0].path.read_bytes()
    stack.proxies[down].cut()
    answer = search(stack, query, k=3)
    body, problem_headers = problem(answer, 503), answer.headers
    assert body["dependency"] == down and down in body["detail"]
    assert "127.0.0.1" not in body["detail"]  # internal addresses stay in the logs
    assert int(problem_headers["Retry-After"]) >= 1
    # The gateway stays in service, degraded: its UI is up and each call names what is down.
    ready = requests.get(f"{stack.gateway}/readyz", headers=stack.auth, timeout=HTTP_TIMEOUT_S)
    assert ready.status_code == 200 and ready.json()["status"] == "degraded"
    if down != "catalog":  # with the catalog down no admin can be verified: the public answer
        assert ready.json()["checks"][down] != "ok"
    assert requests.get(f"{stack.gateway}/signin", timeout=HTTP_TIMEOUT_S).status_code == 200
    stack.proxies[down].restore()
    assert search(stack, query, k=3).status_code == 200


def test_an_ingest_cut_short_stays_pending_and_a_retry_completes_it(
    stack: Stack, indexed: list[Indexed], restore_proxies: None, test_data: Path
) -> None:
    photo = test_data / "negatives" / "images" / "camera.png"
    stack.proxies["search"].cut()
    response = ingest(stack, photo, {"dataset": "retry"})
    body = problem(response, 503)
    assert body["dependency"] == "search" and body["index_state"] == "pending"
    image_id = body["image_id"]
    record = requests.get(f"{stack.gateway}/api/v1/images/{image_id}", headers=stack.auth, timeout=30).json()
    assert record["index_state"] == "pending"
    # No vector exists without its row, and none was written for this one.
    model_id = stats(stack)["model"]["model_id"]
    stack.proxies["search"].restore()
    vector = requests.get(f"{stack.urls['search']}/v1/models/{model_id}/vectors/{image_id}", timeout=30)
    assert vector.status_code == 404

    retried = ingest(stack, photo, {"dataset": "retry"})
    assert retried.status_code == 200, retried.text
    assert retried.json()["image"]["id"] == image_id and retried.json()["image"]["index_state"] == "indexed"
    assert search(stack, photo.read_bytes(), k=1).json()["results"][0]["image"]["id"] == image_id
    assert (
        requests.delete(
            f"{stack.gateway}/api/v1/images/{image_id}", headers=stack.auth, timeout=HTTP_TIMEOUT_S
        ).status_code
        == 204
    )


def test_a_pending_image_is_listed_and_indexed_on_request(
    stack: Stack, indexed: list[Indexed], restore_proxies: None, test_data: Path
) -> None:
    photo = test_data / "negatives" / "images" / "retina.jpg"
    stack.proxies["embedder"].cut()
    image_id = problem(ingest(stack, photo, {"dataset": "reindex"}), 503)["image_id"]
    stack.proxies["embedder"].restore()
    try:
        pending = requests.get(
            f"{stack.gateway}/api/v1/pending", params={"limit": 500}, headers=stack.auth, timeout=30
        ).json()
        assert [item["id"] for item in pending["items"]] == [image_id]
        assert pending["model_id"] == stats(stack)["model"]["model_id"] and pending["next_cursor"] is None

        indexed_now = requests.post(
            f"{stack.gateway}/api/v1/images/{image_id}/index", headers=stack.auth, timeout=HTTP_TIMEOUT_S
        )
        assert indexed_now.status_code == 200, indexed_now.text
        assert indexed_now.json()["already_indexed"] is False
        assert indexed_now.json()["image"]["index_state"] == "indexed"
        assert (
            requests.get(f"{stack.gateway}/api/v1/pending", headers=stack.auth, timeout=30).json()["items"]
            == []
        )
        hit = search(stack, photo.read_bytes(), k=1).json()["results"][0]
        assert hit["image"]["id"] == image_id and hit["score"] > 0.999
        again = requests.post(
            f"{stack.gateway}/api/v1/images/{image_id}/index", headers=stack.auth, timeout=HTTP_TIMEOUT_S
        )
        assert again.json()["already_indexed"] is True
        # Forced: the vector is written again even though the catalog says it is there.
        model_id = pending["model_id"]
        requests.delete(f"{stack.urls['search']}/v1/models/{model_id}/vectors/{image_id}", timeout=30)
        forced = requests.post(
            f"{stack.gateway}/api/v1/images/{image_id}/index?force=true",
            headers=stack.auth,
            timeout=HTTP_TIMEOUT_S,
        )
        assert forced.status_code == 200 and forced.json()["already_indexed"] is False
        vector = requests.get(f"{stack.urls['search']}/v1/models/{model_id}/vectors/{image_id}", timeout=30)
        assert vector.status_code == 200
    finally:
        requests.delete(
            f"{stack.gateway}/api/v1/images/{image_id}", headers=stack.auth, timeout=HTTP_TIMEOUT_S
        )
    problem(
        requests.post(f"{stack.gateway}/api/v1/images/{image_id}/index", headers=stack.auth, timeout=30), 404
    )
    problem(requests.get(f"{stack.gateway}/api/v1/pending?colour=red", headers=stack.auth, timeout=30), 400)


def test_stats_without_the_embedder_still_count(
    stack: Stack, indexed: list[Indexed], restore_proxies: None
) -> None:
    stack.proxies["embedder"].cut()
    body = stats(stack)
    assert body["model"] is None and body["images"] >= len(indexed)


@pytest.fixture
def hung_service() -> Iterator[str]:
    """A listener that accepts connections and never answers: a service that hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()
    for conn in accepted:
        conn.close()


def test_a_hung_embedder_is_a_504_within_its_timeout(stack: Stack, hung_service: str) -> None:
    settings = GatewaySettings(
        binding=Binding("127.0.0.1", 0),
        embedder=Upstream("embedder", hung_service, timeout_s=0.5),
        search=Upstream("search", stack.urls["search"], timeout_s=5),
        catalog=Upstream("catalog", stack.urls["catalog"], timeout_s=5),
        attempts=1,
    )
    client = create_app(settings).test_client()
    response = client.post(
        "/api/v1/search",
        data={"image": (io.BytesIO(png_bytes()), "a.png")},
        content_type="multipart/form-data",
        headers=stack.auth,
    )
    assert response.status_code == 504 and response.mimetype == "application/problem+json"
    assert response.json is not None and response.json["dependency"] == "embedder"
