"""The catalog API on the real PostgreSQL: reads, listings, updates, deletes, indexing state."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from PIL import Image

from tests.catalog.conftest import labelled_images, png, upload


def add(client: FlaskClient, seed: int, **metadata: Any) -> dict[str, Any]:
    response = upload(client, png(seed), {"dataset": "test", **metadata})
    assert response.status_code == 201, response.json
    assert response.json is not None
    return response.json


def ids_of(response: Any) -> list[int]:
    return [item["id"] for item in response.json["items"]]


def test_get_one_image_returns_its_record(catalog: FlaskClient) -> None:
    created = add(catalog, 1, patient_id="p1", age=33, sex="f", view_position="pa", findings=["Mass"])
    got = catalog.get(f"/v1/images/{created['id']}")
    assert got.status_code == 200
    assert got.json == created
    assert got.json["metadata"]["sex"] == "F" and got.json["metadata"]["view_position"] == "PA"


def test_batch_fetch_returns_found_images_in_the_order_asked_in_one_database_call(
    catalog: FlaskClient, catalog_app: Any
) -> None:
    ids = [add(catalog, seed)["id"] for seed in range(100)]
    wanted = [*reversed(ids[:99]), 999_999]
    pool = catalog_app.extensions["medsearch_catalog"].repository.pool
    pool.pop_stats()
    response = catalog.get("/v1/images", query_string={"ids": ",".join(map(str, wanted))})
    assert pool.pop_stats().get("requests_num") == 1
    assert response.status_code == 200
    assert ids_of(response) == wanted[:99]
    assert response.json is not None and response.json["missing"] == [999_999]


def test_batch_fetch_refuses_more_than_100_ids(catalog: FlaskClient) -> None:
    response = catalog.get("/v1/images", query_string={"ids": ",".join(str(i) for i in range(1, 102))})
    assert response.status_code == 400
    assert "limit is 100" in response.json["detail"]


def test_listing_filters_combine(catalog: FlaskClient) -> None:
    a = add(
        catalog, 1, dataset="nih", patient_id="p1", sex="F", age=40, view_position="PA", findings=["Mass"]
    )
    b = add(
        catalog, 2, dataset="nih", patient_id="p2", sex="M", age=70, view_position="AP", findings=["Edema"]
    )
    c = add(catalog, 3, dataset="hmh", patient_id="p1", sex="F", age=55, view_position="PA")
    d = add(catalog, 4, dataset="nih", patient_id="p3", findings=["Mass", "Effusion"])

    def listed(**params: Any) -> list[int]:
        response = catalog.get("/v1/images", query_string=params)
        assert response.status_code == 200, response.json
        return ids_of(response)

    assert listed() == [a["id"], b["id"], c["id"], d["id"]]
    assert listed(dataset="nih") == [a["id"], b["id"], d["id"]]
    assert listed(dataset=["nih", "hmh"], sex="f") == [a["id"], c["id"]]
    assert listed(patient_id="p1") == [a["id"], c["id"]]
    assert listed(finding="Mass") == [a["id"], d["id"]]
    assert listed(finding=["Edema", "Effusion"]) == [b["id"], d["id"]]
    assert listed(view_position="pa", dataset="nih") == [a["id"]]
    assert listed(age_min=41) == [b["id"], c["id"]]
    assert listed(age_min=40, age_max=55) == [a["id"], c["id"]]
    assert listed(external_id="none-such") == []


def test_cursor_pagination_walks_every_image_once(catalog: FlaskClient) -> None:
    ids = [add(catalog, seed)["id"] for seed in range(7)]
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = catalog.get("/v1/images", query_string=params).json
        assert page is not None
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids and pages == 3


@pytest.mark.parametrize("path", ["file", "thumbnail"])
def test_files_carry_content_type_etag_and_cache_headers(catalog: FlaskClient, path: str) -> None:
    created = add(catalog, 5)
    response = catalog.get(f"/v1/images/{created['id']}/{path}")
    assert response.status_code == 200
    assert response.mimetype == ("image/png" if path == "file" else "image/webp")
    assert "private" in response.headers["Cache-Control"] and "max-age" in response.headers["Cache-Control"]
    etag = response.headers["ETag"]
    assert created["sha256"] in etag
    again = catalog.get(f"/v1/images/{created['id']}/{path}", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.data == b""


def test_thumbnail_of_a_jpeg_and_a_tall_image_keeps_the_aspect_ratio(catalog: FlaskClient) -> None:
    image = Image.new("RGB", (300, 900), color=(10, 200, 30))
    out = io.BytesIO()
    image.save(out, format="JPEG")
    created = upload(catalog, out.getvalue())
    assert created.status_code == 201 and created.json is not None
    assert created.json["mime_type"] == "image/jpeg"
    thumb = catalog.get(f"/v1/images/{created.json['id']}/thumbnail")
    with Image.open(io.BytesIO(thumb.data)) as t:
        assert t.size == (85, 256)


def test_sixteen_bit_image_gets_a_visible_thumbnail(catalog: FlaskClient) -> None:
    image = Image.new("I;16", (200, 100), color=1000)
    for x in range(100, 200):
        for y in range(100):
            image.putpixel((x, y), 4000)
    out = io.BytesIO()
    image.save(out, format="PNG")
    created = upload(catalog, out.getvalue())
    assert created.status_code == 201 and created.json is not None
    with Image.open(io.BytesIO(catalog.get(f"/v1/images/{created.json['id']}/thumbnail").data)) as t:
        gray = t.convert("L")
        assert gray.getpixel((10, 10)) < 30 and gray.getpixel((190, 10)) > 225  # type: ignore[operator]


def test_metadata_update_changes_only_the_fields_given(catalog: FlaskClient) -> None:
    created = add(catalog, 6, patient_id="p1", age=50, findings=["Mass"])
    response = catalog.patch(f"/v1/images/{created['id']}", json={"age": 51, "findings": [], "sex": None})
    assert response.status_code == 200
    metadata = response.json["metadata"]
    assert metadata["age"] == 51 and metadata["findings"] == [] and metadata["patient_id"] == "p1"
    assert response.json["updated_at"] > created["updated_at"]
    assert catalog.get(f"/v1/images/{created['id']}").json["metadata"] == metadata


def test_delete_removes_the_image_its_bytes_and_its_states(catalog: FlaskClient, database_url: str) -> None:
    from tests.catalog.conftest import row_counts

    created = add(catalog, 7)
    catalog.put(f"/v1/images/{created['id']}/index-state/m1", json={"state": "indexed"})
    assert catalog.delete(f"/v1/images/{created['id']}").status_code == 204
    assert catalog.get(f"/v1/images/{created['id']}").status_code == 404
    assert catalog.get(f"/v1/images/{created['id']}/file").status_code == 404
    assert catalog.delete(f"/v1/images/{created['id']}").status_code == 404
    assert row_counts(database_url) == {"images": 0, "image_files": 0, "index_states": 0}


def test_index_state_per_model_and_pending_listing(catalog: FlaskClient) -> None:
    a, b, c = (add(catalog, seed)["id"] for seed in (10, 11, 12))
    put = catalog.put(f"/v1/images/{a}/index-state/resnet50-random-42", json={"state": "indexed"})
    assert put.status_code == 200 and put.json["state"] == "indexed"
    failed = catalog.put(
        f"/v1/images/{b}/index-state/resnet50-random-42", json={"state": "failed", "reason": "embedder down"}
    )
    assert failed.json["reason"] == "embedder down"

    record = catalog.get(f"/v1/images/{b}").json
    assert record["index_states"]["resnet50-random-42"]["state"] == "failed"

    pending = catalog.get("/v1/models/resnet50-random-42/pending")
    assert ids_of(pending) == [c]
    with_failed = catalog.get("/v1/models/resnet50-random-42/pending?include_failed=true")
    assert ids_of(with_failed) == [b, c]
    # A model never seen has every image pending.
    assert ids_of(catalog.get("/v1/models/other-model/pending")) == [a, b, c]
    listed = catalog.get(
        "/v1/images", query_string={"model_id": "resnet50-random-42", "index_state": "indexed"}
    )
    assert ids_of(listed) == [a]

    # Back to indexed: the reason goes.
    again = catalog.put(f"/v1/images/{b}/index-state/resnet50-random-42", json={"state": "indexed"})
    assert again.json["reason"] is None
    assert ids_of(catalog.get("/v1/models/resnet50-random-42/pending?include_failed=1")) == [c]


def stats_of(client: FlaskClient, **params: Any) -> dict[str, Any]:
    response = client.get("/v1/stats", query_string=params)
    assert response.status_code == 200, response.json
    assert response.json is not None
    return response.json


def test_stats_of_an_empty_catalog_are_zero(catalog: FlaskClient) -> None:
    assert stats_of(catalog) == {"images": 0, "datasets": {}, "models": {}}


def test_stats_count_images_per_dataset_and_per_index_state(catalog: FlaskClient) -> None:
    a, b, c, d = (add(catalog, seed, dataset="nih")["id"] for seed in (20, 21, 22, 23))
    e = add(catalog, 24, dataset="hmh")["id"]
    catalog.put(f"/v1/images/{a}/index-state/m1", json={"state": "indexed"})
    catalog.put(f"/v1/images/{b}/index-state/m1", json={"state": "failed", "reason": "embedder down"})
    catalog.put(f"/v1/images/{c}/index-state/m1", json={"state": "pending"})
    catalog.put(f"/v1/images/{e}/index-state/m2", json={"state": "indexed"})

    stats = stats_of(catalog)
    assert stats == {
        "images": 5,
        "datasets": {"hmh": 1, "nih": 4},
        "models": {
            # m1: c is pending, d and e have no row for it: pending too.
            "m1": {"indexed": 1, "pending": 3, "failed": 1},
            "m2": {"indexed": 1, "pending": 4, "failed": 0},
        },
    }
    assert len(ids_of(catalog.get("/v1/models/m1/pending"))) == stats["models"]["m1"]["pending"]

    catalog.delete(f"/v1/images/{a}")
    assert stats_of(catalog)["models"]["m1"] == {"indexed": 0, "pending": 3, "failed": 1}
    assert stats_of(catalog)["datasets"] == {"hmh": 1, "nih": 3}
    assert ids_of(catalog.get("/v1/models/m1/pending")) == [c, d, e]


def test_stats_for_a_model_with_no_state_yet_count_every_image_pending(catalog: FlaskClient) -> None:
    a = add(catalog, 30, dataset="nih")["id"]
    add(catalog, 31, dataset="hmh")
    catalog.put(f"/v1/images/{a}/index-state/m1", json={"state": "indexed"})

    stats = stats_of(catalog, model_id="new-model")
    assert stats["models"] == {
        "m1": {"indexed": 1, "pending": 1, "failed": 0},
        "new-model": {"indexed": 0, "pending": 2, "failed": 0},
    }
    assert stats_of(catalog, model_id="m1") == stats_of(catalog)


def test_the_breakdown_counts_findings_ages_sexes_and_views_in_one_snapshot(catalog: FlaskClient) -> None:
    add(catalog, 40, dataset="nih", findings=["Effusion", "Mass"], age=35, sex="F", view_position="PA")
    add(catalog, 41, dataset="nih", findings=["Effusion"], age=62, sex="M", view_position="AP")
    add(catalog, 42, dataset="nih", findings=[], age=None, sex=None)
    add(catalog, 43, dataset="hmh", findings=["Mass"], age=85, sex="F", view_position="PA")
    assert "breakdown" not in stats_of(catalog)
    breakdown = stats_of(catalog, breakdown="true")["breakdown"]
    assert breakdown == {
        "findings_any": {"Effusion": 2, "Mass": 2},
        "findings_only": {"(none)": 1, "(several)": 1, "Effusion": 1, "Mass": 1},
        "age_bands": {"18-39": 1, "60-79": 1, "80+": 1, "unknown": 1},
        "sexes": {"F": 2, "M": 1, "unknown": 1},
        "view_positions": {"PA": 2, "AP": 1, "unknown": 1},
    }
    bad = catalog.get("/v1/stats", query_string={"breakdown": "maybe"})
    assert bad.status_code == 400 and "'breakdown' must be true or false" in bad.json["detail"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"model_id": "-bad"}, "a model ID is"),
        ({"model_id": ""}, "a model ID is"),
        ({"model_id": "m" * 129}, "a model ID is"),
        ({"dataset": "nih"}, "unknown parameter(s): dataset"),
    ],
)
def test_stats_refuse_a_bad_model_id_or_unknown_parameter(
    catalog: FlaskClient, params: dict[str, str], words: str
) -> None:
    response = catalog.get("/v1/stats", query_string=params)
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    assert response.json["type"] == "urn:medsearch:problem:malformed-request"
    assert words in response.json["detail"]


def test_openapi_document_is_served_and_valid(catalog: FlaskClient) -> None:
    from openapi_spec_validator import validate

    response = catalog.get("/v1/openapi.json")
    assert response.status_code == 200
    validate(response.json)
    assert "/v1/images" in response.json["paths"]


def test_listing_an_ingested_dataset_by_finding(catalog: FlaskClient, test_data: Path) -> None:
    nih = [i for i in labelled_images(test_data) if i.set_name == "nih_cxr14"][:40]
    for image in nih:
        assert upload(catalog, image.path.read_bytes(), image.metadata).status_code == 201
    expected = sorted(i.metadata["external_id"] for i in nih if "Effusion" in i.metadata["findings"])
    response = catalog.get("/v1/images", query_string={"finding": "Effusion", "limit": 500})
    assert sorted(item["metadata"]["external_id"] for item in response.json["items"]) == expected
