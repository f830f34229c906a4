"""The catalog's settings, read from the environment once at start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from medsearch_common.settings import (
    LOG_LEVELS,
    Binding,
    env_choice,
    env_float,
    env_int,
    env_url,
    redact_url,
)

DEFAULT_PORT = 8083
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/medsearch"


@dataclass(frozen=True)
class CatalogSettings:
    database_url: str = field(repr=False)  # may hold a password
    binding: Binding
    max_upload_bytes: int = 50 * 1024 * 1024
    max_image_pixels: int = 64_000_000
    thumbnail_px: int = 256
    # Threads that decode a batch's new images side by side (Pillow works outside the GIL).
    decode_threads: int = 4
    db_pool_size: int = 8
    db_timeout_s: float = 5.0
    db_statement_timeout_s: float = 15.0
    log_level: str = "INFO"

    @property
    def database_url_redacted(self) -> str:
        return redact_url(self.database_url)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> CatalogSettings:
        return cls(
            database_url=env_url(
                environ, "MEDSEARCH_DATABASE_URL", DEFAULT_DATABASE_URL, schemes=("postgresql", "postgres")
            ),
            binding=Binding.from_environ(environ, DEFAULT_PORT),
            max_upload_bytes=env_int(
                environ, "MEDSEARCH_CATALOG_MAX_UPLOAD_BYTES", cls.max_upload_bytes, minimum=1024
            ),
            max_image_pixels=env_int(
                environ, "MEDSEARCH_CATALOG_MAX_IMAGE_PIXELS", cls.max_image_pixels, minimum=1024
            ),
            thumbnail_px=env_int(
                environ, "MEDSEARCH_CATALOG_THUMBNAIL_PX", cls.thumbnail_px, minimum=32, maximum=2048
            ),
            decode_threads=env_int(
                environ, "MEDSEARCH_CATALOG_DECODE_THREADS", cls.decode_threads, minimum=1, maximum=64
            ),
            db_pool_size=env_int(
                environ, "MEDSEARCH_CATALOG_DB_POOL_SIZE", cls.db_pool_size, minimum=1, maximum=100
            ),
            db_timeout_s=env_float(
                environ, "MEDSEARCH_CATALOG_DB_TIMEOUT_S", cls.db_timeout_s, minimum=0.1, maximum=120
            ),
            db_statement_timeout_s=env_float(
                environ,
                "MEDSEARCH_CATALOG_DB_STATEMENT_TIMEOUT_S",
                cls.db_statement_timeout_s,
                minimum=0.1,
                maximum=3600,
            ),
            log_level=env_choice(environ, "MEDSEARCH_LOG_LEVEL", cls.log_level, LOG_LEVELS),
        )
