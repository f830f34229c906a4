"""The gateway's settings, read from the environment once at start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from medsearch_common.settings import LOG_LEVELS, Binding, env_choice, env_float, env_int, env_url

DEFAULT_PORT = 8080
_HTTP = ("http", "https")


@dataclass(frozen=True)
class Upstream:
    """Where one service is, and how long the gateway waits for it."""

    name: str
    url: str
    timeout_s: float


@dataclass(frozen=True)
class GatewaySettings:
    binding: Binding
    embedder: Upstream
    search: Upstream
    catalog: Upstream
    connect_timeout_s: float = 2.0
    attempts: int = 2
    max_upload_bytes: int = 64 * 1024 * 1024
    threads: int = 16
    log_level: str = "INFO"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> GatewaySettings:
        def upstream(name: str, port: int, timeout_s: float) -> Upstream:
            key = name.upper()
            return Upstream(
                name=name,
                url=env_url(environ, f"MEDSEARCH_{key}_URL", f"http://127.0.0.1:{port}", schemes=_HTTP),
                timeout_s=env_float(
                    environ, f"MEDSEARCH_GATEWAY_{key}_TIMEOUT_S", timeout_s, minimum=0.1, maximum=600
                ),
            )

        return cls(
            binding=Binding.from_environ(environ, DEFAULT_PORT),
            # Embedding one image takes ~0.2 s alone on 2 cores, seconds behind a busy queue.
            embedder=upstream("embedder", 8081, 30.0),
            search=upstream("search", 8082, 10.0),
            catalog=upstream("catalog", 8083, 10.0),
            connect_timeout_s=env_float(
                environ, "MEDSEARCH_GATEWAY_CONNECT_TIMEOUT_S", cls.connect_timeout_s, minimum=0.1, maximum=60
            ),
            attempts=env_int(environ, "MEDSEARCH_GATEWAY_ATTEMPTS", cls.attempts, minimum=1, maximum=5),
            max_upload_bytes=env_int(
                environ, "MEDSEARCH_GATEWAY_MAX_UPLOAD_BYTES", cls.max_upload_bytes, minimum=1024
            ),
            threads=env_int(environ, "MEDSEARCH_GATEWAY_THREADS", cls.threads, minimum=1, maximum=256),
            log_level=env_choice(environ, "MEDSEARCH_LOG_LEVEL", cls.log_level, LOG_LEVELS),
        )
