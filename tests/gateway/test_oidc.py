"""OIDC bearer tokens against a JWKS endpoint this test serves, with keys it generates: real
signatures, real verification, and the forgeries a gateway must refuse."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from medsearch_gateway.oidc import (
    IdentityProviderUnavailable,
    InvalidCredential,
    NoRole,
    OidcSettings,
    OidcVerifier,
)
from tests.support.oidc import AUDIENCE, ISSUER, Provider


def verifier(jwks_url: str, **settings: Any) -> OidcVerifier:
    return OidcVerifier(OidcSettings(issuer=ISSUER, audience=AUDIENCE, jwks_url=jwks_url, **settings))


def test_a_token_signed_by_the_provider_gives_its_subject_and_role(provider: tuple[Provider, str]) -> None:
    idp, url = provider
    identity = verifier(url).verify(idp.token(medsearch_role="editor"))
    assert (identity.subject, identity.role) == ("oidc:u-123", "editor")
    assert identity.expires_at is not None and identity.expires_at > time.time()
    ec_token = idp.token(key=idp.ec, kid="ec-1", algorithm="ES256", medsearch_role="reader")
    assert verifier(url).verify(ec_token).role == "reader"


def test_the_role_claim_may_be_a_nested_list_and_the_strongest_role_wins(
    provider: tuple[Provider, str],
) -> None:
    idp, url = provider
    token = idp.token(realm_access={"roles": ["offline_access", "reader", "admin"]})
    assert verifier(url, role_claim="realm_access.roles").verify(token).role == "admin"


@pytest.mark.parametrize("claims", [{}, {"medsearch_role": "superuser"}, {"medsearch_role": ["viewer"]}])
def test_a_valid_identity_without_a_medsearch_role_is_forbidden(
    provider: tuple[Provider, str], claims: dict[str, Any]
) -> None:
    idp, url = provider
    with pytest.raises(NoRole):
        verifier(url).verify(idp.token(**claims))


def forgeries(idp: Provider) -> dict[str, str]:
    now = int(time.time())
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    good = idp.token(medsearch_role="admin")
    header, _payload, signature = good.split(".")
    other_payload = jwt.encode({"medsearch_role": "admin"}, "k" * 32, algorithm="HS256").split(".")[1]
    public_pem = idp.rsa.public_key().public_bytes(
        encoding=serialization.Encoding.PEM, format=serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {
        "expired": idp.token(medsearch_role="admin", iat=now - 3600, exp=now - 600),
        "signed by a stranger with the provider's kid": idp.token(key=stranger, medsearch_role="admin"),
        "alg none": jwt.encode(
            {
                "iss": ISSUER,
                "aud": AUDIENCE,
                "sub": "u",
                "iat": now,
                "exp": now + 300,
                "medsearch_role": "admin",
            },
            None,
            algorithm="none",
            headers={"kid": "rsa-1"},
        ),
        "HMAC keyed with the public key": _hmac_with(public_pem, now),
        "wrong issuer": idp.token(medsearch_role="admin", iss="https://evil.example.org"),
        "wrong audience": idp.token(medsearch_role="admin", aud="another-app"),
        "no expiry": idp.token(medsearch_role="admin", exp=None),
        "unknown kid": idp.token(medsearch_role="admin", kid="rotated-away"),
        "payload swapped": f"{header}.{other_payload}.{signature}",
        "not a JWT": "Bearer-less nonsense",
        "empty": "",
        "over-long": "a." + "b" * 10_000 + ".c",
        "non-ASCII": "ä.ö.ü",
    }


def _hmac_with(secret: bytes, now: int) -> str:
    """The classic confusion attack: HS256 keyed with the provider's public key."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    head = part({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"})
    body = part(
        {"iss": ISSUER, "aud": AUDIENCE, "sub": "u", "iat": now, "exp": now + 300, "medsearch_role": "admin"}
    )
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def test_every_forgery_is_refused(provider: tuple[Provider, str]) -> None:
    idp, url = provider
    check = verifier(url)
    for name, token in forgeries(idp).items():
        with pytest.raises(InvalidCredential):
            check.verify(token)
            pytest.fail(f"accepted: {name}")


def test_symmetric_algorithms_cannot_be_configured() -> None:
    with pytest.raises(ValueError, match="asymmetric"):
        OidcSettings(issuer=ISSUER, audience=AUDIENCE, jwks_url="http://x", algorithms=("HS256",))


def test_keys_are_cached_between_tokens(provider: tuple[Provider, str]) -> None:
    idp, url = provider
    check = verifier(url)
    before = idp.requests
    for _ in range(5):
        check.verify(idp.token(medsearch_role="reader"))
    assert idp.requests - before == 1


def test_a_provider_that_cannot_be_reached_is_a_dependency_failure(provider: tuple[Provider, str]) -> None:
    idp, _ = provider
    with pytest.raises(IdentityProviderUnavailable):
        verifier("http://127.0.0.1:9/certs").verify(idp.token(medsearch_role="reader"))
