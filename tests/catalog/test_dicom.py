"""DICOM ingest: de-identified before anything is stored, pseudonymous patients, and every bad
DICOM refused with its problem and nothing written. Real PostgreSQL; the files are made here
from the shared PNGs, full of identifying marker strings."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import struct
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pydicom
import pytest
from flask.testing import FlaskClient
from numpy.typing import NDArray
from PIL import Image
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import JPEGLSLossless

from tests.catalog.conftest import PSEUDONYM_KEY, row_counts, upload, upload_batch
from tests.catalog.test_bad_input import assert_problem
from tests.support.identified_dicoms import IdentifiedDicom, Patient, gray_of, identified_dicom

NIH = "nih_cxr14/images/00000075_000.png"
ALICE = Patient("ZQXALICE", sex="F", age="045Y")
BOB = Patient("ZQXBOB", sex="M", age="006M")


@pytest.fixture(scope="module")
def gray(test_data: Path) -> NDArray[np.uint8]:
    return gray_of(test_data / NIH)


def pseudonym(patient_id: str) -> str:
    """The catalog's pseudonym, computed here independently: HMAC-SHA256 with the site key."""
    return hmac.new(
        PSEUDONYM_KEY.encode(), b"patient-id\x00" + patient_id.encode(), hashlib.sha256
    ).hexdigest()


def stored_bytes(database_url: str) -> list[bytes]:
    """Everything the catalog holds, as bytes: every row of every image table, files and all."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT i::text, f.original, f.thumbnail FROM images i JOIN image_files f ON f.image_id = i.id"
        ).fetchall()
        states = conn.execute("SELECT s::text FROM index_states s").fetchall()
    return (
        [r[0].encode() for r in rows]
        + [bytes(r[1]) for r in rows]
        + [bytes(r[2]) for r in rows]
        + [s[0].encode() for s in states]
    )


def assert_no_marker(blobs: list[bytes], markers: list[str]) -> None:
    for marker in markers:
        for blob in blobs:
            assert marker.encode() not in blob, f"{marker!r} survived"
            assert marker.lower().encode() not in blob.lower(), f"{marker!r} survived (in another case)"


def added(client: FlaskClient, made: IdentifiedDicom | bytes, metadata: Any = None) -> dict[str, Any]:
    data = made.data if isinstance(made, IdentifiedDicom) else made
    response = upload(client, data, metadata or {"dataset": "dicom"}, filename="x.dcm")
    assert response.status_code in (200, 201), response.get_data(as_text=True)
    body: dict[str, Any] = response.json  # type: ignore[assignment]
    return body


def stored_dicom(client: FlaskClient, image_id: int) -> Dataset:
    response = client.get(f"/v1/images/{image_id}/file")
    assert response.status_code == 200 and response.mimetype == "application/dicom"
    return pydicom.dcmread(io.BytesIO(response.data))


def day(text: str) -> date:
    return date(int(text[:4]), int(text[4:6]), int(text[6:8]))


# -- what is stored ------------------------------------------------------------------------------------------


def test_a_dicom_is_stored_de_identified_and_nothing_identifying_survives(
    catalog: FlaskClient, database_url: str, gray: NDArray[np.uint8]
) -> None:
    made = identified_dicom(gray, ALICE)
    body = added(catalog, made, {"dataset": "dicom", "findings": ["Mass"]})
    assert body["mime_type"] == "application/dicom" and (body["width"], body["height"]) == (1024, 1024)
    stored = stored_dicom(catalog, body["id"])
    assert body["sha256"] == hashlib.sha256(catalog.get(f"/v1/images/{body['id']}/file").data).hexdigest()

    assert_no_marker(stored_bytes(database_url), made.markers)
    assert_no_marker([json.dumps(body).encode()], made.markers)

    original = pydicom.dcmread(io.BytesIO(made.data))
    assert stored.PatientIdentityRemoved == "YES"
    assert "MEDSEARCH" in str(stored.DeidentificationMethod)
    assert {c.CodeValue for c in stored.DeidentificationMethodCodeSequence} == {"113100", "113107", "113108"}
    assert stored.PatientID == pseudonym(ALICE.id) == body["metadata"]["patient_id"]
    assert stored.PatientBirthDate == "" and stored.PatientName != original.PatientName
    assert not any(element.tag.is_private for element in stored)
    assert stored.preamble == b"\x00" * 128
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert stored[keyword].value != original[keyword].value, keyword
    assert stored.file_meta.MediaStorageSOPInstanceUID == stored.SOPInstanceUID
    assert stored.StudyDate < original.StudyDate  # shifted back, never kept
    assert np.array_equal(stored.pixel_array, gray)  # the pixels are untouched
    assert body["metadata"] == {
        "dataset": "dicom",
        "external_id": stored.SOPInstanceUID,
        "patient_id": pseudonym(ALICE.id),
        "study": None,
        "age": 45,
        "sex": "F",
        "view_position": "PA",
        "findings": ["Mass"],
        "extra": {"modality": "DX"},
    }


def test_the_thumbnail_shows_the_dicom_as_its_png_twin(
    catalog: FlaskClient, test_data: Path, gray: NDArray[np.uint8]
) -> None:
    # MONOCHROME1 with 12 bits: inverted and stretched back to what the PNG shows.
    inverted = (255 - gray.astype(np.uint16)) * 16
    dicom_id = added(catalog, identified_dicom(inverted, ALICE, photometric="MONOCHROME1"))["id"]
    png_id = added(catalog, (test_data / NIH).read_bytes())["id"]
    thumbs = []
    for image_id in (dicom_id, png_id):
        with Image.open(io.BytesIO(catalog.get(f"/v1/images/{image_id}/thumbnail").data)) as thumb:
            thumbs.append(np.asarray(thumb.convert("L"), dtype=np.float64).ravel())
    assert float(thumbs[0] @ thumbs[1] / (np.linalg.norm(thumbs[0]) * np.linalg.norm(thumbs[1]))) > 0.99


def test_the_same_file_twice_is_the_same_image(
    catalog: FlaskClient, database_url: str, gray: NDArray[np.uint8]
) -> None:
    made = identified_dicom(gray, ALICE)
    first = upload(catalog, made.data, {"dataset": "dicom"})
    again = upload(catalog, made.data, {"dataset": "other"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json == again.json
    assert row_counts(database_url)["images"] == 1


def test_one_patient_keeps_one_pseudonym_uids_and_date_offset_and_two_patients_differ(
    catalog: FlaskClient, gray: NDArray[np.uint8]
) -> None:
    alice_1 = added(catalog, identified_dicom(gray, ALICE, study="1", image="1"))
    alice_2 = added(catalog, identified_dicom(gray[::-1], ALICE, study="1", image="2"))
    alice_3 = added(catalog, identified_dicom(gray[:, ::-1], ALICE, study="2", image="1"))
    bob = added(catalog, identified_dicom(gray, BOB, study="1", image="1"))
    patients = [b["metadata"]["patient_id"] for b in (alice_1, alice_2, alice_3, bob)]
    assert patients == [pseudonym(ALICE.id)] * 3 + [pseudonym(BOB.id)]
    files = [stored_dicom(catalog, b["id"]) for b in (alice_1, alice_2, alice_3, bob)]
    # One study of Alice's: one study UID in both of its images; her second study another.
    assert files[0].StudyInstanceUID == files[1].StudyInstanceUID != files[2].StudyInstanceUID
    assert files[0].SOPInstanceUID != files[1].SOPInstanceUID
    # Her dates move together (the interval between her studies is kept); Bob's by his own offset.
    assert files[0].StudyDate == files[1].StudyDate
    assert (
        day(files[2].StudyDate) - day(files[0].StudyDate)
    ).days == 1  # 20190412 and 20190411, shifted alike
    assert files[3].StudyDate != files[0].StudyDate
    assert files[3].StudyInstanceUID != files[0].StudyInstanceUID
    assert bob["metadata"]["age"] == 0 and bob["metadata"]["sex"] == "M"  # 006M: six months


def test_the_header_wins_over_sent_metadata_which_fills_the_gaps(
    catalog: FlaskClient, gray: NDArray[np.uint8]
) -> None:
    sent = {
        "dataset": "ward",
        "external_id": "teaching-7",
        "patient_id": "not-this-one",
        "age": 99,
        "sex": "M",
        "view_position": "AP",
        "study": 2,
        "extra": {"modality": "MR", "note": "kept"},
    }
    body = added(catalog, identified_dicom(gray, ALICE), sent)["metadata"]
    assert (body["patient_id"], body["age"], body["sex"], body["view_position"]) == (
        pseudonym(ALICE.id),
        45,
        "F",
        "PA",
    )
    assert (body["dataset"], body["external_id"], body["study"]) == ("ward", "teaching-7", 2)
    assert body["extra"] == {"modality": "DX", "note": "kept"}

    # A header without PatientID, age or sex: the sent values fill in, the ID pseudonymised.
    anonymous = Patient("ZQXANON", patient_id=" ", sex="", age="")
    filled = added(catalog, identified_dicom(gray[::2, ::2], anonymous), sent)["metadata"]
    assert (filled["patient_id"], filled["age"], filled["sex"]) == (pseudonym("not-this-one"), 99, "M")


def test_burned_in_annotation_is_kept_only_when_the_operator_allows_it(
    make_catalog_app: Callable[..., Any], gray: NDArray[np.uint8], database_url: str
) -> None:
    made = identified_dicom(gray, ALICE, burned_in="YES")
    client = make_catalog_app(allow_burned_in_annotation=True).test_client()
    before = row_counts(database_url)
    body = added(client, made)
    stored = stored_dicom(client, body["id"])
    assert stored.BurnedInAnnotation == "YES" and stored.PatientIdentityRemoved == "NO"
    assert row_counts(database_url)["images"] == before["images"] + 1


def test_accepted_modalities_are_a_setting(
    make_catalog_app: Callable[..., Any], gray: NDArray[np.uint8]
) -> None:
    client = make_catalog_app(dicom_modalities=("CR", "DX", "RG")).test_client()
    assert added(client, identified_dicom(gray, ALICE, modality="RG"))["metadata"]["extra"] == {
        "modality": "RG"
    }


def test_without_a_pseudonym_key_dicom_is_a_503_and_png_still_works(
    make_catalog_app: Callable[..., Any], gray: NDArray[np.uint8], tmp_path: Path, test_data: Path
) -> None:
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    client = make_catalog_app(pseudonym_key=None, pseudonym_key_file=not_a_folder / "key").test_client()
    refused = upload(client, identified_dicom(gray, ALICE).data)
    assert_problem(refused, 503, "MEDSEARCH_CATALOG_PSEUDONYM_KEY")
    assert refused.json["type"] == "urn:medsearch:problem:pseudonym-key-unavailable"  # type: ignore[index]
    batch = upload_batch(client, [identified_dicom(gray, ALICE).data, (test_data / NIH).read_bytes()])
    assert [i["status"] for i in batch.json["items"]] == [503, 201]  # type: ignore[index]


# -- refused, with nothing written ---------------------------------------------------------------------------


def with_elements(gray: NDArray[np.uint8], *elements: DataElement) -> bytes:
    extra = Dataset()
    for element in elements:
        extra.add(element)
    return identified_dicom(gray, ALICE, extra=extra).data


def wrong_vr(gray: NDArray[np.uint8], keyword: str, vr: str, value: Any) -> bytes:
    """A file whose `keyword` element is written with VR `vr`: pydicom writes what it is given."""
    made = identified_dicom(gray, ALICE)
    ds = pydicom.dcmread(io.BytesIO(made.data))
    tag = ds[keyword].tag
    del ds[keyword]
    ds.add(DataElement(tag, vr, value))
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def without_pixels(gray: NDArray[np.uint8]) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(identified_dicom(gray, ALICE).data))
    for keyword in ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit"):
        del ds[keyword]
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def deeply_nested(gray: NDArray[np.uint8], depth: int) -> bytes:
    """A private sequence (in the file's own private block) nested `depth` levels deep, written
    byte by byte: undefined lengths, as a modality may write them, and too deep for pydicom's writer."""
    sequence = struct.pack("<HH2sHI", 0x0029, 0x1020, b"SQ", 0, 0xFFFFFFFF)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    item_end = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    sequence_end = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    data = identified_dicom(gray, ALICE).data
    at = data.index(struct.pack("<HH", 0x7FE0, 0x0010))  # before the pixel data, in tag order
    return data[:at] + (sequence + item) * depth + (item_end + sequence_end) * depth + data[at:]


# (case, the file made from the gray X-ray, status, problem type slug, words in the detail)
BAD_DICOMS: list[tuple[str, Callable[[NDArray[np.uint8]], bytes], int, str, str]] = [
    (
        "MR modality",
        lambda g: identified_dicom(g, ALICE, modality="MR").data,
        422,
        "unsupported-modality",
        "modality MR",
    ),
    (
        "CT modality",
        lambda g: identified_dicom(g, ALICE, modality="CT").data,
        422,
        "unsupported-modality",
        "CR, DX",
    ),
    (
        "no modality",
        lambda g: identified_dicom(g, ALICE, modality="").data,
        422,
        "unsupported-modality",
        "no modality",
    ),
    (
        "burned-in annotation",
        lambda g: identified_dicom(g, ALICE, burned_in="YES").data,
        422,
        "burned-in-annotation",
        "MEDSEARCH_CATALOG_ALLOW_BURNED_IN_ANNOTATION",
    ),
    (
        "multi-frame",
        lambda g: identified_dicom(np.stack([g[:64, :64]] * 2), ALICE, frames=2).data,
        422,
        "multi-frame-image",
        "2 frames",
    ),
    ("missing pixel module", without_pixels, 422, "image-rejected", "no pixel data"),
    (
        "compressed without a decoder",
        lambda g: identified_dicom(g[:64, :64], ALICE, syntax=JPEGLSLossless).data,
        415,
        "unsupported-image",
        "JPEG-LS Lossless",
    ),
    (
        "a huge private value",
        lambda g: with_elements(
            g, DataElement(0x00290010, "LO", "HUGE"), DataElement(0x00291010, "UT", "ZQXHUGE" * 300_000)
        ),
        422,
        "image-rejected",
        "limit outside the pixel data is 1048576",
    ),
    (
        "a huge patient comment",
        lambda g: with_elements(g, DataElement(0x00104000, "LT", "ZQXHUGE" * 200_000)),
        422,
        "image-rejected",
        "PatientComments",
    ),
    (
        "a kept value over its VR's length",
        lambda g: with_elements(g, DataElement(0x00180015, "CS", "CHEST" * 60)),
        422,
        "image-rejected",
        "VR CS allows 16",
    ),
    (
        "PatientID with a binary VR",
        lambda g: wrong_vr(g, "PatientID", "OB", b"ZQXBINPID"),
        422,
        "image-rejected",
        "PatientID",
    ),
    ("Rows as text", lambda g: wrong_vr(g, "Rows", "LO", "1024"), 422, "image-rejected", "VR LO"),
    (
        "a malformed study date",
        lambda g: wrong_vr(g, "StudyDate", "DA", "ZQXDATE1"),
        422,
        "image-rejected",
        "DICOM",
    ),
    ("sequences nested 9 deep", lambda g: deeply_nested(g, 9), 422, "image-rejected", "more than 8 levels"),
    ("sequences nested 5000 deep", lambda g: deeply_nested(g, 5000), 422, "image-rejected", "nest"),
    ("truncated", lambda g: identified_dicom(g, ALICE).data[:5000], 422, "image-rejected", "DICOM"),
    (
        "preamble and marker only",
        lambda g: b"\x00" * 128 + b"DICM",
        422,
        "image-rejected",
        "no pixel data",
    ),
]


@pytest.mark.parametrize(
    ("make", "status", "slug", "words"),
    [case[1:] for case in BAD_DICOMS],
    ids=[case[0] for case in BAD_DICOMS],
)
def test_a_bad_dicom_is_refused_with_its_problem_and_writes_nothing(
    catalog: FlaskClient,
    database_url: str,
    gray: NDArray[np.uint8],
    make: Callable[[NDArray[np.uint8]], bytes],
    status: int,
    slug: str,
    words: str,
) -> None:
    data = make(gray)
    before = row_counts(database_url)
    response = upload(catalog, data, {"dataset": "dicom"})
    assert_problem(response, status, words)
    assert response.json["type"] == f"urn:medsearch:problem:{slug}"  # type: ignore[index]
    assert "ZQX" not in response.get_data(as_text=True)  # the problem names elements, never their values
    batch = upload_batch(catalog, [data, identified_dicom(gray, BOB).data])
    items = batch.json["items"]  # type: ignore[index]
    assert (items[0]["status"], items[0]["type"], items[1]["status"]) == (
        status,
        f"urn:medsearch:problem:{slug}",
        201,
    )
    assert row_counts(database_url)["images"] == before["images"] + 1  # only Bob's
