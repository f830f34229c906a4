"""Sign-in on every request: the hooks that apply access.py's rules before a request runs and
write its audit event after it ran.

A refused request is answered 401 (no identity; `WWW-Authenticate: Bearer`) or 403 (the
role may not, or a browser write without its CSRF token or from another site) as
problem+json, before any service is asked for anything, so nothing is written. The UI's
page answers a signed-out browser with a redirect to the sign-in page instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from flask import Flask, Response, g, redirect, request
from werkzeug.wrappers import Response as BaseResponse

from medsearch_common.client import UpstreamError
from medsearch_gateway.access import PUBLIC, Rule, allows, required_role
from medsearch_gateway.auditing import AUDITED, AuditRecorder, Note
from medsearch_gateway.errors import NotAllowed, NotSignedIn
from medsearch_gateway.identity import Authenticator, Caller, anonymous

GUARD_EXTENSION = "medsearch_guard"
SESSION_COOKIE = "medsearch_session"
CSRF_COOKIE = "medsearch_csrf"  # readable by the page's script, which echoes it in the header
CSRF_HEADER = "X-CSRF-Token"
SIGN_IN_PATH = "/signin"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
# The UI is not in the OpenAPI document: its rules by Flask endpoint name.
UI_RULES: dict[str, Rule] = {"ui.index": "reader", "ui.signin": PUBLIC, "ui.static": PUBLIC}
WHO_AM_I = ("GET", "/api/v1/session")
_PARAMETER = re.compile(r"<(?:[a-z_]+:)?([a-z_]+)>")


@dataclass(frozen=True)
class Guard:
    authenticator: Authenticator
    recorder: AuditRecorder
    anonymous_readers: bool

    def install(self, app: Flask) -> None:
        app.extensions[GUARD_EXTENSION] = self
        app.before_request(self._authorize)
        app.after_request(self._audit)

    def caller_or_anonymous(self) -> Caller:
        """The caller of this request when its credential verifies, else anonymous; for public
        endpoints that show more to some (the detailed readiness) and must never fail."""
        caller: Caller | None = g.get("caller")
        if caller is not None and caller.role is not None:
            return caller
        try:
            return self._caller(unsafe=False, fresh=False)
        except (NotSignedIn, NotAllowed, UpstreamError):
            return anonymous(self.anonymous_readers)

    # -- the hooks -------------------------------------------------------------------------

    def _authorize(self) -> BaseResponse | None:
        g.audit_note = Note()
        g.caller = anonymous(self.anonymous_readers)
        if request.url_rule is None or request.endpoint is None:
            return None  # 404 and 405 say nothing about any image
        method = "GET" if request.method in SAFE_METHODS else request.method
        template = _PARAMETER.sub(r"{\1}", request.url_rule.rule)
        g.audit_endpoint = (method, template)
        if request.endpoint in UI_RULES:
            rule: Rule | None = UI_RULES[request.endpoint]
        else:
            rule = required_role(method, template)
        if rule == PUBLIC:
            return None
        unsafe = method not in SAFE_METHODS
        needed = f"{method} {template} " + (f"needs the {rule} role" if rule else "is closed")
        try:
            caller = self._caller(unsafe=unsafe, fresh=rule in ("editor", "admin"))
        except (NotSignedIn, NotAllowed) as exc:
            if request.endpoint in UI_RULES and isinstance(exc, NotSignedIn):
                return redirect(SIGN_IN_PATH)
            g.audit_note.detail = f"{needed}: {exc}"
            raise
        g.caller = caller
        if unsafe and caller.via == "session":
            self._refuse_cross_site(needed)
        if allows(caller.role, rule):
            return None
        if caller.via == "anonymous":  # anonymous readers too: signing in is the way further
            if request.endpoint in UI_RULES:
                return redirect(SIGN_IN_PATH)
            g.audit_note.detail = f"{needed}: no credential"
            raise NotSignedIn(f"sign in first: {needed}")
        g.audit_note.detail = f"{needed}: the caller is a {caller.role}"
        raise NotAllowed(f"{needed}; this identity is a {caller.role}")

    def _audit(self, response: Response) -> Response:
        endpoint = g.get("audit_endpoint")
        if endpoint is None:
            return response
        refused = response.status_code in (401, 403)
        if refused and endpoint == WHO_AM_I:
            return response  # a page asking whether it is signed in: no event, every visit
        action = AUDITED.get(endpoint) or ("refused" if refused else None)
        if action is not None:
            self.recorder.record(
                g.get("caller") or anonymous(False),
                action,
                status=response.status_code,
                note=g.get("audit_note") or Note(),
                request_id=g.get("request_id"),
            )
        return response

    # -- parts -----------------------------------------------------------------------------

    def _caller(self, *, unsafe: bool, fresh: bool) -> Caller:
        return self.authenticator.caller(
            authorization=request.headers.get("Authorization"),
            session=request.cookies.get(SESSION_COOKIE),
            csrf_token=request.headers.get(CSRF_HEADER),
            unsafe=unsafe,
            fresh=fresh,
        )

    def _refuse_cross_site(self, needed: str) -> None:
        """A browser write must come from this site's own pages (defence beside the CSRF token
        and the SameSite cookie): browsers name the page's origin in these headers."""
        if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            g.audit_note.detail = f"{needed}: a cross-site request"
            raise NotAllowed("a change from another site's page is refused")
        origin = request.headers.get("Origin")
        if origin is not None and not same_origin(origin, request.host_url):
            g.audit_note.detail = f"{needed}: a cross-site request"
            raise NotAllowed("a change from another site's page is refused")


def same_origin(origin: str, host_url: str) -> bool:
    """Host and port only: behind a proxy that ends TLS the gateway sees http, the page https."""
    return urlsplit(origin).netloc.lower() == urlsplit(host_url).netloc.lower()


def note() -> Note:
    """The audit note of the current request, for handlers to add what they touched."""
    found: Note | None = g.get("audit_note")
    if found is None:
        found = g.audit_note = Note()
    return found
