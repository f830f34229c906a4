"""The gateway's settings, read from the environment once at start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

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
)
from medsearch_gateway.oidc import OidcSettings

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
    # The search service replica that makes and keeps collection maps, when not the one behind
    # `search` (Kubernetes: several search replicas, one map replica with a volume).
    maps: Upstream | None = None
    connect_timeout_s: float = 2.0
    attempts: int = 2
    max_upload_bytes: int = 64 * 1024 * 1024
    threads: int = 16
    log_level: str = "INFO"
    # Sign-in (see access.py): a site's identity provider, when it has one.
    oidc: OidcSettings | None = None
    # A teaching demo may let anyone read; writes always need a signed-in editor.
    anonymous_readers: bool = False
    # Session cookies are Secure when the request came over TLS; behind a proxy that ends
    # TLS the gateway sees plain HTTP, so a deployment says so here.
    secure_cookies: bool = False
    # How long a verified credential is trusted for reads before the catalog is asked again:
    # a revoked token or ended session keeps reading for at most this long (writes always ask).
    credential_cache_s: float = 5.0
    session_ttl_s: int = 8 * 3600

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
            maps=(
                Upstream("search", env_url(environ, "MEDSEARCH_MAPS_URL", None, schemes=_HTTP), 60.0)
                if environ.get("MEDSEARCH_MAPS_URL", "").strip()
                else None
            ),
            connect_timeout_s=env_float(
                environ, "MEDSEARCH_GATEWAY_CONNECT_TIMEOUT_S", cls.connect_timeout_s, minimum=0.1, maximum=60
            ),
            attempts=env_int(environ, "MEDSEARCH_GATEWAY_ATTEMPTS", cls.attempts, minimum=1, maximum=5),
            max_upload_bytes=env_int(
                environ, "MEDSEARCH_GATEWAY_MAX_UPLOAD_BYTES", cls.max_upload_bytes, minimum=1024
            ),
            threads=env_int(environ, "MEDSEARCH_GATEWAY_THREADS", cls.threads, minimum=1, maximum=256),
            log_level=env_choice(environ, "MEDSEARCH_LOG_LEVEL", cls.log_level, LOG_LEVELS),
            oidc=oidc_from_environ(environ),
            anonymous_readers=env_flag(environ, "MEDSEARCH_ANONYMOUS_READERS", cls.anonymous_readers),
            secure_cookies=env_flag(environ, "MEDSEARCH_GATEWAY_SECURE_COOKIES", cls.secure_cookies),
            credential_cache_s=env_float(
                environ, "MEDSEARCH_GATEWAY_CREDENTIAL_CACHE_S", cls.credential_cache_s, minimum=0, maximum=60
            ),
            session_ttl_s=env_int(
                environ, "MEDSEARCH_SESSION_TTL_S", cls.session_ttl_s, minimum=60, maximum=7 * 24 * 3600
            ),
        )


_OIDC_REQUIRED = ("MEDSEARCH_OIDC_ISSUER", "MEDSEARCH_OIDC_AUDIENCE", "MEDSEARCH_OIDC_JWKS_URL")


def oidc_from_environ(environ: Mapping[str, str]) -> OidcSettings | None:
    """The identity provider's settings: all three of issuer, audience and JWKS URL, or none."""
    given = [name for name in _OIDC_REQUIRED if environ.get(name, "").strip()]
    if not given:
        return None
    if len(given) < len(_OIDC_REQUIRED):
        missing = ", ".join(name for name in _OIDC_REQUIRED if name not in given)
        raise SettingsError(f"OIDC needs {', '.join(_OIDC_REQUIRED)} together; missing: {missing}")
    algorithms = tuple(
        name.strip() for name in env_str(environ, "MEDSEARCH_OIDC_ALGORITHMS", "RS256,ES256").split(",")
    )
    issuer = env_str(environ, "MEDSEARCH_OIDC_ISSUER")
    audience = env_str(environ, "MEDSEARCH_OIDC_AUDIENCE")
    jwks_url = env_url(environ, "MEDSEARCH_OIDC_JWKS_URL", None, schemes=_HTTP)
    role_claim = env_str(environ, "MEDSEARCH_OIDC_ROLE_CLAIM", "medsearch_role")
    try:
        return OidcSettings(issuer, audience, jwks_url, role_claim, algorithms)
    except ValueError as exc:  # the algorithms
        raise SettingsError(f"MEDSEARCH_OIDC_ALGORITHMS: {exc}") from None
