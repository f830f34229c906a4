"""Batch ingest and batch indexing states on the real PostgreSQL: each image stored or refused on its
own, bytes already stored answered without decoding, malformed batches refused whole, and nothing
half-written when the database fails."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from psycopg import sql
from werkzeug.test import TestResponse

from medsearch_catalog import images
from medsearch_catalog.settings import CatalogSettings
from medsearch_common.imaging import DecodeLimits
from medsearch_common.imaging.raster import RasterFormat
from medsearch_common.settings import SettingsError
from tests.catalog.conftest import labelled_images, png, row_counts, upload, upload_batch
from tests.catalog.test_database_outage import assert_database_unavailable, through, wait_until_ready
from tests.support.proxy import CuttableProxy

NOTHING = {"images": 0, "image_files": 0, "index_states": 0}


def put_states(client: FlaskClient, items: Any, model_id: str = "m1") -> TestResponse:
    return client.put(f"/v1/models/{model_id}/index-states", json={"items": items})


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored_sha256s(database_url: str) -> set[str]:
    with psycopg.connect(database_url) as conn:
        return {row[0] for row in conn.execute("SELECT sha256 FROM images")}


def gif() -> bytes:
    out = io.BytesIO()
    Image.new("L", (8, 8)).save(out, format="GIF")
    return out.getvalue()


@pytest.fixture(scope="module")
def xrays(test_data: Path) -> list[tuple[bytes, dict[str, Any]]]:
    """Real NIH chest X-rays with the metadata from their labels."""
    chosen = [i for i in labelled_images(test_data) if i.set_name == "nih_cxr14"][:6]
    return [(i.path.read_bytes(), i.metadata) for i in chosen]


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The formats of the images decoded since the test began (the decoder, counted)."""
    calls: list[str] = []
    decode = images.decode_raster

    def counted(data: bytes, image_format: RasterFormat, limits: DecodeLimits, **options: Any) -> Image.Image:
        calls.append(image_format)
        return decode(data, image_format, limits, **options)

    monkeypatch.setattr(images, "decode_raster", counted)
    return calls


# -- ingest ------------------------------------------------------------------------------------------


def test_mixed_batch_stores_the_good_images_and_refuses_each_bad_one(
    catalog: FlaskClient, database_url: str, xrays: list[tuple[bytes, dict[str, Any]]]
) -> None:
    (a, meta_a), (b, _), (c, meta_c), (d, meta_d) = xrays[:4]
    files = [a, b[: len(b) // 2], b"just some text", gif(), c, b"", d]
    metadata = [
        meta_a,
        {"dataset": "x"},
        {"dataset": "x"},
        {"dataset": "x"},
        {**meta_c, "age": 131},
        {},
        meta_d,
    ]
    response = upload_batch(catalog, files, metadata)
    assert response.status_code == 200, response.json
    items = response.json["items"]  # type: ignore[index]
    assert [item["index"] for item in items] == list(range(7))
    assert [item["status"] for item in items] == [201, 422, 415, 415, 422, 422, 201]
    assert [item.get("type", "").rsplit(":", 1)[-1] for item in items] == [
        "",
        "image-rejected",
        "not-an-image",
        "unsupported-image",
        "invalid-metadata",
        "invalid-metadata",  # metadata is checked first, as for a single upload
        "",
    ]
    assert "truncated or corrupt" in items[1]["detail"] and "between 0 and 130" in items[4]["detail"]
    for item, data, meta in ((items[0], a, meta_a), (items[6], d, meta_d)):
        assert item["image"]["sha256"] == sha256(data)
        assert item["image"]["metadata"]["patient_id"] == meta["patient_id"]
        assert catalog.get(f"/v1/images/{item['image']['id']}").json == item["image"]
        assert catalog.get(f"/v1/images/{item['image']['id']}/file").data == data
    assert stored_sha256s(database_url) == {sha256(a), sha256(d)}
    assert row_counts(database_url) == {"images": 2, "image_files": 2, "index_states": 0}


def test_same_bytes_twice_in_one_batch_store_one_image_decoded_once(
    catalog: FlaskClient, database_url: str, decodes: list[str]
) -> None:
    response = upload_batch(
        catalog, [png(1), png(1), png(2)], [{"dataset": "first"}, {"dataset": "second"}, {"dataset": "x"}]
    )
    assert response.status_code == 200, response.json
    first, again, other = response.json["items"]  # type: ignore[index]
    assert (first["status"], again["status"], other["status"]) == (201, 200, 201)
    assert again["image"] == first["image"]
    assert first["image"]["metadata"]["dataset"] == "first"  # the first file's metadata is kept
    assert other["image"]["id"] != first["image"]["id"]
    assert len(decodes) == 2
    assert row_counts(database_url)["images"] == 2


def test_bytes_already_stored_are_answered_without_decoding_again(
    catalog: FlaskClient, catalog_app: Flask, xrays: list[tuple[bytes, dict[str, Any]]], decodes: list[str]
) -> None:
    (a, meta_a), (b, meta_b) = xrays[:2]
    stored = upload(catalog, a, meta_a)
    assert stored.status_code == 201 and len(decodes) == 1
    decodes.clear()

    pool = catalog_app.extensions["medsearch_catalog"].repository.pool
    pool.pop_stats()
    response = upload_batch(catalog, [a, b], [{"dataset": "other"}, meta_b])
    assert pool.pop_stats().get("requests_num") == 2  # one look-up, one transaction to store
    items = response.json["items"]  # type: ignore[index]
    assert items[0] == {"index": 0, "status": 200, "image": stored.json}
    assert items[1]["status"] == 201
    assert decodes == ["PNG"]  # only the new image

    decodes.clear()
    again = upload(catalog, a, {"dataset": "other"})
    assert (again.status_code, again.json) == (200, stored.json)
    assert decodes == []
    # Metadata is still checked first: bad metadata refuses even bytes already stored.
    assert upload(catalog, a, {"dataset": "x", "sex": "X"}).status_code == 422


def test_new_bytes_are_still_decoded_completely_before_they_are_stored(
    catalog: FlaskClient, database_url: str
) -> None:
    data = bytearray(png(3, size=(200, 200)))
    data[-20] ^= 0xFF  # inside the last chunks: the header still reads
    response = upload_batch(catalog, [bytes(data), png(4)])
    statuses = [item["status"] for item in response.json["items"]]  # type: ignore[index]
    assert statuses == [422, 201]
    assert stored_sha256s(database_url) == {sha256(png(4))}


def test_per_image_byte_limit_refuses_that_image_and_the_request_limit_refuses_all(
    make_catalog_app: Callable[..., Flask],
    catalog: FlaskClient,
    database_url: str,
    xrays: list[tuple[bytes, dict[str, Any]]],
) -> None:
    client = make_catalog_app(max_upload_bytes=100_000).test_client()
    big = xrays[0][0]
    assert len(big) > 100_000
    items = upload_batch(client, [big, png(5)]).json["items"]  # type: ignore[index]
    assert [(i["status"], i.get("type")) for i in items] == [
        (413, "urn:medsearch:problem:upload-too-large"),
        (201, None),
    ]
    # The whole request may hold the per-image limit plus 1 MiB of form: more is refused unread.
    too_much = [data for data, _ in xrays]
    assert sum(map(len, too_much)) > 100_000 + 1024 * 1024
    before = row_counts(database_url)
    response = upload_batch(client, too_much)
    assert response.status_code == 413 and response.mimetype == "application/problem+json"
    assert row_counts(database_url) == before


def many_files(n: int) -> dict[str, Any]:
    return {
        "data": {
            "file": [(io.BytesIO(png(i)), f"{i}.png") for i in range(n)],
            "metadata": json.dumps([{"dataset": "x"}] * n),
        },
        "content_type": "multipart/form-data",
    }


def form(**fields: Any) -> dict[str, Any]:
    return {"data": fields, "content_type": "multipart/form-data"}


def one_file() -> tuple[io.BytesIO, str]:
    return (io.BytesIO(png(1)), "1.png")


ONE = json.dumps([{"dataset": "x"}])
BIG_METADATA = json.dumps([{"dataset": "x", "extra": {"n": "n" * (1024 * 1024)}}])

MALFORMED_BATCHES: list[tuple[str, Callable[[], dict[str, Any]], int, str, str]] = [
    ("no file", lambda: form(metadata="[]"), 400, "malformed-request", "no file"),
    ("metadata missing", lambda: form(file=one_file()), 400, "malformed-request", "'metadata'"),
    (
        "metadata not JSON",
        lambda: form(file=one_file(), metadata="[{"),
        400,
        "malformed-request",
        "not valid JSON",
    ),
    (
        "metadata an object",
        lambda: form(file=one_file(), metadata='{"dataset": "x"}'),
        400,
        "malformed-request",
        "JSON array",
    ),
    (
        "metadata too short",
        lambda: form(file=[one_file(), one_file()], metadata=ONE),
        400,
        "malformed-request",
        "1 entries for 2 file(s)",
    ),
    (
        "metadata too long",
        lambda: form(file=one_file(), metadata=json.dumps([{"dataset": "x"}] * 2)),
        400,
        "malformed-request",
        "2 entries for 1",
    ),
    ("33 files", lambda: many_files(33), 413, "batch-too-large", "limit is 32"),
    (
        "a file in another field",
        lambda: form(file=one_file(), image=one_file(), metadata=ONE),
        400,
        "malformed-request",
        "'image'",
    ),
    (
        "another text field",
        lambda: form(file=one_file(), metadata=ONE, note="hi"),
        400,
        "malformed-request",
        "'note'",
    ),
    (
        "text in the file field",
        lambda: form(file="not a file", metadata=ONE),
        400,
        "malformed-request",
        "files, not text",
    ),
    ("not multipart", lambda: {"json": {"file": "x"}}, 400, "malformed-request", "multipart/form-data"),
    (
        "metadata file part over 1 MiB",
        lambda: form(file=one_file(), metadata=(io.BytesIO(BIG_METADATA.encode()), "m.json")),
        413,
        "batch-too-large",
        "limit is 1048576",
    ),
    (
        "metadata field over 1 MiB",
        lambda: form(file=one_file(), metadata=BIG_METADATA),
        413,
        "",
        "larger than",
    ),
    (
        "metadata not UTF-8",
        lambda: form(file=one_file(), metadata=(io.BytesIO(b"\xff\xfe"), "m.json")),
        400,
        "malformed-request",
        "UTF-8",
    ),
]


@pytest.mark.parametrize(
    ("request_kwargs", "status", "slug", "detail"),
    [case[1:] for case in MALFORMED_BATCHES],
    ids=[case[0] for case in MALFORMED_BATCHES],
)
def test_malformed_batch_is_refused_whole_and_stores_nothing(
    catalog: FlaskClient,
    database_url: str,
    request_kwargs: Callable[[], dict[str, Any]],
    status: int,
    slug: str,
    detail: str,
) -> None:
    response = catalog.post("/v1/images/batch", **request_kwargs())
    assert response.status_code == status, response.json
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = response.json  # type: ignore[assignment]
    assert body["type"] == (f"urn:medsearch:problem:{slug}" if slug else "about:blank")
    assert detail.lower() in body["detail"].lower(), body["detail"]
    assert row_counts(database_url) == NOTHING


def test_concurrent_batches_with_the_same_bytes_share_each_stored_image(
    catalog: FlaskClient, catalog_app: Flask, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [png(10), png(11), png(12)]
    repository = catalog_app.extensions["medsearch_catalog"].repository
    add_images = repository.add_images
    both_decoded = threading.Barrier(2, timeout=30)

    def add_together(new: Any) -> Any:
        both_decoded.wait()  # both looked up and found nothing: both insert, and race
        return add_images(new)

    monkeypatch.setattr(repository, "add_images", add_together)
    answers: list[Any] = [None, None]

    def send(slot: int, order: list[bytes]) -> None:
        answers[slot] = upload_batch(catalog_app.test_client(), order)

    # Opposite orders: rows must still be locked in one order, or the two would deadlock.
    threads = [
        threading.Thread(target=send, args=(0, files)),
        threading.Thread(target=send, args=(1, files[::-1])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(a is not None and a.status_code == 200 for a in answers), [a and a.json for a in answers]
    first = {i["image"]["sha256"]: i for i in answers[0].json["items"]}
    second = {i["image"]["sha256"]: i for i in answers[1].json["items"]}
    assert set(first) == set(second) == {sha256(f) for f in files}
    for key in first:
        assert first[key]["image"]["id"] == second[key]["image"]["id"]
        assert sorted((first[key]["status"], second[key]["status"])) == [200, 201]
    assert row_counts(database_url) == {"images": 3, "image_files": 3, "index_states": 0}


# -- index states ------------------------------------------------------------------------------------


def add_images(client: FlaskClient, n: int) -> list[int]:
    response = upload_batch(client, [png(100 + i) for i in range(n)])
    assert response.status_code == 200
    return [item["image"]["id"] for item in response.json["items"]]  # type: ignore[index]


def states_of(client: FlaskClient, image_id: int) -> dict[str, Any]:
    record: dict[str, Any] = client.get(f"/v1/images/{image_id}").json  # type: ignore[assignment]
    return {model: (s["state"], s["reason"]) for model, s in record["index_states"].items()}


def test_states_are_set_together_and_missing_images_are_listed(
    catalog: FlaskClient, catalog_app: Flask
) -> None:
    a, b, c = add_images(catalog, 3)
    pool = catalog_app.extensions["medsearch_catalog"].repository.pool
    pool.pop_stats()
    response = put_states(
        catalog,
        [
            {"id": c, "state": "failed", "reason": "  embedder down\u0000 "},
            {"id": 999_999, "state": "indexed"},
            {"id": a, "state": "indexed", "reason": None},
            {"id": b, "state": "pending"},
            {"id": 999_998, "state": "failed", "reason": "x"},
        ],
    )
    assert pool.pop_stats().get("requests_num") == 1
    assert response.status_code == 200, response.json
    body: dict[str, Any] = response.json  # type: ignore[assignment]
    assert body["model_id"] == "m1" and body["missing"] == [999_999, 999_998]
    assert [(i["id"], i["state"], i["reason"]) for i in body["items"]] == [
        (c, "failed", "embedder down"),
        (a, "indexed", None),
        (b, "pending", None),
    ]
    assert len({i["updated_at"] for i in body["items"]}) == 1  # one statement, one moment
    assert states_of(catalog, c) == {"m1": ("failed", "embedder down")}

    # Again with other states: each image's row for the model is replaced, other models kept.
    assert put_states(catalog, [{"id": a, "state": "indexed"}], model_id="m2").status_code == 200
    again = put_states(
        catalog, [{"id": c, "state": "indexed"}, {"id": a, "state": "failed", "reason": "gone"}]
    )
    assert again.status_code == 200 and again.json["missing"] == []  # type: ignore[index]
    assert states_of(catalog, c) == {"m1": ("indexed", None)}
    assert states_of(catalog, a) == {"m1": ("failed", "gone"), "m2": ("indexed", None)}
    pending = catalog.get("/v1/models/m1/pending").json["items"]  # type: ignore[index]
    assert [i["id"] for i in pending] == [b]


def test_reason_is_cut_to_2000_characters(catalog: FlaskClient) -> None:
    (image_id,) = add_images(catalog, 1)
    response = put_states(catalog, [{"id": image_id, "state": "failed", "reason": "r" * 5000}])
    assert response.json["items"][0]["reason"] == "r" * 2000  # type: ignore[index]


GOOD = {"id": 1, "state": "indexed"}
# (case, body, status, words in the detail)
BAD_STATES: list[tuple[str, Any, int, str]] = [
    (
        "failed without reason",
        {"items": [GOOD, {"id": 2, "state": "failed"}]},
        422,
        "items[1]: a failed state needs a 'reason'",
    ),
    (
        "failed with a blank reason",
        {"items": [GOOD, {"id": 2, "state": "failed", "reason": " \u0000 "}]},
        422,
        "items[1]: a failed state needs",
    ),
    (
        "failed with a non-text reason",
        {"items": [GOOD, {"id": 2, "state": "failed", "reason": 3}]},
        422,
        "items[1]: a failed state needs",
    ),
    (
        "reason when indexed",
        {"items": [GOOD, {"id": 2, "state": "indexed", "reason": "x"}]},
        422,
        "items[1]: 'reason' is only for the failed",
    ),
    (
        "unknown state",
        {"items": [GOOD, {"id": 2, "state": "done"}]},
        422,
        "items[1]: state must be one of pending, indexed, failed",
    ),
    ("state missing", {"items": [GOOD, {"id": 2}]}, 422, "items[1]: state must be one of"),
    (
        "unknown field",
        {"items": [GOOD, {"id": 2, "state": "indexed", "by": "me"}]},
        422,
        "items[1]: unknown field(s): by",
    ),
    ("id missing", {"items": [GOOD, {"state": "indexed"}]}, 422, "items[1]: id must be a positive integer"),
    (
        "id as text",
        {"items": [GOOD, {"id": "2", "state": "indexed"}]},
        422,
        "items[1]: id must be a positive integer",
    ),
    (
        "id a boolean",
        {"items": [GOOD, {"id": True, "state": "indexed"}]},
        422,
        "items[1]: id must be a positive integer",
    ),
    (
        "id zero",
        {"items": [GOOD, {"id": 0, "state": "indexed"}]},
        422,
        "items[1]: id must be a positive integer",
    ),
    (
        "id past bigint",
        {"items": [GOOD, {"id": 2**63, "state": "indexed"}]},
        422,
        "items[1]: id must be a positive integer",
    ),
    ("id twice", {"items": [GOOD, {"id": 1, "state": "pending"}]}, 422, "items[1]: image 1 is also items[0]"),
    ("item not an object", {"items": [GOOD, [2, "indexed"]]}, 422, "items[1]: each item is a JSON object"),
    ("items empty", {"items": []}, 422, "non-empty list"),
    ("items not a list", {"items": GOOD}, 422, "non-empty list"),
    ("items missing", {}, 422, 'only "items"'),
    ("another top-level field", {"items": [GOOD], "model_id": "m1"}, 422, 'only "items"'),
    ("body a list", [GOOD], 422, 'only "items"'),
    ("501 items", {"items": [{"id": i, "state": "indexed"} for i in range(1, 502)]}, 413, "limit is 500"),
    ("not JSON", '{"items": [', 400, "the index states is not valid JSON"),
    ("empty body", "", 400, "must be JSON"),
]


@pytest.mark.parametrize(
    ("body", "status", "detail"), [c[1:] for c in BAD_STATES], ids=[c[0] for c in BAD_STATES]
)
def test_any_invalid_state_refuses_them_all(
    catalog: FlaskClient, database_url: str, body: Any, status: int, detail: str
) -> None:
    ids = add_images(catalog, 2)
    assert ids == [1, 2]  # the IDs the cases name
    assert put_states(catalog, [{"id": 1, "state": "failed", "reason": "before"}]).status_code == 200
    kwargs = {"data": body, "content_type": "application/json"} if isinstance(body, str) else {"json": body}
    response = catalog.put("/v1/models/m1/index-states", **kwargs)
    assert response.status_code == status, response.json
    assert response.mimetype == "application/problem+json"
    assert detail.lower() in response.json["detail"].lower(), response.json  # type: ignore[index]
    assert states_of(catalog, 1) == {"m1": ("failed", "before")}
    assert states_of(catalog, 2) == {}
    assert row_counts(database_url)["index_states"] == 1


def test_states_for_a_malformed_model_id_are_refused(catalog: FlaskClient) -> None:
    response = put_states(catalog, [GOOD], model_id="bad$model")
    assert response.status_code == 400 and "a model ID is" in response.json["detail"]  # type: ignore[index]


# -- the database failing mid-request ----------------------------------------------------------------


@pytest.fixture
def backend_dies_after_writing(database_url: str) -> Iterator[Callable[[str], None]]:
    """Make PostgreSQL drop the connection right after a statement writes to a table, before the
    transaction can commit: a database failing mid-transaction."""
    made: list[tuple[str, str]] = []
    function = f"die_{uuid.uuid4().hex[:8]}"

    def arm(table: str) -> None:
        trigger = f"{function}_{table}"
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL(
                    "CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS"
                    " $$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NULL; END $$"
                ).format(sql.Identifier(function))
            )
            conn.execute(
                sql.SQL(
                    "CREATE TRIGGER {} AFTER INSERT OR UPDATE ON {} FOR EACH STATEMENT EXECUTE FUNCTION {}()"
                ).format(sql.Identifier(trigger), sql.Identifier(table), sql.Identifier(function))
            )
        made.append((trigger, table))

    yield arm
    with psycopg.connect(database_url, autocommit=True) as conn:
        for trigger, table in made:
            conn.execute(
                sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                    sql.Identifier(trigger), sql.Identifier(table)
                )
            )
        conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(sql.Identifier(function)))


def test_database_failing_mid_batch_stores_no_image_of_it(
    catalog: FlaskClient,
    make_catalog_app: Callable[..., Flask],
    database_url: str,
    backend_dies_after_writing: Callable[[str], None],
) -> None:
    client = make_catalog_app().test_client()
    assert upload(client, png(20)).status_code == 201
    before = row_counts(database_url)
    backend_dies_after_writing("image_files")  # the images rows are written by then
    response = upload_batch(client, [png(21), png(22), png(20)])
    assert_database_unavailable(response)
    assert row_counts(database_url) == before
    assert stored_sha256s(database_url) == {sha256(png(20))}


def test_database_failing_while_setting_states_sets_none(
    catalog: FlaskClient,
    make_catalog_app: Callable[..., Flask],
    database_url: str,
    backend_dies_after_writing: Callable[[str], None],
) -> None:
    client = make_catalog_app().test_client()
    a, b = add_images(client, 2)
    backend_dies_after_writing("index_states")
    response = put_states(
        client, [{"id": a, "state": "indexed"}, {"id": b, "state": "failed", "reason": "x"}]
    )
    assert_database_unavailable(response)
    assert row_counts(database_url)["index_states"] == 0


def test_database_going_away_during_the_decode_gives_503_and_recovers(
    catalog: FlaskClient,
    catalog_settings: CatalogSettings,
    database_url: str,
    proxy: CuttableProxy,
    make_catalog_app: Callable[..., Flask],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy.restore()
    client = make_catalog_app(database_url=through(proxy, database_url), db_timeout_s=2.0).test_client()
    assert upload(client, png(30)).status_code == 201
    before = row_counts(database_url)
    decode = images.decode_raster

    def cut_then_decode(
        data: bytes, image_format: RasterFormat, limits: DecodeLimits, **options: Any
    ) -> Image.Image:
        proxy.cut()  # after the look-up, before the new images are stored
        return decode(data, image_format, limits, **options)

    monkeypatch.setattr(images, "decode_raster", cut_then_decode)
    assert_database_unavailable(upload_batch(client, [png(30), png(31), png(32)]))
    assert row_counts(database_url) == before

    monkeypatch.setattr(images, "decode_raster", decode)
    proxy.restore()
    wait_until_ready(client)
    items = upload_batch(client, [png(30), png(31), png(32)]).json["items"]  # type: ignore[index]
    assert [i["status"] for i in items] == [200, 201, 201]


def test_decode_threads_setting_is_read_and_bounded() -> None:
    assert CatalogSettings.from_environ({"MEDSEARCH_CATALOG_DECODE_THREADS": "2"}).decode_threads == 2
    with pytest.raises(SettingsError, match="MEDSEARCH_CATALOG_DECODE_THREADS"):
        CatalogSettings.from_environ({"MEDSEARCH_CATALOG_DECODE_THREADS": "0"})
