"""The Flask app every service starts from.

It gives: problem+json for every 4xx/5xx (werkzeug's own included) and for the domain
errors a service maps to statuses; `X-Request-ID` accepted or created, returned and
logged; one JSON access-log line a request; Prometheus `/metrics`; `/healthz`; `/readyz`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, Response, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from werkzeug.exceptions import HTTPException

from medsearch_common.client import UpstreamFailed, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable
from medsearch_common.context import REQUEST_ID_HEADER, accept_request_id, set_request_id
from medsearch_common.problems import PROBLEM_MIME, problem_body, problem_response, slug_of

log = logging.getLogger("medsearch.http")

# A readiness check returns, per dependency, None when it is fine or why it is not.
ReadinessCheck = Callable[[], Mapping[str, str | None]]

# Where a service's own metrics register, so that `/metrics` shows them with the rest.
METRICS_EXTENSION = "medsearch_metrics"

_COMMON_ERROR_STATUSES: dict[type[Exception], int] = {
    UpstreamUnavailable: 503,
    UpstreamTimeout: 504,
    UpstreamFailed: 502,
    # The upstream refused what this service sent it: this service's fault unless it maps
    # the error itself (the gateway passes a user's bad input through as a 4xx).
    UpstreamRejected: 502,
}

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def create_service_app(
    service: str,
    *,
    readiness: ReadinessCheck,
    error_statuses: Mapping[type[Exception], int] | None = None,
    max_content_length: int | None = None,
    readiness_details: Callable[[], bool] | None = None,
    serves_degraded: bool = False,
) -> Flask:
    """A Flask app with MedSearch's common behaviour; the service adds its blueprint.

    `readiness_details` says whether this request may see which dependency is failing; when
    it says no, `/readyz` answers only ready or not (the public face of a service). A service
    that `serves_degraded` stays ready (200, status "degraded") while a dependency fails: it
    still has something to serve, and its callers get a 503 naming what is missing.
    """
    app = Flask(f"medsearch_{service}", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = max_content_length
    app.json.sort_keys = False  # type: ignore[attr-defined]

    registry = CollectorRegistry()
    app.extensions[METRICS_EXTENSION] = registry
    requests_total = Counter(
        "http_requests_total",
        "HTTP requests served, by endpoint, method and status.",
        ["endpoint", "method", "status"],
        registry=registry,
    )
    request_seconds = Histogram(
        "http_request_duration_seconds",
        "Time to serve an HTTP request, by endpoint, method and status.",
        ["endpoint", "method", "status"],
        buckets=_LATENCY_BUCKETS,
        registry=registry,
    )

    @app.before_request
    def start_request() -> None:
        g.started = time.perf_counter()
        g.request_id = accept_request_id(request.headers.get(REQUEST_ID_HEADER))
        set_request_id(g.request_id)

    @app.after_request
    def finish_request(response: Response) -> Response:
        request_id = g.get("request_id") or accept_request_id(request.headers.get(REQUEST_ID_HEADER))
        response.headers[REQUEST_ID_HEADER] = request_id
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        # The rule, not the path: it keeps label values few, and query strings (which may
        # carry a patient ID) never reach the logs.
        endpoint = request.url_rule.rule if request.url_rule else "<unmatched>"
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        labels = (endpoint, request.method, str(response.status_code))
        requests_total.labels(*labels).inc()
        request_seconds.labels(*labels).observe(elapsed)
        if endpoint not in ("/healthz", "/metrics"):
            log.info(
                "request",
                extra={
                    "method": request.method,
                    "endpoint": endpoint,
                    "path": request.path,
                    "status": response.status_code,
                    "duration_ms": round(elapsed * 1000, 1),
                },
            )
        return response

    @app.teardown_request
    def forget_request_id(_exc: BaseException | None) -> None:
        set_request_id(None)

    @app.errorhandler(Exception)
    def handle_error(exc: Exception) -> Response | HTTPException:
        if isinstance(exc, HTTPException):
            if exc.code is None or exc.code < 400:
                return exc  # redirects (e.g. a missing trailing slash) stay redirects
            detail = exc.description or exc.name
            if exc.code == 413:
                detail = _too_large_detail(app)
            response = problem_response(exc.code, detail, title=exc.name)
            if exc.code == 405 and exc.valid_methods:  # type: ignore[attr-defined]
                response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
            return response
        body = error_problem(exc, error_statuses)
        if body is not None:
            if body["status"] >= 500:
                log.warning("dependency failure", extra={"error": str(exc), "kind": type(exc).__name__})
            response = Response(json.dumps(body), status=body["status"], mimetype=PROBLEM_MIME)
            response.headers.update(_headers_of(exc))
            return response
        log.exception("unhandled error")
        return problem_response(500, "The service failed unexpectedly; the request ID is in the logs.")

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok", service=service)

    @app.get("/readyz")
    def readyz() -> Response:
        checks = dict(readiness())
        ready = all(reason is None for reason in checks.values())
        details = readiness_details is None or readiness_details()
        if ready:
            if not details:
                return jsonify(status="ready", service=service)
            return jsonify(status="ready", service=service, checks=dict.fromkeys(checks, "ok"))
        # Any reason, even an empty one, means the check failed.
        reasons = {name: "ok" if reason is None else reason or "failed" for name, reason in checks.items()}
        if serves_degraded:
            if not details:
                return jsonify(status="degraded", service=service)
            return jsonify(status="degraded", service=service, checks=reasons)
        if not details:
            return problem_response(503, f"{service} is not ready", slug="not-ready")
        failing = ", ".join(
            f"{name}: {reasons[name]}" for name, reason in checks.items() if reason is not None
        )
        return problem_response(503, f"{service} is not ready ({failing})", slug="not-ready", checks=reasons)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    return app


def metrics_registry(app: Flask) -> CollectorRegistry:
    """The registry a service's own metrics go into."""
    registry: CollectorRegistry = app.extensions[METRICS_EXTENSION]
    return registry


def error_problem(
    exc: Exception, error_statuses: Mapping[type[Exception], int] | None = None
) -> dict[str, Any] | None:
    """The problem body of a domain error (the first of its classes with a status in
    `error_statuses` or the common ones); None for an error nobody mapped. Also how a batch
    answer describes the items that failed."""
    statuses = {**_COMMON_ERROR_STATUSES, **(error_statuses or {})}
    for exc_type in type(exc).__mro__:
        status = statuses.get(exc_type)
        if status is not None:
            return problem_body(status, str(exc), slug=slug_of(type(exc)), **_extensions_of(exc))
    return None


def _extensions_of(exc: Exception) -> dict[str, Any]:
    """Extra problem members an error carries in its `problem_extensions` attribute."""
    extensions = getattr(exc, "problem_extensions", None)
    return dict(extensions) if isinstance(extensions, Mapping) else {}


def _headers_of(exc: Exception) -> dict[str, str]:
    """Response headers an error carries in its `problem_headers` attribute (e.g. Retry-After)."""
    headers = getattr(exc, "problem_headers", None)
    return {str(k): str(v) for k, v in headers.items()} if isinstance(headers, Mapping) else {}


def _too_large_detail(app: Flask) -> str:
    """Which limit a 413 from werkzeug hit: the whole request, or one text field of a form."""
    max_request = app.config["MAX_CONTENT_LENGTH"]
    if max_request and (request.content_length or 0) > max_request:
        return f"The request is larger than {max_request} bytes."
    max_field = app.config.get("MAX_FORM_MEMORY_SIZE")
    if max_field:
        return f"A text field of the form is larger than {max_field} bytes."
    return "The request is too large."
