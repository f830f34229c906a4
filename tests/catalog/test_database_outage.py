"""PostgreSQL going away: 503 naming it, in bounded time, and recovery without a restart."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Any

import psycopg
from flask.testing import FlaskClient
from psycopg import sql

from medsearch_catalog.app import create_app
from medsearch_catalog.settings import CatalogSettings
from tests.catalog.conftest import png, row_counts, upload
from tests.support.proxy import CuttableProxy

# Generous: these guard against a hang, they do not measure speed.
HANG_GUARD_S = 20.0


def through(proxy: CuttableProxy, database_url: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    return f"postgresql://{info.get('user', 'postgres')}@127.0.0.1:{proxy.port}/{info['dbname']}"


def wait_until_ready(client: FlaskClient) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        response = client.get("/readyz")
        if response.status_code == 200:
            assert response.json is not None
            return response.json
        time.sleep(0.5)
    raise AssertionError(f"not ready after 30 s: {response.json}")


def assert_database_unavailable(response: Any) -> None:
    assert response.status_code == 503, response.json
    assert response.mimetype == "application/problem+json"
    assert "PostgreSQL" in response.json["detail"]


def test_database_outage_gives_503_and_recovers_without_restart(
    catalog_settings: CatalogSettings, database_url: str, proxy: CuttableProxy
) -> None:
    proxy.restore()
    settings = replace(catalog_settings, database_url=through(proxy, database_url), db_timeout_s=2.0)
    app = create_app(settings)
    client = app.test_client()
    try:
        created = upload(client, png(101), {"dataset": "outage"})
        assert created.status_code == 201
        image_id = created.json["id"]  # type: ignore[index]
        before = row_counts(database_url)

        proxy.cut()
        for request in (
            lambda: client.get(f"/v1/images/{image_id}"),
            lambda: upload(client, png(102), {"dataset": "outage"}),
            lambda: client.get("/v1/images"),
        ):
            started = time.monotonic()
            assert_database_unavailable(request())
            assert time.monotonic() - started < HANG_GUARD_S
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json["checks"]["postgresql"] != "ok"  # type: ignore[index]
        assert client.get("/healthz").status_code == 200  # alive, just not ready
        assert row_counts(database_url) == before  # the upload during the outage left nothing

        proxy.restore()
        wait_until_ready(client)
        assert client.get(f"/v1/images/{image_id}").status_code == 200
        assert upload(client, png(102), {"dataset": "outage"}).status_code == 201
    finally:
        app.extensions["medsearch_catalog"].repository.pool.close()


def test_service_starts_while_database_is_down_and_migrates_when_it_comes(
    catalog_settings: CatalogSettings, postgres_admin_url: str, proxy: CuttableProxy
) -> None:
    name = f"medsearch_late_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    info = psycopg.conninfo.conninfo_to_dict(postgres_admin_url)
    url = f"postgresql://{info.get('user', 'postgres')}@127.0.0.1:{proxy.port}/{name}"
    app = create_app(replace(catalog_settings, database_url=url, db_timeout_s=1.0))
    client = app.test_client()
    try:
        assert client.get("/readyz").status_code == 503
        assert_database_unavailable(upload(client, png(103)))

        proxy.restore()
        wait_until_ready(client)
        assert upload(client, png(103)).status_code == 201
    finally:
        app.extensions["medsearch_catalog"].repository.pool.close()
        with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
