"""The catalog's Flask app: `create_app(settings)` wires the pool, the repository and the API."""

from __future__ import annotations

import atexit
from concurrent.futures import ThreadPoolExecutor

from flask import Flask
from psycopg_pool import ConnectionPool

from medsearch_catalog.api import CATALOG_EXTENSION, CatalogContext, blueprint
from medsearch_catalog.audit import AuditTrail
from medsearch_catalog.deidentify import Deidentifier
from medsearch_catalog.errors import ERROR_STATUSES
from medsearch_catalog.identity import IdentityStore
from medsearch_catalog.images import ImageLimits
from medsearch_catalog.pseudonym_key import load_pseudonym_key
from medsearch_catalog.repository import ImageRepository
from medsearch_catalog.settings import CatalogSettings
from medsearch_common.httpapp import create_service_app

# Room for the metadata part and multipart framing beyond the image itself.
_FORM_OVERHEAD_BYTES = 1024 * 1024


def create_pool(settings: CatalogSettings) -> ConnectionPool:
    """A pool that opens in the background, so that the service starts while PostgreSQL is down."""
    pool = ConnectionPool(
        settings.database_url,
        min_size=1,
        max_size=settings.db_pool_size,
        timeout=settings.db_timeout_s,
        # Give up a reconnection quickly: the next request starts a new one, so the
        # service recovers within seconds of PostgreSQL coming back.
        reconnect_timeout=settings.db_timeout_s,
        check=ConnectionPool.check_connection,
        kwargs={
            "connect_timeout": max(1, round(settings.db_timeout_s)),
            "application_name": "medsearch-catalog",
            "options": f"-c statement_timeout={int(settings.db_statement_timeout_s * 1000)}",
        },
        name="catalog",
        open=False,
    )
    pool.open(wait=False)
    return pool


def create_deidentifier(settings: CatalogSettings) -> Deidentifier:
    key, problem = load_pseudonym_key(settings.pseudonym_key, settings.pseudonym_key_file)
    return Deidentifier(
        key,
        modalities=settings.dicom_modalities,
        allow_burned_in_annotation=settings.allow_burned_in_annotation,
        key_problem=problem,
    )


def create_app(settings: CatalogSettings, pool: ConnectionPool | None = None) -> Flask:
    pool = pool or create_pool(settings)
    repository = ImageRepository(pool, connection_timeout_s=settings.db_timeout_s)
    decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="catalog-decode")
    app = create_service_app(
        "catalog",
        readiness=lambda: {"postgresql": repository.check()},
        error_statuses=ERROR_STATUSES,
        max_content_length=settings.max_upload_bytes + _FORM_OVERHEAD_BYTES,
    )
    app.config["MAX_FORM_MEMORY_SIZE"] = _FORM_OVERHEAD_BYTES
    app.extensions[CATALOG_EXTENSION] = CatalogContext(
        repository=repository,
        limits=ImageLimits(
            max_bytes=settings.max_upload_bytes,
            max_pixels=settings.max_image_pixels,
            thumbnail_px=settings.thumbnail_px,
        ),
        decode_pool=decode_pool,
        deidentifier=create_deidentifier(settings),
        identity=IdentityStore(repository),
        audit=AuditTrail(repository),
    )
    app.register_blueprint(blueprint)
    atexit.register(pool.close)
    atexit.register(decode_pool.shutdown, cancel_futures=True)
    # Migrate now when the database is there; otherwise the first request or /readyz will.
    repository.check()
    return app
