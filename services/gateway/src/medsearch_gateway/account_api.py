"""Signing in and out, API tokens and the audit trail: the public API's account endpoints.

Signing in turns a credential (an API token, or the identity provider's JWT) into a browser
session: the catalog keeps the session, the browser gets its secret in an `HttpOnly`,
`SameSite=Strict` cookie (`Secure` over TLS) and the CSRF token its page sends with each change.
"""

from __future__ import annotations

import math
import time
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request

from medsearch_gateway.access import MAX_AUTHORIZATION_CHARS, Credential
from medsearch_gateway.accounts import AccountsClient, VerifiedIdentity
from medsearch_gateway.api import parse_id, refuse_unknown_params
from medsearch_gateway.errors import InvalidRequest, NotAllowed, NotSignedIn
from medsearch_gateway.guard import (
    CSRF_COOKIE,
    CSRF_HEADER,
    GUARD_EXTENSION,
    SESSION_COOKIE,
    Guard,
    note,
    same_origin,
)
from medsearch_gateway.identity import Caller

ACCOUNT_EXTENSION = "medsearch_account"
_AUDIT_PARAMS = {"actor", "action", "image_id", "since", "until", "limit", "cursor"}
_NO_STORE = {"Cache-Control": "no-store"}
# The catalog refuses sessions shorter than a minute: a JWT about to expire cannot sign in.
_MIN_SESSION_S = 60

blueprint = Blueprint("account", __name__, url_prefix="/api/v1")


class AccountSettings:
    def __init__(self, accounts: AccountsClient, *, session_ttl_s: int, secure_cookies: bool) -> None:
        self.accounts = accounts
        self.session_ttl_s = session_ttl_s
        self.secure_cookies = secure_cookies


def _settings() -> AccountSettings:
    found: AccountSettings = current_app.extensions[ACCOUNT_EXTENSION]
    return found


def _guard() -> Guard:
    found: Guard = current_app.extensions[GUARD_EXTENSION]
    return found


def caller_json(caller: Caller) -> dict[str, Any]:
    return {"subject": caller.subject, "role": caller.role, "via": caller.via, "token_id": caller.token_id}


# -- the session ----------------------------------------------------------------------------


@blueprint.get("/session")
def who_am_i() -> tuple[Response, int, dict[str, str]]:
    """Who this request is signed in as: what the UI asks first, to show what the role may do."""
    caller: Caller = g.caller
    return jsonify(caller_json(caller)), 200, _NO_STORE


@blueprint.post("/session")
def sign_in() -> tuple[Response, int]:
    """A browser session from an API token or the identity provider's JWT, sent as JSON
    `{"token": …}` (never in the URL, so no log holds it)."""
    origin = request.headers.get("Origin")
    if origin is not None and not same_origin(origin, request.host_url):
        raise NotAllowed("signing in from another site's page is refused")
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or set(body) != {"token"} or not isinstance(body["token"], str):
        raise InvalidRequest('send {"token": "<API token or identity-provider token>"} as JSON')
    token = body["token"].strip()
    if not token or len(token) > MAX_AUTHORIZATION_CHARS or not token.isascii():
        raise NotSignedIn("that is not a token MedSearch can check")
    caller = _guard().authenticator.bearer(Credential(token), fresh=True)
    g.caller = caller
    settings = _settings()
    ttl_s = settings.session_ttl_s
    if caller.expires_at is not None:  # a session outlives no identity-provider token
        ttl_s = min(ttl_s, math.floor(caller.expires_at - time.time()))
        if ttl_s < _MIN_SESSION_S:
            raise NotSignedIn("the identity provider's token expires within a minute; get a fresh one")
    assert caller.role is not None
    session = settings.accounts.start_session(
        VerifiedIdentity(caller.subject, caller.role, caller.token_id), ttl_s
    )
    response = jsonify(
        {**caller_json(caller), "csrf_token": session.csrf_token, "expires_at": session.expires_at}
    )
    secure = settings.secure_cookies or request.is_secure
    for name, value, http_only in (
        (SESSION_COOKIE, session.secret, True),
        (CSRF_COOKIE, session.csrf_token, False),
    ):
        response.set_cookie(
            name, value, max_age=ttl_s, path="/", secure=secure, httponly=http_only, samesite="Strict"
        )
    response.headers.update(_NO_STORE)
    return response, 201


@blueprint.delete("/session")
def sign_out() -> Response:
    """End this browser's session and clear its cookies. With a live session the request
    must carry its CSRF token (no other site can sign a user out); a dead one just clears."""
    secret = request.cookies.get(SESSION_COOKIE)
    guard = _guard()
    if secret:
        try:
            g.caller = guard.authenticator.session(
                secret, request.headers.get(CSRF_HEADER), unsafe=True, fresh=True
            )
        except NotSignedIn:
            secret = None  # already ended or expired: only the cookies remain to clear
    if secret:
        _settings().accounts.end_session(secret)
        guard.authenticator.forget_session(secret)
    response = Response(status=204)
    # A shared workstation: the images this browser kept in its cache go with the session.
    response.headers["Clear-Site-Data"] = '"cache"'
    for name in (SESSION_COOKIE, CSRF_COOKIE):
        response.delete_cookie(name, path="/", samesite="Strict")
    return response


# -- API tokens (admin) ---------------------------------------------------------------------


@blueprint.post("/tokens")
def create_token() -> tuple[Response, int, dict[str, str]]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidRequest('send the token as JSON: {"name": …, "role": …, "expires_at": optional}')
    created = _settings().accounts.create_token(body)
    note().detail = f"token {created['token']['id']} ({created['token']['role']})"
    return jsonify(created), 201, _NO_STORE


@blueprint.get("/tokens")
def list_tokens() -> tuple[Response, int, dict[str, str]]:
    refuse_unknown_params(set())
    return jsonify(items=_settings().accounts.list_tokens()), 200, _NO_STORE


@blueprint.delete("/tokens/<token_id>")
def revoke_token(token_id: str) -> tuple[str, int]:
    parsed = parse_id(token_id, "a token ID")
    note().detail = f"token {parsed}"
    _settings().accounts.revoke_token(parsed)
    _guard().authenticator.forget_token(parsed)
    return "", 204


# -- the audit trail (admin) ----------------------------------------------------------------


@blueprint.get("/audit")
def read_audit() -> tuple[Response, int, dict[str, str]]:
    refuse_unknown_params(_AUDIT_PARAMS)
    return jsonify(_settings().accounts.audit_page(list(request.args.items(multi=True)))), 200, _NO_STORE


@blueprint.get("/audit.csv")
def export_audit() -> Response:
    refuse_unknown_params(_AUDIT_PARAMS - {"limit", "cursor"})
    chunks = _settings().accounts.audit_csv(list(request.args.items(multi=True)))
    response = Response(chunks, mimetype="text/csv")
    response.headers["Content-Disposition"] = 'attachment; filename="medsearch-audit.csv"'
    response.headers.update(_NO_STORE)
    return response
