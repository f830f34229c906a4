"""The search service's settings, read from the environment once at start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from medsearch_common.settings import (
    LOG_LEVELS,
    Binding,
    SettingsError,
    env_choice,
    env_float,
    env_int,
    env_str,
    redact_url,
)

DEFAULT_PORT = 8082
DEFAULT_MILVUS_URI = "var/milvus.db"
INDEXES = ("auto", "FLAT", "HNSW")


@dataclass(frozen=True)
class SearchSettings:
    binding: Binding
    milvus_uri: str = field(default=DEFAULT_MILVUS_URI, repr=False)  # may hold a password
    milvus_token: str | None = field(default=None, repr=False)
    milvus_timeout_s: float = 10.0
    index: str = "auto"
    hnsw_ef: int = 64  # chosen by bench-search's sweep at 112k realistic vectors (README)
    max_queries: int = 100
    max_items: int = 1000
    max_request_bytes: int = 64 * 1024 * 1024
    threads: int = 8
    log_level: str = "INFO"
    # Where map jobs keep their progress and finished maps (map_jobs.py).
    map_dir: str = "var/search-maps"
    map_timeout_s: float = 3600.0

    @property
    def is_lite(self) -> bool:
        """pymilvus takes a local path ending in .db for Milvus Lite; a URL is a server."""
        return not self.milvus_uri.startswith(("http://", "https://"))

    @property
    def milvus_uri_redacted(self) -> str:
        return self.milvus_uri if self.is_lite else redact_url(self.milvus_uri)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> SearchSettings:
        uri = env_str(environ, "MEDSEARCH_MILVUS_URI", DEFAULT_MILVUS_URI)
        if not uri.startswith(("http://", "https://")) and not uri.endswith(".db"):
            raise SettingsError(
                f"MEDSEARCH_MILVUS_URI must be http(s)://host:port for a Milvus server or a local path "
                f"ending in .db for Milvus Lite, got {redact_url(uri)!r}"
            )
        return cls(
            binding=Binding.from_environ(environ, DEFAULT_PORT),
            milvus_uri=uri,
            milvus_token=environ.get("MEDSEARCH_MILVUS_TOKEN", "").strip() or None,
            milvus_timeout_s=env_float(
                environ, "MEDSEARCH_SEARCH_MILVUS_TIMEOUT_S", cls.milvus_timeout_s, minimum=0.1, maximum=600
            ),
            index=env_choice(environ, "MEDSEARCH_SEARCH_INDEX", cls.index, INDEXES),
            hnsw_ef=env_int(environ, "MEDSEARCH_SEARCH_HNSW_EF", cls.hnsw_ef, minimum=16, maximum=16384),
            max_queries=env_int(
                environ, "MEDSEARCH_SEARCH_MAX_QUERIES", cls.max_queries, minimum=1, maximum=10_000
            ),
            max_items=env_int(
                environ, "MEDSEARCH_SEARCH_MAX_ITEMS", cls.max_items, minimum=1, maximum=100_000
            ),
            max_request_bytes=env_int(
                environ, "MEDSEARCH_SEARCH_MAX_REQUEST_BYTES", cls.max_request_bytes, minimum=1024
            ),
            threads=env_int(environ, "MEDSEARCH_SEARCH_THREADS", cls.threads, minimum=1, maximum=256),
            log_level=env_choice(environ, "MEDSEARCH_LOG_LEVEL", cls.log_level, LOG_LEVELS),
            map_dir=env_str(environ, "MEDSEARCH_SEARCH_MAP_DIR", cls.map_dir),
            map_timeout_s=env_float(
                environ, "MEDSEARCH_SEARCH_MAP_TIMEOUT_S", cls.map_timeout_s, minimum=10, maximum=86_400
            ),
        )
