"""Who may do what through the gateway: the role each public endpoint needs, and reading the
credential a request carries. Pure rules, no I/O: the sign-in flow and the checks against the
catalog (API tokens, sessions) and the identity provider (`oidc.py`) use them.

Roles are ordered: `reader` searches and browses, `editor` also adds, deletes and reindexes,
`admin` also manages tokens and reads the audit trail. Public means no identity at all: the
UI's static files, liveness and the bare readiness answer. Anything not listed is refused,
so an endpoint added without a rule here is closed, and a test walks the OpenAPI document to
keep this table complete.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Role = Literal["reader", "editor", "admin"]
ROLES: tuple[Role, ...] = ("reader", "editor", "admin")  # weakest first
PUBLIC: Literal["public"] = "public"
Rule = Role | Literal["public"]

# (method, OpenAPI path template) -> the least role that may call it.
REQUIRED_ROLE: dict[tuple[str, str], Rule] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,  # only ready or not; the detailed checks need an admin
    ("GET", "/api/v1/openapi.json"): PUBLIC,
    ("GET", "/metrics"): "admin",
    ("POST", "/api/v1/search"): "reader",
    ("GET", "/api/v1/images/{image_id}/similar"): "reader",
    ("GET", "/api/v1/images"): "reader",
    ("GET", "/api/v1/images/{image_id}"): "reader",
    ("GET", "/api/v1/images/{image_id}/file"): "reader",
    ("GET", "/api/v1/images/{image_id}/thumbnail"): "reader",
    ("GET", "/api/v1/stats"): "reader",
    ("POST", "/api/v1/previews"): "reader",  # renders the reader's own upload, stores nothing
    ("POST", "/api/v1/similarity-maps"): "reader",
    ("POST", "/api/v1/searches"): "reader",
    ("POST", "/api/v1/duplicates"): "reader",  # IDs and metadata a reader may browse; writes nothing
    ("GET", "/api/v1/map"): "reader",
    ("GET", "/api/v1/map/jobs/current"): "reader",
    ("POST", "/api/v1/map/jobs"): "editor",  # minutes of computing over the whole index
    ("POST", "/api/v1/images"): "editor",
    ("POST", "/api/v1/images/batch"): "editor",
    ("DELETE", "/api/v1/images/{image_id}"): "editor",
    ("POST", "/api/v1/images/{image_id}/index"): "editor",
    ("GET", "/api/v1/pending"): "editor",
    ("POST", "/api/v1/verify"): "editor",
    # Signing in is how an identity is made; signing out checks the session's CSRF token itself.
    ("POST", "/api/v1/session"): PUBLIC,
    ("DELETE", "/api/v1/session"): PUBLIC,
    ("GET", "/api/v1/session"): "reader",
    ("POST", "/api/v1/tokens"): "admin",
    ("GET", "/api/v1/tokens"): "admin",
    ("DELETE", "/api/v1/tokens/{token_id}"): "admin",
    ("GET", "/api/v1/audit"): "admin",
    ("GET", "/api/v1/audit.csv"): "admin",
}

# Longer than any token, session or JWT this system issues or accepts (8 KiB): refused unread.
MAX_AUTHORIZATION_CHARS = 8192 + len("Bearer ")
_BEARER = re.compile(r"Bearer ([A-Za-z0-9._~+/=-]+)")


class MalformedCredential(Exception):
    """An Authorization header that is not `Bearer <token>` within the limits (401)."""


@dataclass(frozen=True)
class Credential:
    token: str

    @property
    def looks_like_jwt(self) -> bool:
        """Identity-provider tokens are JWTs (three dot-separated parts); MedSearch's are not."""
        return self.token.count(".") == 2


def required_role(method: str, path_template: str) -> Rule | None:
    """The rule of an endpoint, or None for one without a rule (which is then refused)."""
    return REQUIRED_ROLE.get((method.upper(), path_template))


def allows(role: Role | None, rule: Rule | None) -> bool:
    """Whether an identity with `role` (None: anonymous) may call an endpoint with `rule`."""
    if rule is None:
        return False
    if rule == PUBLIC:
        return True
    return role is not None and ROLES.index(role) >= ROLES.index(rule)


def bearer_credential(header: str | None) -> Credential | None:
    """The token of an `Authorization: Bearer …` header; None when there is no header."""
    if header is None:
        return None
    if len(header) > MAX_AUTHORIZATION_CHARS:
        raise MalformedCredential("the Authorization header is too long")
    match = _BEARER.fullmatch(header)
    if match is None:
        raise MalformedCredential("send the credential as 'Authorization: Bearer <token>'")
    return Credential(match[1])
