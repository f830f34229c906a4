"""The gateway's Flask app: the public API under /api/v1 and the web UI at /."""

from __future__ import annotations

import atexit
from importlib import resources

from flask import Blueprint, Flask, Response

from medsearch_common.httpapp import create_service_app, metrics_registry
from medsearch_gateway import account_api, collection_api, explore_api
from medsearch_gateway.accounts import AccountsClient
from medsearch_gateway.api import EXPLORER_EXTENSION, GATEWAY_EXTENSION, blueprint
from medsearch_gateway.auditing import AuditRecorder
from medsearch_gateway.clients import Services
from medsearch_gateway.errors import ERROR_STATUSES
from medsearch_gateway.exploring import Explorer
from medsearch_gateway.flows import Gateway
from medsearch_gateway.guard import GUARD_EXTENSION, Guard
from medsearch_gateway.identity import Authenticator
from medsearch_gateway.oidc import OidcVerifier
from medsearch_gateway.settings import GatewaySettings

# No inline script or style anywhere: metadata that slipped into the page as markup
# still could not run. Images may be blob: URLs (the query's preview).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
# Room for the multipart framing and the metadata field around the image.
_FORM_OVERHEAD_BYTES = 1024 * 1024

ui = Blueprint("ui", __name__, static_folder="static", static_url_path="/static")


@ui.get("/")
def index() -> Response:
    return _page("index.html")


@ui.get("/signin")
def signin() -> Response:
    return _page("signin.html")


def _page(name: str) -> Response:
    page = (resources.files("medsearch_gateway") / "static" / name).read_bytes()
    response = Response(page, mimetype="text/html")
    response.headers["Cache-Control"] = "no-cache"
    return response


def create_app(settings: GatewaySettings, services: Services | None = None) -> Flask:
    """The app over `services` (by default, clients of the services the settings name)."""
    services = services or Services.from_settings(settings)
    gateway = Gateway(services)
    # Which dependency is failing is for admins: the public /readyz says only ready or
    # degraded. Degraded is still ready: the UI and sign-in stay up while, say, the catalog's
    # database is down, and each call that needs it answers a 503 naming it.
    app = create_service_app(
        "gateway",
        readiness=gateway.readiness,
        error_statuses=ERROR_STATUSES,
        max_content_length=settings.max_upload_bytes + _FORM_OVERHEAD_BYTES,
        readiness_details=lambda: _guard(app).caller_or_anonymous().role == "admin",
        serves_degraded=True,
    )
    app.config["MAX_FORM_MEMORY_SIZE"] = _FORM_OVERHEAD_BYTES
    app.config["MEDSEARCH_MAX_UPLOAD_BYTES"] = settings.max_upload_bytes
    app.extensions[GATEWAY_EXTENSION] = gateway
    explorer = app.extensions[EXPLORER_EXTENSION] = Explorer(gateway)
    accounts = AccountsClient(services.catalog.client)
    Guard(
        Authenticator(
            accounts,
            OidcVerifier(settings.oidc) if settings.oidc else None,
            anonymous_readers=settings.anonymous_readers,
            cache_s=settings.credential_cache_s,
        ),
        AuditRecorder(accounts, metrics_registry(app)),
        anonymous_readers=settings.anonymous_readers,
    ).install(app)
    app.extensions[account_api.ACCOUNT_EXTENSION] = account_api.AccountSettings(
        accounts, session_ttl_s=settings.session_ttl_s, secure_cookies=settings.secure_cookies
    )
    app.register_blueprint(blueprint)
    app.register_blueprint(account_api.blueprint)
    app.register_blueprint(explore_api.blueprint)
    app.register_blueprint(collection_api.blueprint)
    app.register_blueprint(ui)

    @app.after_request
    def secure_headers(response: Response) -> Response:
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        return response

    atexit.register(explorer.close)
    atexit.register(gateway.close)
    return app


def _guard(app: Flask) -> Guard:
    guard: Guard = app.extensions[GUARD_EXTENSION]
    return guard
