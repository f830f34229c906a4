"""Migrations: ordered, recorded, applied once however often the service starts."""

from __future__ import annotations

import psycopg

from medsearch_catalog.migrations import apply_migrations, bundled_migrations


def test_migrations_are_ordered_and_recorded_once(database_url: str, catalog_app: object) -> None:
    migrations = bundled_migrations()
    versions = [m.version for m in migrations]
    assert versions == sorted(versions) and versions[0].startswith("0001_")
    with psycopg.connect(database_url) as conn:
        assert apply_migrations(conn, migrations) == []  # the app applied them already
        recorded = [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert recorded == versions
