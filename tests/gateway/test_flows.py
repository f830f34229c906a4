"""The whole system through the gateway's public API: ingest, search, more like this, delete.

All four services run as processes on their real parts (PostgreSQL, Milvus Lite, TensorFlow
with random weights). Random weights make the vectors a fingerprint of the pixels, not of
the anatomy: an image finds itself and its own re-encodings, which is what is checked here.
"""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.gateway.conftest import (
    HTTP_TIMEOUT_S,
    Indexed,
    Stack,
    ingest,
    ingest_shared_sets,
    jpeg_half_size,
    medsearch,
    search,
)

pytestmark = pytest.mark.integration


def hits_of(response: requests.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    assert [hit["rank"] for hit in results] == list(range(1, len(results) + 1))
    return results


def test_every_image_ingested_is_indexed_and_counted(stack: Stack, indexed: list[Indexed]) -> None:
    assert len({item.image_id for item in indexed}) == len(indexed) == 303 + 104
    stats = requests.get(f"{stack.gateway}/api/v1/stats", headers=stack.auth, timeout=HTTP_TIMEOUT_S).json()
    assert stats["images"] == len(indexed)
    assert stats["datasets"] == {"nih": 303, "hannover": 104}
    assert stats["index"] == {"indexed": len(indexed), "pending": 0, "failed": 0}
    assert stats["model"]["meaningful"] is False and stats["model"]["warning"]


def test_every_image_finds_itself_first(stack: Stack, indexed: list[Indexed]) -> None:
    def first_hit(item: Indexed) -> tuple[Indexed, dict[str, Any]]:
        return item, hits_of(search(stack, item.path.read_bytes(), k=3))[0]

    with ThreadPoolExecutor(4) as pool:
        firsts = list(pool.map(first_hit, indexed))
    misses = [
        (item.path.name, hit["image"]["id"], hit["score"])
        for item, hit in firsts
        if hit["image"]["id"] != item.image_id
    ]
    assert not misses, misses
    low = [(item.path.name, hit["score"]) for item, hit in firsts if hit["score"] < 0.999]
    assert not low, low


def test_a_result_carries_the_catalog_record_and_urls(stack: Stack, indexed: list[Indexed]) -> None:
    item = indexed[0]
    hit = hits_of(search(stack, item.path.read_bytes(), k=1))[0]
    image = hit["image"]
    assert image["metadata"]["external_id"] == item.metadata["external_id"]
    assert image["metadata"]["findings"] == item.metadata["findings"]
    assert image["index_state"] == "indexed"
    thumbnail = requests.get(
        f"{stack.gateway}{image['thumbnail_url']}", headers=stack.auth, timeout=HTTP_TIMEOUT_S
    )
    assert thumbnail.status_code == 200 and thumbnail.headers["Content-Type"].startswith("image/")
    original = requests.get(f"{stack.gateway}{image['file_url']}", headers=stack.auth, timeout=HTTP_TIMEOUT_S)
    assert original.content == item.path.read_bytes()
    again = requests.get(
        f"{stack.gateway}{image['file_url']}",
        headers={**stack.auth, "If-None-Match": original.headers["ETag"]},
        timeout=30,
    )
    assert again.status_code == 304


@pytest.mark.parametrize("which", [0, 1, 2, 303, 350, 406])
def test_a_half_size_jpeg_finds_its_original(stack: Stack, indexed: list[Indexed], which: int) -> None:
    item = indexed[which]
    hit = hits_of(search(stack, jpeg_half_size(item.path), k=5))[0]
    assert hit["image"]["id"] == item.image_id


def test_filters_are_honored(stack: Stack, indexed: list[Indexed]) -> None:
    query = indexed[0].path.read_bytes()
    wanted = {"sex": ["F"], "age": {"min": 30, "max": 60}, "findings": {"any": ["Effusion", "Mass"]}}
    hits = hits_of(search(stack, query, k=100, filter=wanted))
    expected = {
        item.image_id
        for item in indexed
        if item.metadata.get("sex") == "F"
        and 30 <= (item.metadata.get("age") or -1) <= 60
        and {"Effusion", "Mass"} & set(item.metadata["findings"])
    }
    assert expected and {hit["image"]["id"] for hit in hits} == expected


def test_one_per_patient_keeps_each_patient_once(stack: Stack, indexed: list[Indexed]) -> None:
    hannover = [item for item in indexed if item.metadata["dataset"] == "hannover"]
    patients = Counter(item.metadata["patient_id"] for item in hannover)
    query = hannover[0].path.read_bytes()
    every = hits_of(search(stack, query, k=100, filter={"dataset": ["hannover"]}))
    assert len(every) == 100 and len({hit["image"]["metadata"]["patient_id"] for hit in every}) < 100
    once = hits_of(search(stack, query, k=100, filter={"dataset": ["hannover"]}, one_per_patient="true"))
    seen = [hit["image"]["metadata"]["patient_id"] for hit in once]
    assert len(seen) == len(set(seen)) == len(patients)
    # Each patient's best image is the one kept: the query's own image comes first.
    assert once[0]["image"]["id"] == hannover[0].image_id


def test_more_like_this_leaves_the_image_out(stack: Stack, indexed: list[Indexed]) -> None:
    item = indexed[5]
    response = requests.get(
        f"{stack.gateway}/api/v1/images/{item.image_id}/similar",
        params={"k": 10, "filter": json.dumps({"dataset": ["nih"]})},
        headers=stack.auth,
        timeout=HTTP_TIMEOUT_S,
    )
    hits = hits_of(response)
    assert response.json()["query"] == {"image_id": item.image_id}
    assert len(hits) == 10 and item.image_id not in {hit["image"]["id"] for hit in hits}
    assert {hit["image"]["metadata"]["dataset"] for hit in hits} == {"nih"}
    # The same neighbours as an upload of the image, minus the image itself.
    upload = hits_of(search(stack, item.path.read_bytes(), k=11, filter={"dataset": ["nih"]}))
    assert [hit["image"]["id"] for hit in upload[1:]] == [hit["image"]["id"] for hit in hits]


def test_a_photo_can_be_searched(stack: Stack, indexed: list[Indexed], test_data: Path) -> None:
    for name in ("astronaut.png", "retina.jpg", "microaneurysms.png"):
        hits = hits_of(search(stack, (test_data / "negatives" / "images" / name).read_bytes(), k=5))
        assert len(hits) == 5 and all(hit["score"] < 0.999 for hit in hits)


def test_adding_the_same_image_again_changes_nothing(stack: Stack, indexed: list[Indexed]) -> None:
    item = indexed[10]
    response = ingest(stack, item.path, item.metadata)
    assert response.status_code == 200, response.text
    assert response.json()["image"]["id"] == item.image_id
    stats = requests.get(f"{stack.gateway}/api/v1/stats", headers=stack.auth, timeout=HTTP_TIMEOUT_S).json()
    assert stats["images"] == len(indexed)


def test_browse_lists_images_with_urls(stack: Stack, indexed: list[Indexed]) -> None:
    response = requests.get(
        f"{stack.gateway}/api/v1/images",
        params={"dataset": "hannover", "limit": 7},
        headers=stack.auth,
        timeout=HTTP_TIMEOUT_S,
    )
    assert response.status_code == 200, response.text
    page = response.json()
    assert len(page["items"]) == 7 and page["next_cursor"]
    assert {image["metadata"]["dataset"] for image in page["items"]} == {"hannover"}
    assert all(image["thumbnail_url"].endswith("/thumbnail") for image in page["items"])


def test_deleting_removes_the_vector_and_the_row(
    stack: Stack, indexed: list[Indexed], test_data: Path
) -> None:
    photo = test_data / "negatives" / "images" / "coffee.png"
    added = ingest(stack, photo, {"dataset": "to-delete"})
    assert added.status_code == 201, added.text
    image_id = added.json()["image"]["id"]
    assert hits_of(search(stack, photo.read_bytes(), k=1))[0]["image"]["id"] == image_id

    assert (
        requests.delete(
            f"{stack.gateway}/api/v1/images/{image_id}", headers=stack.auth, timeout=HTTP_TIMEOUT_S
        ).status_code
        == 204
    )
    assert (
        requests.get(f"{stack.gateway}/api/v1/images/{image_id}", headers=stack.auth, timeout=30).status_code
        == 404
    )
    similar = requests.get(
        f"{stack.gateway}/api/v1/images/{image_id}/similar", headers=stack.auth, timeout=HTTP_TIMEOUT_S
    )
    assert similar.status_code == 404
    vector = requests.get(
        f"{stack.urls['search']}/v1/models/{added.json()['model_id']}/vectors/{image_id}", timeout=30
    )
    assert vector.status_code == 404
    hits = hits_of(search(stack, photo.read_bytes(), k=3))
    assert image_id not in {hit["image"]["id"] for hit in hits}
    assert (
        requests.delete(
            f"{stack.gateway}/api/v1/images/{image_id}", headers=stack.auth, timeout=30
        ).status_code
        == 404
    )


def test_ingesting_the_same_sets_again_indexes_nothing_new(
    stack: Stack, indexed: list[Indexed], test_data: Path
) -> None:
    assert ingest_shared_sets(stack, test_data) == [
        "0 new, 0 completed, 303 already indexed, 0 failed",
        "0 new, 0 completed, 104 already indexed, 0 failed",
    ]
    stats = requests.get(f"{stack.gateway}/api/v1/stats", headers=stack.auth, timeout=HTTP_TIMEOUT_S).json()
    assert stats["images"] == len(indexed)


def test_the_command_line_searches_and_reindexes(stack: Stack, indexed: list[Indexed]) -> None:
    item = indexed[303]
    found = medsearch(stack, "search", str(item.path), "--k", "3", "--json")
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["results"][0]["image"]["id"] == item.image_id
    table = medsearch(stack, "search", str(item.path), "--k", "3")
    assert item.metadata["external_id"] in table.stdout and "Random weights" in table.stderr
    reindexed = medsearch(stack, "reindex", "--include-failed")
    assert reindexed.returncode == 0, reindexed.stderr
    assert reindexed.stdout.strip().splitlines()[-1] == "0 new, 0 completed, 0 already indexed, 0 failed"
