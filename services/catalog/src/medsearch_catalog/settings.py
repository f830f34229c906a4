"""The catalog's settings, read from the environment once at start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from medsearch_common.settings import (
    LOG_LEVELS,
    Binding,
    SettingsError,
    env_choice,
    env_flag,
    env_float,
    env_int,
    env_str,
    env_url,
    redact_url,
)

DEFAULT_PORT = 8083
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/medsearch"
# Where the pseudonym key is kept when none is given (relative to the working folder); made at
# the first start.
DEFAULT_PSEUDONYM_KEY_FILE = Path("var/catalog/pseudonym.key")
MIN_PSEUDONYM_KEY_CHARS = 32
DEFAULT_DICOM_MODALITIES = ("CR", "DX")


@dataclass(frozen=True)
class CatalogSettings:
    database_url: str = field(repr=False)  # may hold a password
    binding: Binding
    max_upload_bytes: int = 50 * 1024 * 1024
    max_image_pixels: int = 64_000_000
    thumbnail_px: int = 256
    # Threads that decode a batch's new images side by side (Pillow works outside the GIL).
    decode_threads: int = 4
    # gunicorn threads; each holds at most one database connection at a time, so the pool has
    # at least one per thread (a thread left without one would wait, then answer 503).
    threads: int = 8
    db_pool_size: int = 8
    db_timeout_s: float = 5.0
    db_statement_timeout_s: float = 15.0
    log_level: str = "INFO"
    # The site's secret for patient pseudonyms (HMAC-SHA256 of a DICOM's PatientID): given, or
    # read from (made in) the file.
    pseudonym_key: str | None = field(default=None, repr=False)
    pseudonym_key_file: Path = DEFAULT_PSEUDONYM_KEY_FILE
    dicom_modalities: tuple[str, ...] = DEFAULT_DICOM_MODALITIES
    allow_burned_in_annotation: bool = False

    def __post_init__(self) -> None:
        if self.db_pool_size < self.threads:
            raise SettingsError(
                f"MEDSEARCH_CATALOG_DB_POOL_SIZE ({self.db_pool_size}) must be at least "
                f"MEDSEARCH_CATALOG_THREADS ({self.threads}): each request thread may hold a "
                "connection, and one left without would wait, then answer 503"
            )

    @property
    def database_url_redacted(self) -> str:
        return redact_url(self.database_url)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> CatalogSettings:
        threads = env_int(environ, "MEDSEARCH_CATALOG_THREADS", cls.threads, minimum=1, maximum=100)
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
            threads=threads,
            db_pool_size=env_int(environ, "MEDSEARCH_CATALOG_DB_POOL_SIZE", threads, minimum=1, maximum=100),
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
            pseudonym_key=_pseudonym_key(environ),
            pseudonym_key_file=Path(
                env_str(environ, "MEDSEARCH_CATALOG_PSEUDONYM_KEY_FILE", str(DEFAULT_PSEUDONYM_KEY_FILE))
            ),
            dicom_modalities=_modalities(environ),
            allow_burned_in_annotation=env_flag(
                environ, "MEDSEARCH_CATALOG_ALLOW_BURNED_IN_ANNOTATION", cls.allow_burned_in_annotation
            ),
        )


def _pseudonym_key(environ: Mapping[str, str]) -> str | None:
    key = environ.get("MEDSEARCH_CATALOG_PSEUDONYM_KEY", "").strip()
    if not key:
        return None
    if len(key) < MIN_PSEUDONYM_KEY_CHARS:
        # The value itself is never printed.
        raise SettingsError(
            f"MEDSEARCH_CATALOG_PSEUDONYM_KEY must be at least {MIN_PSEUDONYM_KEY_CHARS} characters"
            f" (e.g. the output of `openssl rand -hex 32`), got {len(key)}"
        )
    return key


def _modalities(environ: Mapping[str, str]) -> tuple[str, ...]:
    raw = environ.get("MEDSEARCH_CATALOG_DICOM_MODALITIES", "").strip()
    if not raw:
        return DEFAULT_DICOM_MODALITIES
    modalities = tuple(dict.fromkeys(part.strip().upper() for part in raw.split(",") if part.strip()))
    if not modalities or not all(m.isalnum() and len(m) <= 16 for m in modalities):
        raise SettingsError(
            f"MEDSEARCH_CATALOG_DICOM_MODALITIES must be DICOM modality codes separated by commas"
            f" (e.g. CR,DX), got {raw[:60]!r}"
        )
    return modalities
