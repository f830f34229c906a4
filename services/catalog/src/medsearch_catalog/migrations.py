"""Ordered SQL migrations, applied at start, each once, recorded in `schema_migrations`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg.rows import tuple_row

log = logging.getLogger(__name__)

# Any constant will do: it keeps two processes starting together from migrating at once.
_MIGRATION_LOCK_KEY = 0x6D65647365617263


@dataclass(frozen=True)
class Migration:
    version: str
    sql: str


def bundled_migrations() -> list[Migration]:
    """The package's `migrations/NNNN_name.sql` files, in order."""
    folder = resources.files("medsearch_catalog") / "migrations"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [Migration(f.name.removesuffix(".sql"), f.read_text(encoding="utf-8")) for f in files]


def apply_migrations(conn: psycopg.Connection, migrations: list[Migration]) -> list[str]:
    """Apply those not yet recorded, all in one transaction; return their versions."""
    applied_now: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cursor = conn.cursor(row_factory=tuple_row)
        done = {version for (version,) in cursor.execute("SELECT version FROM schema_migrations")}
        for migration in migrations:
            if migration.version in done:
                continue
            conn.execute(migration.sql.encode())
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (migration.version,))
            applied_now.append(migration.version)
            log.info("applied migration", extra={"version": migration.version})
    return applied_now
