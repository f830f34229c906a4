"""Sign-in, roles and the audit trail, against the real services: every documented endpoint
refused without an identity (the OpenAPI document is walked, so none is forgotten), each role
allowed exactly what it may do, forged and expired credentials refused, browser sessions with
their cookie flags and CSRF defence, and what the audit trail records.

Most requests go through in-process gateway apps (so that each answer is checked against the
OpenAPI document, and OIDC or anonymous reading can be configured) talking to the session's
real catalog, search and embedder; the cookie tests use the real gateway under gunicorn.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import io
import json
import secrets
import socket
import time
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from flask.testing import FlaskClient
from PIL import Image
from werkzeug.test import TestResponse

from medsearch_common.settings import Binding
from medsearch_gateway.access import PUBLIC, REQUIRED_ROLE, ROLES, allows
from medsearch_gateway.app import create_app
from medsearch_gateway.oidc import OidcSettings
from medsearch_gateway.settings import GatewaySettings, Upstream
from tests.gateway.conftest import HTTP_TIMEOUT_S, Indexed, Stack
from tests.support.oidc import AUDIENCE, ISSUER, Provider
from tests.support.openapi import OpenApiDocument

pytestmark = pytest.mark.integration

OPENAPI = OpenApiDocument("medsearch_gateway")
check = OPENAPI.check
PROBLEM = "urn:medsearch:problem:"
UNKNOWN_ID = "987654321"
PROTECTED = sorted((method.lower(), path) for (method, path), rule in REQUIRED_ROLE.items() if rule != PUBLIC)


def settings_for(stack: Stack, **overrides: Any) -> GatewaySettings:
    return GatewaySettings(
        binding=Binding("127.0.0.1", 0),
        embedder=Upstream("embedder", stack.urls["embedder"], 30),
        search=Upstream("search", stack.urls["search"], 30),
        catalog=Upstream("catalog", stack.urls["catalog"], 30),
        **overrides,
    )


@pytest.fixture(scope="module")
def app(stack: Stack, indexed: list[Indexed]) -> FlaskClient:
    return create_app(settings_for(stack)).test_client()


def fresh_png(size: int = 48) -> bytes:
    """Random pixels: bytes no other test has stored."""
    out = io.BytesIO()
    Image.frombytes("L", (size, size), secrets.token_bytes(size * size)).save(out, format="PNG")
    return out.getvalue()


def call(client: FlaskClient, method: str, path: str, headers: dict[str, str] | None = None) -> TestResponse:
    """An endpoint with its path parameters filled in, sent with no body at all."""
    url = path.replace("{image_id}", UNKNOWN_ID).replace("{token_id}", UNKNOWN_ID)
    return client.open(url, method=method.upper(), headers=headers or {})


def problem(response: TestResponse, method: str, path: str, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, (method, path, response.get_data(as_text=True))
    body: dict[str, Any] = check(response, path, method)
    assert body["type"] == PROBLEM + kind and body["detail"]
    return body


def collection(client: FlaskClient, stack: Stack) -> tuple[int, int]:
    """What a refused request must not change: the images and the API tokens there are."""
    images = client.get("/api/v1/stats", headers=stack.auth).json["images"]  # type: ignore[index]
    tokens = len(client.get("/api/v1/tokens", headers=stack.auth).json["items"])  # type: ignore[index]
    return images, tokens


def audit(client: FlaskClient, stack: Stack, **filters: Any) -> list[dict[str, Any]]:
    response = client.get("/api/v1/audit", query_string=filters, headers=stack.auth)
    assert response.status_code == 200, response.get_data(as_text=True)
    items: list[dict[str, Any]] = check(response, "/api/v1/audit", "get")["items"]
    return items


def whoami(client: FlaskClient, headers: dict[str, str]) -> dict[str, Any]:
    body: dict[str, Any] = check(client.get("/api/v1/session", headers=headers), "/api/v1/session", "get")
    return body


# -- no identity, every endpoint ----------------------------------------------------------------


def test_every_protected_endpoint_refuses_a_request_without_an_identity_and_writes_nothing(
    app: FlaskClient, stack: Stack, indexed: list[Indexed]
) -> None:
    assert len(PROTECTED) == len(REQUIRED_ROLE) - 5  # healthz, readyz, openapi.json, sign in and out
    before = collection(app, stack)
    for method, path in PROTECTED:
        response = call(app, method, path)
        body = problem(response, method, path, 401, "not-signed-in")
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="medsearch"'
        assert "sign in" in body["detail"]
    # With real IDs too: a delete or reindex of an image that exists.
    image_id = indexed[0].image_id
    for method, url in (
        ("DELETE", f"/api/v1/images/{image_id}"),
        ("POST", f"/api/v1/images/{image_id}/index"),
    ):
        assert app.open(url, method=method).status_code == 401
    assert collection(app, stack) == before
    assert app.get(f"/api/v1/images/{image_id}", headers=stack.auth).status_code == 200


def test_the_public_endpoints_and_pages_need_no_identity(app: FlaskClient) -> None:
    assert check(app.get("/healthz"), "/healthz", "get") == {"status": "ok", "service": "gateway"}
    # Ready or not, and nothing more: which service is failing is for admins.
    assert check(app.get("/readyz"), "/readyz", "get") == {"status": "ready", "service": "gateway"}
    assert app.get("/api/v1/openapi.json").status_code == 200
    signed_out = app.get("/")
    assert signed_out.status_code == 302 and signed_out.headers["Location"].endswith("/signin")
    assert app.get("/signin").status_code == 200


def test_admins_see_readiness_details_and_metrics(app: FlaskClient, stack: Stack) -> None:
    ready = check(app.get("/readyz", headers=stack.auth), "/readyz", "get")
    assert ready["checks"] == {"embedder": "ok", "search": "ok", "catalog": "ok"}
    assert "checks" not in app.get("/readyz", headers=stack.auth_as("editor")).json  # type: ignore[operator]
    metrics = app.get("/metrics", headers=stack.auth)
    assert metrics.status_code == 200 and b"medsearch_audit_failures_total" in metrics.data
    problem(app.get("/metrics", headers=stack.auth_as("editor")), "get", "/metrics", 403, "not-allowed")


# -- each role exactly what it may ---------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_each_role_is_allowed_exactly_what_it_may_do(app: FlaskClient, stack: Stack, role: str) -> None:
    before = collection(app, stack)
    for method, path in PROTECTED:
        response = call(app, method, path, stack.auth_as(role))
        if allows(role, REQUIRED_ROLE[(method.upper(), path)]):  # type: ignore[arg-type]
            # Let in: what follows is the endpoint's own answer to an empty request.
            assert response.status_code not in (401, 403), (role, method, path, response.get_data())
            check(response, path, method)
        else:
            body = problem(response, method, path, 403, "not-allowed")
            assert f"this identity is a {role}" in body["detail"]
    assert collection(app, stack) == before


def test_a_reader_cannot_add_or_delete_and_nothing_changes(
    app: FlaskClient, stack: Stack, indexed: list[Indexed]
) -> None:
    reader = stack.auth_as("reader")
    before = collection(app, stack)
    added = app.post(
        "/api/v1/images",
        data={"image": (io.BytesIO(fresh_png()), "x.png"), "metadata": json.dumps({"dataset": "x"})},
        content_type="multipart/form-data",
        headers=reader,
    )
    problem(added, "post", "/api/v1/images", 403, "not-allowed")
    image_id = indexed[1].image_id
    problem(
        app.delete(f"/api/v1/images/{image_id}", headers=reader),
        "delete",
        "/api/v1/images/{image_id}",
        403,
        "not-allowed",
    )
    assert collection(app, stack) == before
    assert app.get(f"/api/v1/images/{image_id}", headers=reader).status_code == 200


@pytest.mark.parametrize(
    "header",
    [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "bearer mst_abc",
        "Bearer mst_abc extra",
        "Bearer " + "a" * 9000,
        "Bearer mst_" + "A" * 43,  # well formed, never issued
        "Bearer mss_" + "A" * 43,  # a session secret is a cookie, never a bearer token
        "Bearer not-a-medsearch-token",
        "Bearer aaa.bbb.ccc",  # a JWT where no identity provider is configured
    ],
)
def test_malformed_unknown_or_foreign_credentials_are_401(app: FlaskClient, header: str) -> None:
    response = app.get("/api/v1/stats", headers={"Authorization": header})
    problem(response, "get", "/api/v1/stats", 401, "not-signed-in")


def test_an_over_long_authorization_header_reaches_the_gateway_and_is_a_401(stack: Stack) -> None:
    # Through gunicorn, whose own header limit would answer with a bare 400.
    response = requests.get(
        f"{stack.gateway}/api/v1/stats", headers={"Authorization": "Bearer " + "a" * 12000}, timeout=30
    )
    assert response.status_code == 401 and response.headers["Content-Type"] == "application/problem+json"


# -- API tokens: made, used, revoked -------------------------------------------------------------


def test_a_revoked_token_is_refused_at_once_for_changes_and_within_seconds_for_reads(
    app: FlaskClient, stack: Stack
) -> None:
    created = app.post("/api/v1/tokens", json={"name": "revoke me", "role": "editor"}, headers=stack.auth)
    assert created.status_code == 201
    body = check(created, "/api/v1/tokens", "post")
    token_id, secret = body["token"]["id"], body["secret"]
    editor = {"Authorization": f"Bearer {secret}"}
    assert app.get("/api/v1/pending", headers=editor).status_code == 200
    assert app.get("/api/v1/stats", headers=editor).status_code == 200
    listed = check(app.get("/api/v1/tokens", headers=stack.auth), "/api/v1/tokens", "get")["items"]
    assert any(item["id"] == token_id for item in listed) and secret not in json.dumps(listed)

    revoked = app.delete(f"/api/v1/tokens/{token_id}", headers=stack.auth)
    assert revoked.status_code == 204
    problem(app.get("/api/v1/pending", headers=editor), "get", "/api/v1/pending", 401, "not-signed-in")
    # This app forgot the token as it revoked it; another gateway process may read for 5 s more.
    problem(app.get("/api/v1/stats", headers=editor), "get", "/api/v1/stats", 401, "not-signed-in")
    problem(
        app.delete(f"/api/v1/tokens/{UNKNOWN_ID}", headers=stack.auth),
        "delete",
        "/api/v1/tokens/{token_id}",
        404,
        "token-not-found",
    )
    bad = app.post("/api/v1/tokens", json={"name": "x", "role": "superuser"}, headers=stack.auth)
    assert "role" in problem(bad, "post", "/api/v1/tokens", 400, "invalid-request")["detail"]


def test_another_gateway_stops_reading_with_a_revoked_token_after_its_cache_time(
    app: FlaskClient, stack: Stack
) -> None:
    other = create_app(settings_for(stack, credential_cache_s=1.0)).test_client()
    created = app.post("/api/v1/tokens", json={"name": "cached", "role": "reader"}, headers=stack.auth).json
    assert created is not None
    reader = {"Authorization": f"Bearer {created['secret']}"}
    assert other.get("/api/v1/stats", headers=reader).status_code == 200
    assert app.delete(f"/api/v1/tokens/{created['token']['id']}", headers=stack.auth).status_code == 204
    time.sleep(1.5)
    assert other.get("/api/v1/stats", headers=reader).status_code == 401


# -- OIDC: a site's identity provider ------------------------------------------------------------


@pytest.fixture(scope="module")
def oidc_app(stack: Stack, provider: tuple[Provider, str]) -> FlaskClient:
    oidc = OidcSettings(issuer=ISSUER, audience=AUDIENCE, jwks_url=provider[1])
    return create_app(settings_for(stack, oidc=oidc)).test_client()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_an_identity_provider_token_signs_in_with_its_role(
    oidc_app: FlaskClient, provider: tuple[Provider, str], stack: Stack
) -> None:
    idp, _ = provider
    editor = bearer(idp.token(medsearch_role=["reader", "editor"]))
    assert whoami(oidc_app, editor) == {
        "subject": "oidc:u-123",
        "role": "editor",
        "via": "oidc",
        "token_id": None,
    }
    assert oidc_app.get("/api/v1/pending", headers=editor).status_code == 200
    reader = bearer(idp.token(sub="u-456", medsearch_role="reader"))
    problem(oidc_app.get("/api/v1/pending", headers=reader), "get", "/api/v1/pending", 403, "not-allowed")
    # API tokens still work beside the provider.
    assert whoami(oidc_app, stack.auth)["via"] == "token"


def forgeries(idp: Provider) -> dict[str, str]:
    now = int(time.time())
    stranger = Provider()
    unsigned = jwt.encode(
        {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "u-1",
            "iat": now,
            "exp": now + 300,
            "medsearch_role": "admin",
        },
        key=None,
        algorithm="none",
    )
    public_pem = idp.rsa.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}
    hs_body = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "u-1",
        "iat": now,
        "exp": now + 300,
        "medsearch_role": "admin",
    }
    return {
        "expired": idp.token(iat=now - 900, exp=now - 600, medsearch_role="admin"),
        "wrong issuer": idp.token(iss="https://evil.example.org", medsearch_role="admin"),
        "wrong audience": idp.token(aud="another-app", medsearch_role="admin"),
        "alg none": unsigned,
        "HS256 with the public key": _hs256(header, hs_body, public_pem),
        "another key under a known kid": stranger.token(medsearch_role="admin"),
        "unknown kid": idp.token(kid="nobody", medsearch_role="admin"),
        "tampered payload": _tampered(idp.token(medsearch_role="reader")),
        "no expiry": idp.token(exp=None, medsearch_role="admin"),
    }


def _hs256(header: dict[str, Any], body: dict[str, Any], secret: bytes) -> str:
    """HS256 signed with the provider's public key: the classic algorithm-confusion forgery."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{part(json.dumps(header).encode())}.{part(json.dumps(body).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{part(signature)}"


def _tampered(token: str) -> str:
    """A genuine token whose role was raised after signing."""
    head, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["medsearch_role"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{forged}.{signature}"


def test_forged_expired_and_foreign_jwts_are_401_and_write_nothing(
    oidc_app: FlaskClient, provider: tuple[Provider, str], stack: Stack
) -> None:
    idp, _ = provider
    before = collection(oidc_app, stack)
    for name, token in forgeries(idp).items():
        response = oidc_app.get("/api/v1/tokens", headers=bearer(token))
        assert response.status_code == 401, name
        problem(response, "get", "/api/v1/tokens", 401, "not-signed-in")
        added = oidc_app.post(
            "/api/v1/tokens", json={"name": "forged", "role": "admin"}, headers=bearer(token)
        )
        assert added.status_code == 401, name
    assert collection(oidc_app, stack) == before


def test_a_provider_token_without_a_medsearch_role_is_403(
    oidc_app: FlaskClient, provider: tuple[Provider, str]
) -> None:
    idp, _ = provider
    for claims in ({}, {"medsearch_role": "viewer"}, {"medsearch_role": ["nurse", "doctor"]}):
        response = oidc_app.get("/api/v1/stats", headers=bearer(idp.token(**claims)))
        problem(response, "get", "/api/v1/stats", 403, "not-allowed")


def test_an_unreachable_identity_provider_is_a_503_naming_it(
    stack: Stack, provider: tuple[Provider, str]
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/certs"
    oidc = OidcSettings(issuer=ISSUER, audience=AUDIENCE, jwks_url=url)
    client = create_app(settings_for(stack, oidc=oidc)).test_client()
    started = time.monotonic()
    response = client.get("/api/v1/stats", headers=bearer(provider[0].token(medsearch_role="reader")))
    body = problem(response, "get", "/api/v1/stats", 503, "upstream-unavailable")
    assert body["dependency"] == "identity provider" and "127.0.0.1" not in body["detail"]
    assert time.monotonic() - started < 30
    # API tokens do not need the provider.
    assert client.get("/api/v1/stats", headers=stack.auth).status_code == 200


def test_a_session_from_a_provider_token_ends_with_it(
    oidc_app: FlaskClient, provider: tuple[Provider, str]
) -> None:
    idp, _ = provider
    response = oidc_app.post("/api/v1/session", json={"token": idp.token(medsearch_role="reader")})
    assert response.status_code == 201
    body = check(response, "/api/v1/session", "post")
    assert body["subject"] == "oidc:u-123" and body["via"] == "oidc"
    max_ages = [
        int(part.split("=")[1])
        for c in response.headers.getlist("Set-Cookie")
        for part in c.split("; ")
        if part.startswith("Max-Age=")
    ]
    assert max_ages and all(age <= 300 for age in max_ages)


# -- anonymous reading, when the operator allows it ----------------------------------------------


def test_anonymous_reading_is_off_by_default_and_never_allows_writes(
    stack: Stack, indexed: list[Indexed]
) -> None:
    demo = create_app(settings_for(stack, anonymous_readers=True)).test_client()
    assert whoami(demo, {}) == {
        "subject": "anonymous",
        "role": "reader",
        "via": "anonymous",
        "token_id": None,
    }
    assert demo.get("/api/v1/stats").status_code == 200
    assert demo.get(f"/api/v1/images/{indexed[0].image_id}/thumbnail").status_code == 200
    for method, path in PROTECTED:
        if REQUIRED_ROLE[(method.upper(), path)] != "reader":
            problem(call(demo, method, path), method, path, 401, "not-signed-in")


# -- browser sessions: cookies, CSRF, sign-out ---------------------------------------------------


def sign_in(stack: Stack, role: str) -> tuple[requests.Session, str]:
    browser = requests.Session()
    response = browser.post(f"{stack.gateway}/api/v1/session", json={"token": stack.tokens[role]}, timeout=30)
    assert response.status_code == 201, response.text
    return browser, response.json()["csrf_token"]


def test_signing_in_sets_an_httponly_strict_session_cookie(stack: Stack) -> None:
    response = requests.post(
        f"{stack.gateway}/api/v1/session", json={"token": stack.tokens["reader"]}, timeout=30
    )
    assert response.status_code == 201
    cookies = {c.split("=", 1)[0]: c for c in response.raw.headers.getlist("Set-Cookie")}
    session, csrf = cookies["medsearch_session"], cookies["medsearch_csrf"]
    assert "HttpOnly" in session and "SameSite=Strict" in session and "Path=/" in session
    assert "Secure" not in session  # plain HTTP here; see the TLS test below
    assert "HttpOnly" not in csrf and "SameSite=Strict" in csrf
    assert response.headers["Cache-Control"] == "no-store"
    assert stack.tokens["reader"] not in response.text


def test_cookies_are_secure_over_tls_or_when_the_operator_says_tls_ends_at_a_proxy(stack: Stack) -> None:
    for client, url in (
        (create_app(settings_for(stack)).test_client(), "https://medsearch.example.org/api/v1/session"),
        (create_app(settings_for(stack, secure_cookies=True)).test_client(), "/api/v1/session"),
    ):
        response = client.post(url, json={"token": stack.tokens["reader"]})
        assert response.status_code == 201
        assert all("Secure" in c for c in response.headers.getlist("Set-Cookie"))


def test_a_browser_write_needs_its_csrf_token_and_its_own_site(stack: Stack) -> None:
    browser, csrf = sign_in(stack, "editor")
    url = f"{stack.gateway}/api/v1/images"
    who = browser.get(f"{stack.gateway}/api/v1/session", timeout=30).json()
    assert who["role"] == "editor" and who["via"] == "session"
    count = browser.get(f"{stack.gateway}/api/v1/stats", timeout=30).json()["images"]

    def add(headers: dict[str, str]) -> requests.Response:
        return browser.post(
            url,
            files={"image": ("x.png", fresh_png())},
            data={"metadata": json.dumps({"dataset": "csrf"})},
            headers=headers,
            timeout=HTTP_TIMEOUT_S,
        )

    refused = {
        "no token": add({}),
        "another token": add({"X-CSRF-Token": "msc_" + "A" * 43}),
        "another site": add({"X-CSRF-Token": csrf, "Origin": "https://evil.example.org"}),
        "cross-site fetch": add({"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"}),
    }
    for name, response in refused.items():
        assert response.status_code == 403, name
        assert response.json()["type"] == PROBLEM + "not-allowed", name
    assert browser.get(f"{stack.gateway}/api/v1/stats", timeout=30).json()["images"] == count
    made = add({"X-CSRF-Token": csrf, "Origin": stack.gateway})
    assert made.status_code == 201, made.text
    image_id = made.json()["image"]["id"]
    deleted = browser.delete(f"{url}/{image_id}", headers={"X-CSRF-Token": csrf}, timeout=HTTP_TIMEOUT_S)
    assert deleted.status_code == 204


def test_signing_in_from_another_site_is_refused(stack: Stack) -> None:
    response = requests.post(
        f"{stack.gateway}/api/v1/session",
        json={"token": stack.tokens["reader"]},
        headers={"Origin": "https://evil.example.org"},
        timeout=30,
    )
    assert response.status_code == 403 and "medsearch_session" not in response.headers.get("Set-Cookie", "")


def test_signing_out_needs_the_csrf_token_and_ends_the_session(stack: Stack) -> None:
    browser, csrf = sign_in(stack, "reader")
    session_url = f"{stack.gateway}/api/v1/session"
    assert browser.delete(session_url, timeout=30).status_code == 403  # no other site signs a user out
    assert browser.get(session_url, timeout=30).status_code == 200
    secret = browser.cookies["medsearch_session"]
    out = browser.delete(session_url, headers={"X-CSRF-Token": csrf}, timeout=30)
    assert out.status_code == 204 and out.headers["Clear-Site-Data"] == '"cache"'
    assert "medsearch_session" not in browser.cookies
    # The old cookie, kept by someone, is dead at once.
    ended = requests.get(session_url, cookies={"medsearch_session": secret}, timeout=30)
    assert ended.status_code == 401 and ended.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("token", ["", "mst_nope", "x" * 9000, "mss_" + "A" * 43])
def test_signing_in_with_a_bad_token_is_refused_and_sets_no_cookie(stack: Stack, token: str) -> None:
    response = requests.post(f"{stack.gateway}/api/v1/session", json={"token": token}, timeout=30)
    assert response.status_code in (400, 401) and "Set-Cookie" not in response.headers
    assert response.headers["Content-Type"] == "application/problem+json"


def test_sign_in_refuses_a_body_that_is_not_a_token(stack: Stack) -> None:
    for body in ({"data": "x"}, {"token": 5}, {"token": "mst_x", "role": "admin"}):
        response = requests.post(f"{stack.gateway}/api/v1/session", json=body, timeout=30)
        assert response.status_code == 400, body


# -- the audit trail -----------------------------------------------------------------------------


def test_a_search_is_audited_with_its_results_and_request_id(
    app: FlaskClient, stack: Stack, indexed: list[Indexed]
) -> None:
    reader = stack.auth_as("reader")
    subject = whoami(app, reader)["subject"]
    item = indexed[2]
    found = app.post(
        "/api/v1/search",
        data={"image": (io.BytesIO(item.path.read_bytes()), "upload.png"), "k": "5"},
        content_type="multipart/form-data",
        headers={**reader, "X-Request-ID": "audit-test-search-1"},
    )
    assert found.status_code == 200
    result_ids = [hit["image"]["id"] for hit in found.json["results"]]  # type: ignore[index]
    event = audit(app, stack, actor=subject, action="search", limit=1)[0]
    assert event["result_ids"] == result_ids and event["request_id"] == "audit-test-search-1"
    assert (event["role"], event["outcome"], event["image_id"]) == ("reader", "ok", None)

    app.get(f"/api/v1/images/{item.image_id}", headers=reader)
    app.get(f"/api/v1/images/{item.image_id}/file", headers=reader)
    views = audit(app, stack, actor=subject, action="view_image", image_id=item.image_id, limit=5)
    assert len(views) >= 2 and all(v["outcome"] == "ok" for v in views)


def test_refusals_adds_and_deletes_are_audited(
    app: FlaskClient, stack: Stack, indexed: list[Indexed]
) -> None:
    image_id = indexed[3].image_id
    reader = stack.auth_as("reader")
    subject = whoami(app, reader)["subject"]
    app.delete(f"/api/v1/images/{image_id}", headers={**reader, "X-Request-ID": "audit-refused-1"})
    refused = audit(app, stack, actor=subject, action="delete_image", limit=1)[0]
    assert refused["outcome"] == "refused" and refused["request_id"] == "audit-refused-1"
    assert "needs the editor role" in refused["detail"]
    app.get("/api/v1/tokens", headers={"X-Request-ID": "audit-anonymous-1"})
    anonymous = audit(app, stack, actor="anonymous", action="refused", limit=5)
    assert any(e["request_id"] == "audit-anonymous-1" and e["outcome"] == "refused" for e in anonymous)

    editor = stack.auth_as("editor")
    editor_subject = whoami(app, editor)["subject"]
    added = app.post(
        "/api/v1/images",
        data={"image": (io.BytesIO(fresh_png()), "x.png"), "metadata": json.dumps({"dataset": "audit"})},
        content_type="multipart/form-data",
        headers=editor,
    )
    new_id = added.json["image"]["id"]  # type: ignore[index]
    assert app.delete(f"/api/v1/images/{new_id}", headers=editor).status_code == 204
    history = audit(app, stack, actor=editor_subject, image_id=new_id)
    assert [(e["action"], e["outcome"]) for e in history] == [("delete_image", "ok"), ("add_image", "ok")]


def test_the_trail_exports_as_csv_for_admins_only_and_holds_no_patient_data(
    app: FlaskClient, stack: Stack, indexed: list[Indexed]
) -> None:
    problem(
        app.get("/api/v1/audit", headers=stack.auth_as("editor")), "get", "/api/v1/audit", 403, "not-allowed"
    )
    exported = app.get("/api/v1/audit.csv", headers=stack.auth)
    assert exported.status_code == 200 and exported.mimetype == "text/csv"
    assert exported.headers["Cache-Control"] == "no-store"
    rows = list(csv.reader(io.StringIO(exported.get_data(as_text=True))))
    assert rows[0] == [
        "id",
        "at",
        "actor",
        "role",
        "action",
        "outcome",
        "image_id",
        "result_ids",
        "request_id",
        "detail",
    ]
    assert len(rows) > 10
    text = exported.get_data(as_text=True)
    for item in indexed:
        # The files' names and the catalog's external IDs (NIH's image names): never in the trail.
        assert item.path.name not in text and str(item.metadata.get("external_id")) not in text
    for secret in stack.tokens.values():
        assert secret not in text
    bad = app.get("/api/v1/audit", query_string={"since": "yesterday"}, headers=stack.auth)
    problem(bad, "get", "/api/v1/audit", 400, "invalid-request")
    problem(
        app.get("/api/v1/audit", query_string={"colour": "red"}, headers=stack.auth),
        "get",
        "/api/v1/audit",
        400,
        "invalid-request",
    )


def test_no_secret_reaches_any_log(app: FlaskClient, stack: Stack) -> None:
    browser, csrf = sign_in(stack, "reader")
    browser.get(f"{stack.gateway}/api/v1/stats", timeout=30)
    browser.delete(f"{stack.gateway}/api/v1/session", headers={"X-CSRF-Token": csrf}, timeout=30)
    logs = "".join(path.read_text(encoding="utf-8", errors="replace") for path in stack.logs.glob("*.log"))
    assert logs  # the services do log
    for secret in (*stack.tokens.values(), csrf):
        assert secret not in logs
    for prefix in ("mst_", "mss_", "msc_"):
        assert prefix not in logs, prefix
