"""The catalog's identity and audit endpoints, as the gateway calls them.

The catalog owns API tokens, browser sessions and the audit trail because it owns
PostgreSQL: the gateway keeps no state and talks to no database, so it asks the catalog to
verify a secret and to record an event. Secrets travel in JSON bodies, never in URLs, so no
access log anywhere holds one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from medsearch_common.client import ServiceClient, UpstreamRejected
from medsearch_gateway.errors import InvalidRequest, TokenNotFound

# Verification is on the path of every request: a slow catalog must not hold it long.
_VERIFY_TIMEOUT_S = 5.0
_AUDIT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class VerifiedIdentity:
    """Who a token or session belongs to, as the catalog knows it."""

    subject: str  # token:<id> or oidc:<sub>
    role: str
    token_id: int | None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> VerifiedIdentity:
        return cls(str(body["subject"]), str(body["role"]), body.get("token_id"))


@dataclass(frozen=True)
class Session:
    secret: str
    csrf_token: str
    expires_at: str


class AccountsClient:
    def __init__(self, client: ServiceClient) -> None:
        self.client = client

    # -- verification -------------------------------------------------------------------

    def verify_token(self, secret: str) -> VerifiedIdentity | None:
        """The identity of a live API token; None for an unknown, revoked or expired one."""
        body = self._verify("/v1/tokens/verify", {"secret": secret})
        return None if body is None else VerifiedIdentity.from_json(body["identity"])

    def verify_session(
        self, secret: str, csrf_token: str | None = None
    ) -> tuple[VerifiedIdentity, bool] | None:
        """The identity of a live session, and whether `csrf_token` is its CSRF token."""
        sent = {"secret": secret} if csrf_token is None else {"secret": secret, "csrf_token": csrf_token}
        body = self._verify("/v1/sessions/verify", sent)
        if body is None:
            return None
        return VerifiedIdentity.from_json(body["identity"]), bool(body.get("csrf_ok", False))

    def _verify(self, path: str, sent: dict[str, str]) -> dict[str, Any] | None:
        try:
            response = self.client.request(
                "POST", path, json=sent, idempotent=True, read_timeout_s=_VERIFY_TIMEOUT_S
            )
        except UpstreamRejected as exc:
            if exc.status in (400, 401):  # malformed or unknown: simply not a credential
                return None
            raise
        body: dict[str, Any] = response.json()
        return body

    # -- sessions ----------------------------------------------------------------------

    def start_session(self, identity: VerifiedIdentity, ttl_s: int) -> Session:
        body: dict[str, Any] = {"subject": identity.subject, "role": identity.role, "ttl_s": ttl_s}
        if identity.token_id is not None:
            body["token_id"] = identity.token_id
        answer = self.client.request("POST", "/v1/sessions", json=body).json()
        return Session(answer["secret"], answer["csrf_token"], answer["expires_at"])

    def end_session(self, secret: str) -> None:
        self.client.request("DELETE", "/v1/sessions", json={"secret": secret})

    # -- tokens ------------------------------------------------------------------------

    def create_token(self, request_body: Any) -> dict[str, Any]:
        """A new token (its record and its secret, shown once); the catalog checks the fields."""
        try:
            body: dict[str, Any] = self.client.request("POST", "/v1/tokens", json=request_body).json()
        except UpstreamRejected as exc:
            raise InvalidRequest(_detail(exc, "the token request was refused")) from None
        return body

    def list_tokens(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.client.get_json("/v1/tokens")["items"]
        return items

    def revoke_token(self, token_id: int) -> None:
        try:
            self.client.request("DELETE", f"/v1/tokens/{token_id}")
        except UpstreamRejected as exc:
            if exc.status == 404:
                raise TokenNotFound(f"no API token has ID {token_id}") from None
            raise InvalidRequest(_detail(exc, "the revocation was refused")) from None

    # -- the audit trail ---------------------------------------------------------------

    def record(self, event: dict[str, Any]) -> None:
        self.client.request(
            "POST", "/v1/audit", json={"event": event}, idempotent=False, read_timeout_s=_AUDIT_TIMEOUT_S
        )

    def audit_page(self, params: Sequence[tuple[str, str]]) -> dict[str, Any]:
        try:
            body: dict[str, Any] = self.client.get_json("/v1/audit", params=params)
        except UpstreamRejected as exc:
            raise InvalidRequest(_detail(exc, "the audit query was refused")) from None
        return body

    def audit_csv(self, params: Sequence[tuple[str, str]]) -> Iterator[bytes]:
        """The trail as CSV, passed on as the catalog streams it."""
        try:
            response = self.client.request("GET", "/v1/audit.csv", params=params, stream=True)
        except UpstreamRejected as exc:
            raise InvalidRequest(_detail(exc, "the audit query was refused")) from None

        def chunks() -> Iterator[bytes]:
            with response:
                yield from response.iter_content(chunk_size=64 * 1024)

        return chunks()


def _detail(exc: UpstreamRejected, fallback: str) -> str:
    """The catalog's explanation of a refused request: the caller's own input was wrong (400)."""
    return str(exc.problem.get("detail") or fallback)
