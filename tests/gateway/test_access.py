"""The gateway's access rules: every documented endpoint has one, roles are ordered, and the
Authorization header is read strictly. Pure logic: no services."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from medsearch_gateway.access import (
    PUBLIC,
    REQUIRED_ROLE,
    ROLES,
    MalformedCredential,
    allows,
    bearer_credential,
    required_role,
)

METHODS = ("get", "post", "put", "patch", "delete")


def documented_endpoints() -> set[tuple[str, str]]:
    document = json.loads((resources.files("medsearch_gateway") / "openapi.json").read_text(encoding="utf-8"))
    return {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
        if method in METHODS
    }


def test_every_documented_endpoint_has_a_rule_and_every_rule_is_documented() -> None:
    assert documented_endpoints() == set(REQUIRED_ROLE)


def test_the_document_states_each_rule() -> None:
    document = json.loads((resources.files("medsearch_gateway") / "openapi.json").read_text(encoding="utf-8"))
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if method in METHODS:
                assert operation["x-medsearch-role"] == REQUIRED_ROLE[(method.upper(), path)], (method, path)
                if REQUIRED_ROLE[(method.upper(), path)] == PUBLIC:
                    assert operation["security"] == []
                else:
                    assert {"401", "403"} <= set(operation["responses"]), (method, path)


def test_only_liveness_readiness_sign_in_and_out_and_the_api_description_are_public() -> None:
    public = {endpoint for endpoint, rule in REQUIRED_ROLE.items() if rule == PUBLIC}
    assert public == {
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/api/v1/openapi.json"),
        ("POST", "/api/v1/session"),
        ("DELETE", "/api/v1/session"),
    }


def test_every_write_needs_an_editor_and_metrics_an_admin() -> None:
    for (method, path), rule in REQUIRED_ROLE.items():
        if method in ("POST", "PUT", "PATCH", "DELETE") and path not in (
            "/api/v1/search",
            "/api/v1/similarity-maps",  # reads stored images, writes nothing
            "/api/v1/searches",
            "/api/v1/duplicates",  # reads the index and the catalog, writes nothing
            "/api/v1/previews",
            "/api/v1/session",
        ):
            assert rule in ("editor", "admin"), (method, path)
    assert required_role("get", "/metrics") == "admin"
    for method, path in REQUIRED_ROLE:
        if path.startswith(("/api/v1/tokens", "/api/v1/audit")):
            assert REQUIRED_ROLE[(method, path)] == "admin", (method, path)


@pytest.mark.parametrize(
    ("role", "rule", "allowed"),
    [
        (None, PUBLIC, True),
        (None, "reader", False),
        ("reader", "reader", True),
        ("reader", "editor", False),
        ("editor", "reader", True),
        ("editor", "editor", True),
        ("editor", "admin", False),
        ("admin", "editor", True),
        ("admin", None, False),  # an endpoint without a rule is closed to everyone
    ],
)
def test_roles_are_ordered_and_unknown_endpoints_are_closed(
    role: str | None, rule: str | None, allowed: bool
) -> None:
    assert allows(role, rule) is allowed  # type: ignore[arg-type]
    assert ROLES == ("reader", "editor", "admin")


def test_a_bearer_header_gives_its_token() -> None:
    assert bearer_credential(None) is None
    credential = bearer_credential("Bearer mst_AbC-12_x")
    assert credential is not None
    assert credential.token == "mst_AbC-12_x"
    assert not credential.looks_like_jwt
    jwt_like = bearer_credential("Bearer aaa.bbb.ccc")
    assert jwt_like is not None and jwt_like.looks_like_jwt


@pytest.mark.parametrize(
    "header",
    [
        "",
        "Bearer",
        "Bearer ",
        "bearer mst_x",
        "Basic dXNlcjpwYXNz",
        "Bearer mst_x extra",
        "Bearer mst_\u00e4",
        "Bearer mst_x\r\nX-Injected: 1",
        "Bearer " + "a" * 9000,
    ],
)
def test_malformed_or_over_long_authorization_headers_are_refused(header: str) -> None:
    with pytest.raises(MalformedCredential):
        bearer_credential(header)
