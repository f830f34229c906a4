"""The common service app: problem+json errors, request IDs, access logs, metrics, health and readiness."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import pytest
from flask import Flask, abort, request
from flask.testing import FlaskClient
from prometheus_client import Counter
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.test import TestResponse

from medsearch_common.client import UpstreamFailed, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable
from medsearch_common.context import current_request_id
from medsearch_common.httpapp import create_service_app, metrics_registry
from tests.common.conftest import JsonLog

FRESH_ID = re.compile(r"[0-9a-f]{32}")
PROBLEM_MEMBERS = {"type", "title", "status", "detail"}


class MyError(Exception):
    """A domain error the test service maps to 409."""


class MySpecialError(MyError):
    """A subclass the service maps to its own status."""


class MyUnmappedError(MyError):
    """A subclass the service does not map: it takes its parent's status."""


class ImageRejected(Exception):
    """A domain error that carries extra problem members."""

    def __init__(self, detail: str, reasons: list[str]) -> None:
        super().__init__(detail)
        self.problem_extensions = {"reasons": reasons}


class DependencyDown(Exception):
    """A domain error the test service maps to a 5xx status; it asks callers to wait."""

    problem_headers: ClassVar[dict[str, int]] = {"Retry-After": 3}


def build_app(
    readiness: Callable[[], Mapping[str, str | None]] = lambda: {"database": None},
    *,
    error_statuses: Mapping[type[Exception], int] | None = None,
    max_content_length: int | None = 64,
) -> Flask:
    """A tiny service on the common app, with routes that exercise its behaviour."""
    statuses = {MyError: 409, MySpecialError: 410, ImageRejected: 422, DependencyDown: 503}
    app = create_service_app(
        "demo",
        readiness=readiness,
        error_statuses=statuses if error_statuses is None else error_statuses,
        max_content_length=max_content_length,
    )

    @app.get("/items/<item_id>")
    def get_item(item_id: str) -> dict[str, Any]:
        return {"id": item_id, "request_id": current_request_id()}

    @app.post("/items")
    def post_item() -> tuple[dict[str, Any], int]:
        return {"size": len(request.get_data())}, 201

    @app.post("/form")
    def post_form() -> dict[str, Any]:
        return {"fields": sorted(request.form)}

    @app.get("/folder/")
    def folder() -> str:
        return "folder"

    @app.get("/missing/<item_id>")
    def missing(item_id: str) -> None:
        abort(404, description=f"No item has ID {item_id}.")

    @app.get("/raise/<kind>")
    def raise_error(kind: str) -> None:
        errors: dict[str, Exception] = {
            "mapped": MyError("Item 3 already exists."),
            "special": MySpecialError("Item 3 is gone for good."),
            "unmapped-subclass": MyUnmappedError("Item 3 conflicts."),
            "extensions": ImageRejected("Not a chest X-ray.", ["too small", "not grayscale"]),
            "dependency": DependencyDown("database is down"),
            "unavailable": UpstreamUnavailable("embedder", "embedder is unreachable"),
            "timeout": UpstreamTimeout("embedder", "embedder did not answer within 10 s"),
            "failed": UpstreamFailed("embedder", "embedder failed with HTTP 500: boom"),
            "rejected": UpstreamRejected("search", 422, {"status": 422, "detail": "k must be 1-100"}),
            "bug": RuntimeError("secret detail about patient P-123"),
        }
        raise errors[kind]

    return app


@pytest.fixture
def app() -> Flask:
    return build_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def problem_of(response: TestResponse, status: int) -> dict[str, Any]:
    """The response's problem body, after checking it is problem+json with the standard members."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json(force=True)
    assert isinstance(body, dict)
    assert PROBLEM_MEMBERS <= body.keys()
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def requests_total(client: FlaskClient) -> dict[tuple[str, str, str], float]:
    """`http_requests_total` from /metrics, by (endpoint, method, status)."""
    text = client.get("/metrics").get_data(as_text=True)
    counts: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "http_requests_total":
                labels = sample.labels
                counts[(labels["endpoint"], labels["method"], labels["status"])] = sample.value
    return counts


# werkzeug's own errors


def test_unknown_route_is_problem_json(client: FlaskClient) -> None:
    body = problem_of(client.get("/no/such/route"), 404)
    assert body["type"] == "about:blank"
    assert body["title"] == "Not Found"


def test_abort_keeps_its_description_as_the_detail(client: FlaskClient) -> None:
    body = problem_of(client.get("/missing/42"), 404)
    assert body["detail"] == "No item has ID 42."


def test_wrong_method_is_problem_json_with_allow_header(client: FlaskClient) -> None:
    response = client.delete("/items")
    body = problem_of(response, 405)
    assert body["title"] == "Method Not Allowed"
    allowed = {method.strip() for method in response.headers["Allow"].split(",")}
    assert "POST" in allowed
    assert "DELETE" not in allowed and "GET" not in allowed


def test_too_large_body_is_problem_json_naming_the_limit(client: FlaskClient) -> None:
    response = client.post("/items", data=b"x" * 65)
    body = problem_of(response, 413)
    assert body["title"] == "Request Entity Too Large"
    assert body["detail"] == "The request is larger than 64 bytes."


def test_too_large_form_field_is_named_as_such() -> None:
    app = build_app(max_content_length=10_000)
    app.config["MAX_FORM_MEMORY_SIZE"] = 100
    response = app.test_client().post("/form", data={"note": "x" * 500}, content_type="multipart/form-data")
    body = problem_of(response, 413)
    assert body["detail"] == "A text field of the form is larger than 100 bytes."


def test_body_within_the_limit_is_accepted(client: FlaskClient) -> None:
    response = client.post("/items", data=b"x" * 64)
    assert response.status_code == 201
    assert response.json == {"size": 64}


def test_without_a_limit_a_large_body_is_accepted() -> None:
    response = build_app(max_content_length=None).test_client().post("/items", data=b"x" * 100_000)
    assert response.status_code == 201


def test_a_missing_trailing_slash_still_redirects(client: FlaskClient) -> None:
    response = client.get("/folder")
    assert response.status_code == 308
    assert response.headers["Location"].endswith("/folder/")


# Domain errors


def test_mapped_domain_error_is_problem_json_with_its_status_and_slug(client: FlaskClient) -> None:
    body = problem_of(client.get("/raise/mapped"), 409)
    assert body["type"] == "urn:medsearch:problem:my-error"
    assert body["title"] == "My error"
    assert body["detail"] == "Item 3 already exists."


def test_mapped_subclass_uses_its_own_status(client: FlaskClient) -> None:
    body = problem_of(client.get("/raise/special"), 410)
    assert body["type"] == "urn:medsearch:problem:my-special-error"
    assert body["detail"] == "Item 3 is gone for good."


def test_unmapped_subclass_uses_its_parents_status(client: FlaskClient) -> None:
    body = problem_of(client.get("/raise/unmapped-subclass"), 409)
    assert body["type"] == "urn:medsearch:problem:my-unmapped-error"
    assert body["detail"] == "Item 3 conflicts."


def test_problem_extensions_of_an_error_become_members(client: FlaskClient) -> None:
    body = problem_of(client.get("/raise/extensions"), 422)
    assert body["reasons"] == ["too small", "not grayscale"]
    assert body["type"] == "urn:medsearch:problem:image-rejected"


def test_problem_headers_of_an_error_go_on_the_response(client: FlaskClient) -> None:
    response = client.get("/raise/dependency")
    problem_of(response, 503)
    assert response.headers["Retry-After"] == "3"


def test_mapped_server_error_is_logged_as_a_dependency_failure(
    client: FlaskClient, json_log: JsonLog
) -> None:
    problem_of(client.get("/raise/dependency"), 503)
    [entry] = json_log.with_msg("dependency failure")
    assert entry["level"] == "warning"
    assert entry["kind"] == "DependencyDown"
    assert entry["error"] == "database is down"


def test_unhandled_exception_is_a_500_problem_without_the_exception_text(
    client: FlaskClient, json_log: JsonLog
) -> None:
    response = client.get("/raise/bug")
    body = problem_of(response, 500)
    assert body["type"] == "about:blank"
    text = response.get_data(as_text=True)
    assert "P-123" not in text and "RuntimeError" not in text
    # The detail points to the logs: the traceback is there, under the same request ID.
    [entry] = json_log.with_msg("unhandled error")
    assert entry["level"] == "error"
    assert entry["request_id"] == response.headers["X-Request-ID"]
    assert "RuntimeError: secret detail about patient P-123" in entry["exc"]


@pytest.mark.parametrize(
    ("kind", "status", "slug"),
    [
        ("unavailable", 503, "upstream-unavailable"),
        ("timeout", 504, "upstream-timeout"),
        ("failed", 502, "upstream-failed"),
    ],
)
def test_upstream_errors_map_to_gateway_statuses_by_default(
    client: FlaskClient, kind: str, status: int, slug: str
) -> None:
    body = problem_of(client.get(f"/raise/{kind}"), status)
    assert body["type"] == f"urn:medsearch:problem:{slug}"
    assert body["detail"].startswith("embedder ")


def test_a_service_may_remap_an_upstream_error() -> None:
    app = build_app(error_statuses={UpstreamTimeout: 503})
    problem_of(app.test_client().get("/raise/timeout"), 503)


# Request IDs and headers


def test_a_valid_request_id_is_accepted_and_echoed(client: FlaskClient) -> None:
    response = client.get("/items/1", headers={"X-Request-ID": "gateway-req.42"})
    assert response.headers["X-Request-ID"] == "gateway-req.42"
    assert response.json is not None
    assert response.json["request_id"] == "gateway-req.42"


def test_a_request_id_is_generated_when_absent(client: FlaskClient) -> None:
    response = client.get("/items/1")
    generated = response.headers["X-Request-ID"]
    assert FRESH_ID.fullmatch(generated)
    assert response.json is not None
    assert response.json["request_id"] == generated


@pytest.mark.parametrize("bad", ["has spaces", "x" * 129, "<script>alert(1)</script>", "a/b"])
def test_an_invalid_request_id_is_replaced(client: FlaskClient, bad: str) -> None:
    generated = client.get("/items/1", headers={"X-Request-ID": bad}).headers["X-Request-ID"]
    assert FRESH_ID.fullmatch(generated)


def test_error_responses_carry_the_request_id_too(client: FlaskClient) -> None:
    response = client.get("/no/such/route", headers={"X-Request-ID": "req-404"})
    assert response.headers["X-Request-ID"] == "req-404"


def test_each_request_without_id_gets_a_different_one(client: FlaskClient) -> None:
    ids = {client.get("/healthz").headers["X-Request-ID"] for _ in range(5)}
    assert len(ids) == 5


def test_the_request_id_does_not_outlive_the_request(client: FlaskClient) -> None:
    client.get("/items/1", headers={"X-Request-ID": "req-1"})
    assert current_request_id() is None


@pytest.mark.parametrize("path", ["/items/1", "/no/such/route", "/raise/bug", "/metrics"])
def test_responses_say_nosniff(client: FlaskClient, path: str) -> None:
    assert client.get(path).headers["X-Content-Type-Options"] == "nosniff"


# Health and readiness


def test_healthz_is_ok(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok", "service": "demo"}


def test_readyz_is_ready_when_every_check_returns_none() -> None:
    app = build_app(lambda: {"database": None, "embedder": None})
    response = app.test_client().get("/readyz")
    assert response.status_code == 200
    assert response.json == {
        "status": "ready",
        "service": "demo",
        "checks": {"database": "ok", "embedder": "ok"},
    }


def test_readyz_with_no_checks_is_ready() -> None:
    assert build_app(dict).test_client().get("/readyz").status_code == 200


def test_readyz_is_503_problem_listing_the_failing_check() -> None:
    app = build_app(lambda: {"database": None, "embedder": "connection refused"})
    body = problem_of(app.test_client().get("/readyz"), 503)
    assert body["type"] == "urn:medsearch:problem:not-ready"
    assert body["detail"] == "demo is not ready (embedder: connection refused)"
    assert body["checks"] == {"database": "ok", "embedder": "connection refused"}


def test_readyz_asks_the_checks_on_every_request() -> None:
    state: dict[str, str | None] = {"database": "starting"}
    client = build_app(lambda: dict(state)).test_client()
    assert client.get("/readyz").status_code == 503
    state["database"] = None
    assert client.get("/readyz").status_code == 200


def test_readyz_names_a_check_that_failed_with_an_empty_reason() -> None:
    app = build_app(lambda: {"database": "", "embedder": None})
    body = problem_of(app.test_client().get("/readyz"), 503)
    assert body["checks"]["database"] != "ok"
    assert "database" in body["detail"]


# Metrics


def test_metrics_count_requests_by_url_rule_method_and_status(client: FlaskClient) -> None:
    client.get("/items/1")
    client.get("/items/2?patient=P-9")
    client.get("/missing/3")
    client.post("/items", data=b"abc")
    counts = requests_total(client)
    assert counts[("/items/<item_id>", "GET", "200")] == 2
    assert counts[("/missing/<item_id>", "GET", "404")] == 1
    assert counts[("/items", "POST", "201")] == 1


def test_metrics_keep_unmatched_paths_in_one_label(client: FlaskClient) -> None:
    client.get("/a")
    client.get("/b/c")
    counts = requests_total(client)
    assert counts[("<unmatched>", "GET", "404")] == 2
    assert not any(endpoint in ("/a", "/b/c") for endpoint, _, _ in counts)


def test_metrics_are_prometheus_text_with_durations(client: FlaskClient) -> None:
    client.get("/items/1")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert response.headers["Content-Type"].count("charset") == 1
    names = {family.name for family in text_string_to_metric_families(response.get_data(as_text=True))}
    assert {"http_requests", "http_request_duration_seconds"} <= names


def test_a_services_own_metric_shows_in_metrics(app: Flask, client: FlaskClient) -> None:
    ingested = Counter("images_ingested_total", "Images ingested.", registry=metrics_registry(app))
    ingested.inc(3)
    assert "images_ingested_total 3.0" in client.get("/metrics").get_data(as_text=True)


def test_two_apps_in_one_process_keep_separate_metrics() -> None:
    first, second = build_app().test_client(), build_app().test_client()
    first.get("/items/1")
    assert ("/items/<item_id>", "GET", "200") in requests_total(first)
    assert ("/items/<item_id>", "GET", "200") not in requests_total(second)


# Access log


def test_access_log_line_has_the_request_id_rule_path_and_status(
    client: FlaskClient, json_log: JsonLog
) -> None:
    client.get("/items/7", headers={"X-Request-ID": "req-77"})
    [entry] = json_log.with_msg("request")
    assert entry["request_id"] == "req-77"
    assert entry["logger"] == "medsearch.http"
    assert entry["method"] == "GET"
    assert entry["endpoint"] == "/items/<item_id>"
    assert entry["path"] == "/items/7"
    assert entry["status"] == 200
    assert isinstance(entry["duration_ms"], float) and entry["duration_ms"] >= 0


def test_query_strings_never_appear_in_the_access_log(client: FlaskClient, json_log: JsonLog) -> None:
    client.get("/items/7?patient_id=P-4711&name=Doe")
    client.get("/no/such/route?patient_id=P-4711")
    assert len(json_log.with_msg("request")) == 2
    assert "P-4711" not in json_log.text
    assert "Doe" not in json_log.text


def test_errors_are_access_logged_with_their_status(client: FlaskClient, json_log: JsonLog) -> None:
    client.get("/no/such/route", headers={"X-Request-ID": "req-404"})
    [entry] = json_log.with_msg("request")
    assert (entry["endpoint"], entry["status"], entry["request_id"]) == ("<unmatched>", 404, "req-404")


def test_health_and_metrics_probes_are_not_access_logged(client: FlaskClient, json_log: JsonLog) -> None:
    client.get("/healthz")
    client.get("/metrics")
    client.get("/readyz")
    assert [entry["endpoint"] for entry in json_log.with_msg("request")] == ["/readyz"]


def test_an_upstream_refusal_is_a_bad_gateway_unless_the_service_maps_it(client: FlaskClient) -> None:
    body = problem_of(client.get("/raise/rejected"), 502)
    assert "search rejected the request: k must be 1-100" in body["detail"]
