"""OIDC bearer tokens: a site's own identity provider (Keycloak, Entra ID) signs in its users.

A JWT is accepted only when its signature verifies against a key of the provider's JWKS
(fetched from `jwks_url`, cached), with an asymmetric algorithm the operator allows (never
`none`, never HMAC: a public key must not double as a shared secret), an unexpired `exp`, and
the configured issuer and audience. The role comes from a claim named by the operator (a
dotted path, e.g. `realm_access.roles` for Keycloak; a string or a list): the strongest
MedSearch role found there. Verification needs no state, so it happens here in the gateway;
the catalog, which owns tokens and sessions, is not asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jwt

ROLES = ("reader", "editor", "admin")  # weakest first
ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
MAX_TOKEN_CHARS = 8192  # a JWT larger than this is not one an identity provider issues
_REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]


class InvalidCredential(Exception):
    """No identity: malformed, forged, expired or foreign token (401). The message is for logs."""


class NoRole(Exception):
    """A valid identity without any MedSearch role (403)."""


class IdentityProviderUnavailable(Exception):
    """The provider's JWKS cannot be fetched, so no token can be checked (503)."""


@dataclass(frozen=True)
class OidcSettings:
    issuer: str
    audience: str
    jwks_url: str
    role_claim: str = "medsearch_role"
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    leeway_s: int = 30  # clock skew between the provider and this machine

    def __post_init__(self) -> None:
        refused = [name for name in self.algorithms if name not in ASYMMETRIC_ALGORITHMS]
        if refused or not self.algorithms:
            raise ValueError(
                f"OIDC algorithms must be asymmetric signatures ({', '.join(ASYMMETRIC_ALGORITHMS)}); "
                f"refused: {', '.join(refused) or 'an empty list'}"
            )


@dataclass(frozen=True)
class Identity:
    subject: str  # "oidc:<sub>"
    role: str
    expires_at: float | None = None  # the token's `exp`: a session made from it ends then


class OidcVerifier:
    def __init__(self, settings: OidcSettings, *, jwks_timeout_s: float = 5.0) -> None:
        self.settings = settings
        # Keys are cached for 5 minutes; an unknown `kid` refetches, so a key rotation is seen.
        self._jwks = jwt.PyJWKClient(settings.jwks_url, cache_keys=True, lifespan=300, timeout=jwks_timeout_s)

    def verify(self, token: str) -> Identity:
        """The identity a bearer token proves, or InvalidCredential / NoRole / IdentityProviderUnavailable."""
        if not token or len(token) > MAX_TOKEN_CHARS or not token.isascii() or token.count(".") != 2:
            raise InvalidCredential("not a JWT")
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
        except jwt.InvalidTokenError as exc:
            raise InvalidCredential(f"unreadable JWT header: {exc}") from None
        if algorithm not in self.settings.algorithms:
            raise InvalidCredential(f"algorithm {algorithm!r} is not allowed")
        try:
            key = self._jwks.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as exc:
            raise IdentityProviderUnavailable(
                f"the identity provider's keys cannot be fetched: {exc}"
            ) from None
        except (jwt.PyJWKClientError, jwt.InvalidTokenError) as exc:
            raise InvalidCredential(f"no key of the provider signs it: {exc}") from None
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=list(self.settings.algorithms),
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                leeway=self.settings.leeway_s,
                options={"require": _REQUIRED_CLAIMS},
            )
        except jwt.InvalidTokenError as exc:
            raise InvalidCredential(f"refused: {exc}") from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject or len(subject) > 200 or not subject.isprintable():
            raise InvalidCredential("the subject claim is not a usable name")
        return Identity(
            subject=f"oidc:{subject}",
            role=strongest_role(claim_at(claims, self.settings.role_claim)),
            expires_at=float(claims["exp"]),
        )


def claim_at(claims: dict[str, Any], path: str) -> Any:
    """The claim at a dotted path (`realm_access.roles`), or None where any step is missing."""
    value: Any = claims
    for step in path.split("."):
        if not isinstance(value, dict) or step not in value:
            return None
        value = value[step]
    return value


def strongest_role(value: Any) -> str:
    """The strongest MedSearch role among a claim's value (a string or a list of strings)."""
    names: Sequence[Any] = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    found = [role for role in ROLES if role in names]
    if not found:
        raise NoRole("the token carries no MedSearch role (reader, editor or admin)")
    return found[-1]
