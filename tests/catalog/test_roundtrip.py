"""All 412 images of ../shared/data go in with their labels and come back unchanged."""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

from flask.testing import FlaskClient
from PIL import Image

from tests.catalog.conftest import labelled_images, upload


def test_every_shared_image_round_trips_byte_identical_with_its_metadata(
    catalog: FlaskClient, test_data: Path
) -> None:
    images = labelled_images(test_data)
    with open(test_data / "manifest.csv", newline="") as f:
        manifest = {row["sha256"]: row for row in csv.DictReader(f)}
    assert len(images) == len(manifest) == 412

    stored: dict[int, tuple[bytes, dict[str, object]]] = {}
    for image in images:
        data = image.path.read_bytes()
        response = upload(catalog, data, image.metadata, filename="upload.bin")
        assert response.status_code == 201, (image.path, response.json)
        body = response.json
        assert body is not None
        expected = manifest[hashlib.sha256(data).hexdigest()]
        assert body["sha256"] == expected["sha256"]
        assert (body["width"], body["height"]) == (int(expected["width"]), int(expected["height"]))
        assert body["byte_size"] == int(expected["file_bytes"])
        assert body["mime_type"] == ("image/jpeg" if expected["format"] == "JPEG" else "image/png")
        stored[body["id"]] = (data, image.metadata)

    assert len(stored) == 412
    for image_id, (data, metadata) in stored.items():
        file = catalog.get(f"/v1/images/{image_id}/file")
        assert file.status_code == 200
        assert file.data == data

        record = catalog.get(f"/v1/images/{image_id}").json
        assert record is not None
        for field, value in metadata.items():
            assert record["metadata"][field] == value, (image_id, field)

        thumbnail = catalog.get(f"/v1/images/{image_id}/thumbnail")
        assert thumbnail.status_code == 200
        with Image.open(io.BytesIO(thumbnail.data)) as thumb:
            assert thumb.format == "WEBP" and thumbnail.mimetype == "image/webp"
            assert max(thumb.size) == min(256, max(record["width"], record["height"]))


def test_the_same_bytes_twice_return_the_existing_image(catalog: FlaskClient, test_data: Path) -> None:
    data = (test_data / "nih_cxr14" / "images" / "00000100_000.png").read_bytes()
    first = upload(catalog, data, {"dataset": "nih_cxr14", "external_id": "00000100_000.png"})
    again = upload(catalog, data, {"dataset": "other", "external_id": "renamed.png"})
    assert first.status_code == 201 and again.status_code == 200
    assert first.json is not None and again.json is not None
    assert again.json["id"] == first.json["id"]
    # The first upload's metadata stands: a repeat changes nothing.
    assert again.json["metadata"]["dataset"] == "nih_cxr14"
    assert first.headers["Location"] == f"/v1/images/{first.json['id']}"
    listing = catalog.get("/v1/images").json
    assert listing is not None and len(listing["items"]) == 1
