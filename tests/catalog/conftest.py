"""Catalog fixtures: the real app on the session's PostgreSQL database, emptied per test."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from psycopg import sql
from werkzeug.test import TestResponse

from medsearch_catalog.app import create_app
from medsearch_catalog.settings import CatalogSettings
from tests.support.proxy import CuttableProxy

# The site secret the catalog tests pseudonymise DICOM patient IDs with.
PSEUDONYM_KEY = "catalog-tests-pseudonym-key-0123456789abcdef"


@pytest.fixture(scope="session")
def catalog_settings(database_url: str) -> CatalogSettings:
    return CatalogSettings.from_environ(
        {
            "MEDSEARCH_DATABASE_URL": database_url,
            "MEDSEARCH_CATALOG_DB_TIMEOUT_S": "3",
            "MEDSEARCH_CATALOG_PSEUDONYM_KEY": PSEUDONYM_KEY,
        }
    )


@pytest.fixture(scope="session")
def catalog_app(catalog_settings: CatalogSettings) -> Iterator[Flask]:
    app = create_app(catalog_settings)
    yield app
    app.extensions["medsearch_catalog"].repository.pool.close()


@pytest.fixture
def make_catalog_app(catalog_settings: CatalogSettings) -> Iterator[Callable[..., Flask]]:
    """Build an app with changed settings (e.g. small limits); its pool closes after the test."""
    apps: list[Flask] = []

    def make(**changes: Any) -> Flask:
        app = create_app(replace(catalog_settings, **changes))
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["medsearch_catalog"].repository.pool.close()


@pytest.fixture
def proxy(postgres_admin_url: str) -> Iterator[CuttableProxy]:
    """A cuttable way to the test PostgreSQL server: point an app at it to take the database away."""
    info = psycopg.conninfo.conninfo_to_dict(postgres_admin_url)
    proxy = CuttableProxy(str(info.get("host", "127.0.0.1")), int(info.get("port", 5432)))
    yield proxy
    proxy.cut()


@pytest.fixture
def catalog(catalog_app: Flask, database_url: str) -> FlaskClient:
    """A test client over an empty catalog."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE images RESTART IDENTITY CASCADE")
    return catalog_app.test_client()


IMAGE_TABLES = ("images", "image_files", "index_states")
IDENTITY_TABLES = ("api_tokens", "sessions", "audit_events")


@pytest.fixture
def identity_catalog(catalog: FlaskClient, database_url: str) -> FlaskClient:
    """A test client over a catalog with no tokens, sessions or audit events either."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE api_tokens, sessions RESTART IDENTITY CASCADE")
        # The trail refuses truncation through its own trigger; replica mode skips triggers.
        conn.execute("SET session_replication_role = replica")
        conn.execute("TRUNCATE audit_events RESTART IDENTITY")
    return catalog


def row_counts(database_url: str, tables: tuple[str, ...] = IMAGE_TABLES) -> dict[str, int]:
    """Rows in each catalog table: proof that a rejected request wrote nothing."""
    with psycopg.connect(database_url) as conn:
        return {
            table: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[
                0
            ]  # type: ignore[index]
            for table in tables
        }


def upload(
    client: FlaskClient, data: bytes, metadata: Any = None, *, filename: str = "x.png"
) -> TestResponse:
    """POST /v1/images with `data` as the file and `metadata` as JSON (text passed as is)."""
    if metadata is None:
        metadata = {"dataset": "test"}
    text = metadata if isinstance(metadata, str) else json.dumps(metadata)
    return client.post(
        "/v1/images",
        data={"file": (io.BytesIO(data), filename), "metadata": text},
        content_type="multipart/form-data",
    )


def upload_batch(
    client: FlaskClient, files: list[bytes], metadata: Any = None, **fields: Any
) -> TestResponse:
    """POST /v1/images/batch: `files` in 'file', `metadata` as JSON (text passed as is; None: one
    {"dataset": "test"} per file), `fields` added to the form as they are."""
    if metadata is None:
        metadata = [{"dataset": "test"}] * len(files)
    data: dict[str, Any] = {"file": [(io.BytesIO(f), f"{i}.png") for i, f in enumerate(files)], **fields}
    data["metadata"] = metadata if isinstance(metadata, str) else json.dumps(metadata)
    return client.post("/v1/images/batch", data=data, content_type="multipart/form-data")


def png(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """A small distinct grayscale PNG (distinct bytes: distinct sha256)."""
    image = Image.new("L", size, color=seed % 256)
    image.putpixel((seed % size[0], 0), (seed * 7 + 1) % 256)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    set_name: str
    metadata: dict[str, Any]


def labelled_images(test_data: Path) -> list[LabelledImage]:
    """Every image of ../shared/data with catalog metadata taken from its labels."""
    images: list[LabelledImage] = []
    with open(test_data / "nih_cxr14" / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            labels = row["finding_labels"]
            images.append(
                LabelledImage(
                    test_data / "nih_cxr14" / row["path"],
                    "nih_cxr14",
                    {
                        "dataset": "nih_cxr14",
                        "external_id": Path(row["path"]).name,
                        "patient_id": row["patient_id"],
                        "study": int(row["follow_up"]),
                        "age": int(row["patient_age"]),
                        "sex": row["patient_gender"],
                        "view_position": row["view_position"],
                        "findings": [] if labels == "No Finding" else labels.split("|"),
                    },
                )
            )
    with open(test_data / "covid_hannover" / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            images.append(
                LabelledImage(
                    test_data / "covid_hannover" / row["path"],
                    "covid_hannover",
                    {
                        "dataset": "covid_hannover",
                        "external_id": row["image_id"],
                        "patient_id": row["patient_id"],
                        "sex": row["sex"].upper() or None,
                        "view_position": row["view_position"] or None,
                        "findings": [row["finding"]],
                        "extra": {"modality": row["modality"]},
                    },
                )
            )
    with open(test_data / "negatives" / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            images.append(
                LabelledImage(
                    test_data / "negatives" / row["path"],
                    "negatives",
                    {"dataset": "negatives", "external_id": Path(row["path"]).name, "extra": dict(row)},
                )
            )
    return images
