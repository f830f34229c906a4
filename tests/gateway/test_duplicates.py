"""`medsearch duplicates` and `POST /api/v1/duplicates` against the real stack.

Re-encoded copies of three indexed images are planted: two of one image under its own patient
(one in each of two splits), one of another under its own patient, and one of a third under
another patient. At the default threshold, measured for this model, every planted pair is found
with its kind and no other pair of the shared sets is. Splits flag the clusters that cross them;
bad thresholds, split files naming unknown images, a search service cut off and callers
without an identity get clear refusals, and nothing half-written. The copies are deleted at
the end: the session's stack is left as it was found.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from medsearch_gateway.duplicates import DEFAULT_THRESHOLD
from tests.gateway.conftest import HTTP_TIMEOUT_S, Indexed, Stack, jpeg_half_size, medsearch
from tests.support.id_ranges import BAD_THRESHOLDS, range_rows_for

pytestmark = pytest.mark.integration

DUPLICATES = "/api/v1/duplicates"
# Indexes into `indexed`: two NIH images and one Hannover image of a patient with several.
A, B, C = 0, 5, 303 + 1


@dataclass(frozen=True)
class Planted:
    ids: dict[str, int]  # "A", "A1", "A2", "B", "B1", "C", "C1" -> image ID
    external_ids: dict[str, str]
    pairs: dict[tuple[int, int], str]  # every planted pair -> its kind

    def cluster(self, *names: str) -> list[int]:
        return sorted(self.ids[name] for name in names)


def key(first: int, second: int) -> tuple[int, int]:
    """A pair as the API gives it: the lower image ID first."""
    return min(first, second), max(first, second)


def jpeg_full_size(path: Path, quality: int = 75) -> bytes:
    with Image.open(path) as image:
        gray = image.convert("L")
    out = io.BytesIO()
    gray.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def add(stack: Stack, data: bytes, metadata: dict[str, Any]) -> int:
    response = requests.post(
        f"{stack.gateway}/api/v1/images",
        files={"image": ("copy.jpg", data)},
        data={"metadata": json.dumps(metadata)},
        headers=stack.auth_as("editor"),
        timeout=HTTP_TIMEOUT_S,
    )
    assert response.status_code == 201, response.text
    image_id: int = response.json()["image"]["id"]
    return image_id


@pytest.fixture(scope="module")
def planted(stack: Stack, indexed: list[Indexed]) -> Iterator[Planted]:
    originals = {"A": indexed[A], "B": indexed[B], "C": indexed[C]}
    copies: dict[str, tuple[str, bytes, dict[str, Any]]] = {
        "A1": ("A", jpeg_half_size(originals["A"].path), {"extra": {"split": "train"}}),
        "A2": ("A", jpeg_full_size(originals["A"].path), {"extra": {"split": "test"}}),
        "B1": ("B", jpeg_half_size(originals["B"].path), {}),
        "C1": ("C", jpeg_half_size(originals["C"].path), {"patient_id": "planted-other-patient"}),
    }
    ids = {name: item.image_id for name, item in originals.items()}
    external_ids = {name: str(item.metadata["external_id"]) for name, item in originals.items()}
    try:
        for name, (of, data, changes) in copies.items():
            source = originals[of].metadata
            external_ids[name] = f"planted-{name}-{source['external_id']}"
            metadata = {
                "dataset": source["dataset"],
                "external_id": external_ids[name],
                "patient_id": source["patient_id"],
                **changes,
            }
            ids[name] = add(stack, data, metadata)
        kinds = {"A1": "same_patient", "A2": "same_patient", "B1": "same_patient", "C1": "different_patients"}
        pairs = {key(ids[name[0]], ids[name]): kind for name, kind in kinds.items()}
        pairs[key(ids["A1"], ids["A2"])] = "same_patient"
        yield Planted(ids, external_ids, pairs)
    finally:
        for name in copies:
            if name in ids:
                requests.delete(
                    f"{stack.gateway}/api/v1/images/{ids[name]}", headers=stack.auth, timeout=HTTP_TIMEOUT_S
                )


def duplicates(stack: Stack, body: Any, role: str | None = "reader") -> requests.Response:
    headers = stack.auth_as(role) if role else {}
    return requests.post(f"{stack.gateway}{DUPLICATES}", json=body, headers=headers, timeout=HTTP_TIMEOUT_S)


def clusters_of(document: dict[str, Any]) -> list[tuple[list[int], list[str]]]:
    return [([member["id"] for member in c["members"]], c["kinds"]) for c in document["clusters"]]


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


# -- what is found --------------------------------------------------------------------------


def test_every_planted_copy_is_found_with_its_kind_and_nothing_else(stack: Stack, planted: Planted) -> None:
    found = medsearch(stack, "duplicates", "--format", "json", role="reader")
    assert found.returncode == 0, found.stderr
    document = json.loads(found.stdout)
    assert document["threshold"] == DEFAULT_THRESHOLD and document["k"] == 10
    assert document["vectors"] >= 407 + 4
    assert clusters_of(document) == sorted(
        [
            (planted.cluster("A", "A1", "A2"), ["same_patient"]),
            (planted.cluster("B", "B1"), ["same_patient"]),
            (planted.cluster("C", "C1"), ["different_patients"]),
        ]
    )
    pairs = {(p["a"], p["b"]): p for c in document["clusters"] for p in c["pairs"]}
    assert {key: p["kind"] for key, p in pairs.items()} == planted.pairs
    assert all(DEFAULT_THRESHOLD <= p["score"] <= 1.0001 for p in pairs.values())
    assert "5 pairs in 3 clusters: 4 same patient, 1 different patients" in found.stderr


def test_the_api_lists_a_ranges_pairs_with_their_images_for_review(stack: Stack, planted: Planted) -> None:
    response = duplicates(stack, {"from": 0, "to": 16_000})
    assert response.status_code == 200, response.text
    body = response.json()
    assert {(p["a"], p["b"]): p["kind"] for p in body["pairs"]} == planted.pairs
    assert [image["id"] for image in body["images"]] == sorted(planted.ids.values())
    assert all(image["thumbnail_url"].endswith("/thumbnail") for image in body["images"])
    assert body["max_image_id"] >= max(planted.ids.values()) and body["threshold"] == DEFAULT_THRESHOLD
    # A range that holds only A's copy still finds its pairs with images of other ranges.
    a1 = planted.ids["A1"]
    narrow = duplicates(stack, {"from": a1, "to": a1 + 1, "k": 3}).json()
    assert {(p["a"], p["b"]) for p in narrow["pairs"]} == {
        key(a1, planted.ids["A"]),
        key(a1, planted.ids["A2"]),
    }
    assert narrow["vectors"] == 1 and narrow["k"] == 3


def test_an_empty_or_broken_body_is_400(stack: Stack) -> None:
    for data in (b"", b"{"):
        response = requests.post(
            f"{stack.gateway}{DUPLICATES}", data=data, headers=stack.auth_as("reader"), timeout=HTTP_TIMEOUT_S
        )
        assert response.status_code == 400, response.text
        assert "JSON" in response.json()["detail"]


def with_splits(
    stack: Stack, folder: Path, train: list[str], test: list[str], out: Path
) -> subprocess.CompletedProcess[str]:
    """`medsearch duplicates` as a reader, with a train and a test split file listing these names."""
    (folder / "train.txt").write_text("".join(f"{name}\n" for name in train))
    (folder / "test.txt").write_text("".join(f"{name}\n" for name in test))
    return medsearch(
        stack,
        "duplicates",
        "--split", f"train={folder / 'train.txt'}",
        "--split", f"test={folder / 'test.txt'}",
        "--out", str(out),
        role="reader",
    )  # fmt: skip


def test_split_files_flag_the_cluster_that_crosses_them(
    stack: Stack, planted: Planted, tmp_path: Path
) -> None:
    out = tmp_path / "duplicates.csv"
    found = with_splits(
        stack,
        tmp_path,
        [planted.external_ids["B"], planted.external_ids["A"]],
        [planted.external_ids["B1"]],
        out,
    )
    assert found.returncode == 0, found.stderr
    rows = csv_rows(out.read_text())
    kinds = {(int(row["a"]), int(row["b"])): row["cluster_kinds"] for row in rows}
    b_pair = key(planted.ids["B"], planted.ids["B1"])
    assert kinds.pop(b_pair) == "crosses_split same_patient"
    assert set(kinds.values()) == {"same_patient", "different_patients"}  # A's copies are in no split
    b_row = next(row for row in rows if (int(row["a"]), int(row["b"])) == b_pair)
    assert {b_row["a_split"], b_row["b_split"]} == {"train", "test"}
    assert {b_row["a_external_id"], b_row["b_external_id"]} == {
        planted.external_ids["B"],
        planted.external_ids["B1"],
    }
    assert "1 clusters cross a split" in found.stderr


def test_a_split_field_flags_the_cluster_whose_images_it_splits(stack: Stack, planted: Planted) -> None:
    found = medsearch(stack, "duplicates", "--split-field", "extra.split", "--format", "json", role="reader")
    assert found.returncode == 0, found.stderr
    kinds = {
        tuple(members): cluster_kinds for members, cluster_kinds in clusters_of(json.loads(found.stdout))
    }
    assert kinds[tuple(planted.cluster("A", "A1", "A2"))] == ["crosses_split", "same_patient"]
    assert kinds[tuple(planted.cluster("B", "B1"))] == ["same_patient"]


def test_two_scans_at_once_both_complete_alike(stack: Stack, planted: Planted) -> None:
    with ThreadPoolExecutor(2) as pool:
        runs = list(
            pool.map(lambda _: medsearch(stack, "duplicates", "--batch", "200", role="reader"), range(2))
        )
    assert [run.returncode for run in runs] == [0, 0], [run.stderr for run in runs]
    assert runs[0].stdout == runs[1].stdout and len(csv_rows(runs[0].stdout)) == len(planted.pairs)


def test_a_duplicates_scan_is_audited_as_a_browse_of_the_images_listed(
    stack: Stack, planted: Planted
) -> None:
    assert duplicates(stack, {"from": 0, "to": 16_000}).status_code == 200
    events = requests.get(
        f"{stack.gateway}/api/v1/audit",
        params={"action": "browse", "limit": 5},
        headers=stack.auth,
        timeout=HTTP_TIMEOUT_S,
    ).json()["items"]
    event = next(e for e in events if (e["detail"] or "").startswith("duplicates of image IDs 0-15999 at "))
    assert sorted(event["result_ids"]) == sorted(planted.ids.values())


# -- refusals -------------------------------------------------------------------------------


BAD_BODIES: list[tuple[Any, str]] = [
    *range_rows_for({"threshold", "k"}),
    *(({"from": 0, "to": 100, "threshold": value}, words) for value, words in BAD_THRESHOLDS),
    ({"from": 0, "to": 100, "k": 0}, "k must be between 1 and 50, got 0"),
    ({"from": 0, "to": 100, "k": 51}, "k must be between 1 and 50, got 51"),
    ({"from": 0, "to": 100, "repair": True}, "unknown field(s): repair; known: from, to, threshold, k"),
]


@pytest.mark.parametrize(("body", "words"), BAD_BODIES, ids=lambda v: repr(v)[:40])
def test_a_bad_duplicates_request_is_400_and_says_what_is_wrong(stack: Stack, body: Any, words: str) -> None:
    response = duplicates(stack, body)
    assert response.status_code == 400, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == "urn:medsearch:problem:invalid-request"
    assert words in problem["detail"], problem["detail"]


@pytest.mark.parametrize("threshold", ["0", "1.5", "x"])
def test_a_threshold_outside_0_to_1_is_exit_2(stack: Stack, threshold: str) -> None:
    result = medsearch(stack, "duplicates", "--threshold", threshold, role="reader")
    assert result.returncode == 2 and "--threshold" in result.stderr
    assert "greater than 0 and at most 1" in result.stderr and result.stdout == ""


def test_split_files_naming_unknown_images_are_exit_2_before_any_scan(
    stack: Stack, planted: Planted, tmp_path: Path
) -> None:
    out = tmp_path / "duplicates.csv"
    result = with_splits(
        stack, tmp_path, [planted.external_ids["A"], "no-such-image.png"], ["not-here-either.png"], out
    )
    assert result.returncode == 2, result.stderr
    assert "the split files name 2 image(s) the collection does not have" in result.stderr
    assert "no-such-image.png, not-here-either.png" in result.stderr
    assert "looking for near-duplicates" not in result.stderr and not out.exists()


def test_the_search_service_down_is_a_503_naming_it_and_a_later_run_completes(
    stack: Stack, planted: Planted, restore_proxies: None, tmp_path: Path
) -> None:
    out = tmp_path / "duplicates.csv"
    stack.proxies["search"].cut()
    down = duplicates(stack, {"from": 0, "to": 1000})
    assert down.status_code == 503, down.text
    assert down.json()["dependency"] == "search" and "search" in down.json()["detail"]
    failed = medsearch(stack, "duplicates", "--out", str(out), role="reader")
    assert failed.returncode == 1 and "HTTP 503, search" in failed.stderr
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing half-written
    stack.proxies["search"].restore()
    done = medsearch(stack, "duplicates", "--out", str(out), role="reader")
    assert done.returncode == 0, done.stderr
    assert len(csv_rows(out.read_text())) == len(planted.pairs)


def test_a_reader_may_scan_and_a_stranger_may_not(stack: Stack, planted: Planted) -> None:
    assert duplicates(stack, {"from": 0, "to": 10}, role="reader").status_code == 200
    refused = duplicates(stack, {"from": 0, "to": 10}, role=None)
    assert refused.status_code == 401, refused.text
    by_cli = medsearch(stack.gateway, "duplicates")
    assert by_cli.returncode == 1 and "HTTP 401" in by_cli.stderr
