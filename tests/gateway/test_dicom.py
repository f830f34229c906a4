"""DICOM ingest through the whole system: the gateway's API (one image and batches) and
`medsearch ingest` on a folder. The files are made from indexed NIH X-rays, full of identifying
marker strings: their twins find each other, one patient keeps one pseudonym, one-per-patient
search works on them, and no marker is left anywhere: in the catalog's database (rows, stored
files, thumbnails, the audit trail), in what the gateway serves, or in any service's log."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pydicom
import pytest
import requests

from tests.gateway.conftest import HTTP_TIMEOUT_S, Indexed, Stack, medsearch, search
from tests.support.identified_dicoms import IdentifiedDicom, Patient, gray_of, identified_dicom

pytestmark = pytest.mark.integration

DATASET = "dicom-gateway"
CLI_DATASET = "dicom-cli"
ANN = Patient("ZQXANNGW", sex="F", age="061Y")
BEN = Patient("ZQXBENGW", sex="M", age="034Y")
CAL = Patient("ZQXCALGW", sex="M", age="072Y")


@pytest.fixture(scope="module")
def twins(indexed: list[Indexed]) -> list[Indexed]:
    """Indexed 1024² NIH PNGs (8-bit gray) to make DICOM twins of."""
    return [item for item in indexed if item.path.parent.parent.name == "nih_cxr14"][10:14]


@pytest.fixture(scope="module")
def sent(stack: Stack) -> Iterator[list[IdentifiedDicom]]:
    """Every DICOM a test of this module sends; their images are deleted at the end."""
    made: list[IdentifiedDicom] = []
    yield made
    for dataset in (DATASET, CLI_DATASET):
        page = requests.get(
            f"{stack.gateway}/api/v1/images",
            params={"dataset": dataset, "limit": 100},
            headers=stack.auth,
            timeout=HTTP_TIMEOUT_S,
        ).json()
        for image in page["items"]:
            requests.delete(f"{stack.gateway}/api/v1/images/{image['id']}", headers=stack.auth, timeout=60)


def add(stack: Stack, made: IdentifiedDicom, metadata: dict[str, Any]) -> requests.Response:
    return requests.post(
        f"{stack.gateway}/api/v1/images",
        files={"image": ("x-ray.dcm", made.data)},
        data={"metadata": json.dumps(metadata)},
        headers=stack.auth,
        timeout=HTTP_TIMEOUT_S,
    )


def top_ids(stack: Stack, data: bytes, k: int, **form: Any) -> list[int]:
    response = search(stack, data, k=k, **form)
    assert response.status_code == 200, response.text
    return [hit["image"]["id"] for hit in response.json()["results"]]


def test_a_dicom_is_added_indexed_and_found_by_its_png_twin(
    stack: Stack, twins: list[Indexed], sent: list[IdentifiedDicom]
) -> None:
    twin = twins[0]
    made = identified_dicom(gray_of(twin.path), ANN, study="1", image="1")
    sent.append(made)
    response = add(stack, made, {"dataset": DATASET, "findings": ["Effusion"]})
    assert response.status_code == 201, response.text
    body = response.json()
    image = body["image"]
    assert body["indexed"] is True and image["index_state"] == "indexed"
    assert image["mime_type"] == "application/dicom"
    meta = image["metadata"]
    assert (meta["dataset"], meta["age"], meta["sex"], meta["view_position"]) == (DATASET, 61, "F", "PA")
    assert len(meta["patient_id"]) == 64 and meta["extra"] == {"modality": "DX"}

    # The twins find each other: the same pixels, so both come first, whichever is asked.
    assert set(top_ids(stack, twin.path.read_bytes(), 2)) == {twin.image_id, image["id"]}
    assert set(top_ids(stack, made.data, 2)) == {twin.image_id, image["id"]}

    # Sent again: the same de-identified bytes, so the same image, nothing more to do.
    again = add(stack, made, {"dataset": DATASET})
    assert again.status_code == 200 and again.json()["already_indexed"] is True
    assert again.json()["image"]["id"] == image["id"]

    # The file served is the de-identified DICOM; the UI shows it through /previews.
    served = requests.get(f"{stack.gateway}{image['file_url']}", headers=stack.auth, timeout=HTTP_TIMEOUT_S)
    assert served.status_code == 200 and served.headers["Content-Type"] == "application/dicom"
    assert hashlib.sha256(served.content).hexdigest() == image["sha256"]
    stored = pydicom.dcmread(io.BytesIO(served.content))
    assert stored.PatientIdentityRemoved == "YES" and stored.PatientID == meta["patient_id"]
    preview = requests.post(
        f"{stack.gateway}/api/v1/previews",
        files={"image": ("stored.dcm", served.content)},
        headers=stack.auth,
        timeout=HTTP_TIMEOUT_S,
    )
    assert preview.status_code == 200 and preview.headers["Content-Type"] == "image/png"
    # The DICOM's own size, for a region drawn on its (at most 1024 px) rendering.
    size = (int(preview.headers["X-Image-Width"]), int(preview.headers["X-Image-Height"]))
    assert size == (stored.Columns, stored.Rows)
    # Reindexing reads the stored DICOM back from the catalog.
    reindexed = requests.post(
        f"{stack.gateway}/api/v1/images/{image['id']}/index",
        params={"force": "true"},
        headers=stack.auth,
        timeout=HTTP_TIMEOUT_S,
    )
    assert reindexed.status_code == 200 and reindexed.json()["indexed"] is True


def test_a_batch_keeps_one_pseudonym_per_patient_and_refuses_what_is_not_a_radiograph(
    stack: Stack, twins: list[Indexed], sent: list[IdentifiedDicom]
) -> None:
    files = [
        identified_dicom(gray_of(twins[1].path), ANN, study="2", image="1"),
        identified_dicom(gray_of(twins[2].path), BEN, study="1", image="1"),
        identified_dicom(gray_of(twins[3].path), ANN, study="2", image="2"),
        identified_dicom(gray_of(twins[3].path), CAL, modality="MR"),
        identified_dicom(gray_of(twins[2].path), CAL, burned_in="YES"),
    ]
    sent.extend(files)
    response = requests.post(
        f"{stack.gateway}/api/v1/images/batch",
        files=[("image", (f"{i}.dcm", made.data)) for i, made in enumerate(files)],
        data={"metadata": json.dumps([{"dataset": DATASET}] * len(files))},
        headers=stack.auth,
        timeout=HTTP_TIMEOUT_S,
    )
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [item["status"] for item in items] == [201, 201, 201, 422, 422]
    assert "modality MR" in items[3]["detail"] and "burned-in" in items[4]["detail"]
    patients = [item["image"]["metadata"]["patient_id"] for item in items[:3]]
    assert patients[0] == patients[2] != patients[1]

    first = requests.get(
        f"{stack.gateway}/api/v1/images", params={"dataset": DATASET}, headers=stack.auth, timeout=60
    )
    ann = {i["metadata"]["patient_id"] for i in first.json()["items"] if i["metadata"]["age"] == 61}
    assert ann == {patients[0]}  # the single upload of the test before, the same patient

    # One image per patient: Ann's three images give one result, Ben's one.
    only = {"dataset": [DATASET]}
    every = top_ids(stack, files[0].data, 10, filter=only)
    one_each = search(stack, files[0].data, k=10, filter=only, one_per_patient="true").json()["results"]
    assert len(every) >= 3  # 4 with the single upload of the test before
    assert sorted(hit["image"]["metadata"]["patient_id"] for hit in one_each) == sorted(set(patients))


def test_medsearch_ingest_takes_a_folder_of_dicom_files_by_content(
    stack: Stack, twins: list[Indexed], sent: list[IdentifiedDicom], tmp_path: Path
) -> None:
    folder = tmp_path / "ZQXBENGW_SCANS"
    (folder / "1.2.840.99").mkdir(parents=True)
    files = {
        "chest.dcm": identified_dicom(gray_of(twins[0].path), BEN, study="3", image="1"),
        "1.2.840.99/IM0001": identified_dicom(gray_of(twins[1].path), BEN, study="3", image="2"),
        "1.2.840.99/1.2.840.99.7.3": identified_dicom(gray_of(twins[2].path), CAL, study="1", image="1"),
    }
    for name, made in files.items():
        (folder / name).write_bytes(made.data)
    sent.extend(files.values())
    result = medsearch(stack, "ingest", str(folder), "--dataset", CLI_DATASET)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1] == "3 new, 0 completed, 0 already indexed, 0 failed"
    page = requests.get(
        f"{stack.gateway}/api/v1/images", params={"dataset": CLI_DATASET}, headers=stack.auth, timeout=60
    ).json()["items"]
    assert len(page) == 3 and all(image["index_state"] == "indexed" for image in page)
    by_age = {image["metadata"]["age"]: image["metadata"] for image in page}
    assert set(by_age) == {34, 72}
    # Ben has the same pseudonym as in the API's batch, and the folder's name went nowhere.
    ben = requests.get(
        f"{stack.gateway}/api/v1/images", params={"dataset": DATASET}, headers=stack.auth, timeout=60
    )
    assert {i["metadata"]["patient_id"] for i in ben.json()["items"] if i["metadata"]["age"] == 34} == {
        by_age[34]["patient_id"]
    }
    again = medsearch(stack, "ingest", str(folder), "--dataset", CLI_DATASET)
    assert again.stdout.strip().splitlines()[-1] == "0 new, 0 completed, 3 already indexed, 0 failed"


def test_no_identifying_value_survives_anywhere(stack: Stack, sent: list[IdentifiedDicom]) -> None:
    """After the tests above (pytest runs a module's tests in order): every marker of every file
    sent, searched in everything the system keeps or shows."""
    markers = sorted({marker for made in sent for marker in made.markers} | {"ZQXBENGW_SCANS"})
    assert len(sent) >= 9 and len(markers) > 100
    with psycopg.connect(stack.catalog_database) as conn:
        blobs = [
            bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode()
            for query in (
                "SELECT i::text, f.original, f.thumbnail"
                " FROM images i JOIN image_files f ON f.image_id = i.id",
                "SELECT e::text FROM audit_events e",
                "SELECT s::text FROM index_states s",
            )
            for row in conn.execute(query).fetchall()
            for value in row
        ]
    for dataset in (DATASET, CLI_DATASET):
        page = requests.get(
            f"{stack.gateway}/api/v1/images", params={"dataset": dataset}, headers=stack.auth, timeout=60
        )
        blobs.append(page.content)
        for image in page.json()["items"]:
            for url in (image["file_url"], image["thumbnail_url"]):
                blobs.append(requests.get(f"{stack.gateway}{url}", headers=stack.auth, timeout=60).content)
    logs = sorted(stack.logs.glob("*.log"))
    assert {path.name for path in logs} >= {"catalog.log", "embedder.log", "search.log", "gateway.log"}
    blobs += [path.read_bytes() for path in logs]
    survivors = sorted({marker for marker in markers for blob in blobs if marker.encode() in blob})
    assert survivors == []
