"""The catalog's server errors name PostgreSQL, never where it is: no host, port or URL in a 5xx
body (its /readyz included); the address is for the log."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from flask.testing import FlaskClient

from medsearch_catalog.app import create_app
from medsearch_catalog.repository import ImageRepository
from medsearch_catalog.settings import CatalogSettings
from tests.catalog.conftest import png, upload
from tests.support.processes import free_port
from tests.support.proxy import CuttableProxy

# An IP address, a host:port pair, or a connection URL.
ADDRESS = re.compile(r"\d+\.\d+\.\d+\.\d+|[\w.-]+:\d{2,5}\b|\w+://|localhost|port \d+")


def assert_no_address(response: Any, *ports: int) -> None:
    assert response.status_code >= 500, response.get_data(as_text=True)
    text = response.get_data(as_text=True)
    assert "PostgreSQL" in text
    assert not ADDRESS.search(text), text
    assert not any(str(port) in text for port in ports), text


def answers(client: FlaskClient, image_id: int) -> list[Any]:
    return [
        client.get("/readyz"),
        client.get(f"/v1/images/{image_id}"),
        client.get("/v1/images"),
        upload(client, png(301), {"dataset": "details"}),
    ]


def url_at(database_url: str, port: int) -> str:
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    return f"postgresql://{info.get('user', 'postgres')}@127.0.0.1:{port}/{info['dbname']}"


def test_a_database_that_went_away_is_named_without_its_address(
    catalog_settings: CatalogSettings, database_url: str, proxy: CuttableProxy
) -> None:
    proxy.restore()
    app = create_app(
        replace(catalog_settings, database_url=url_at(database_url, proxy.port), db_timeout_s=1.0)
    )
    client = app.test_client()
    try:
        created = upload(client, png(300), {"dataset": "details"})
        assert created.status_code == 201
        proxy.cut()
        for response in answers(client, created.json["id"]):  # type: ignore[index]
            assert_no_address(response, proxy.port)
    finally:
        app.extensions["medsearch_catalog"].repository.pool.close()


@pytest.mark.parametrize("timeout_s", [1.0, 3.0])
def test_a_database_never_reached_is_named_without_its_address(
    catalog_settings: CatalogSettings, database_url: str, timeout_s: float
) -> None:
    port = free_port()
    app = create_app(
        replace(catalog_settings, database_url=url_at(database_url, port), db_timeout_s=timeout_s)
    )
    client = app.test_client()
    try:
        for response in answers(client, 1):
            assert_no_address(response, port)
    finally:
        app.extensions["medsearch_catalog"].repository.pool.close()


class RefusingPool:
    """Stands in for the pool at the moment PostgreSQL refuses a connection: hands out psycopg's
    own error for a real refused connection, whose text names the server's address."""

    def __init__(self, error: psycopg.OperationalError) -> None:
        self.error = error

    def connection(self, timeout: float | None = None) -> Any:
        raise self.error


def test_psycopg_s_words_with_the_address_stay_out_of_the_detail(database_url: str) -> None:
    port = free_port()
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(url_at(database_url, port), connect_timeout=2)
    assert str(port) in str(refused.value)  # what psycopg says: the address, to the log only
    repository = ImageRepository(RefusingPool(refused.value), connection_timeout_s=1)  # type: ignore[arg-type]

    reason = repository.check()

    assert reason is not None and "PostgreSQL" in reason
    assert not ADDRESS.search(reason) and str(port) not in reason, reason
