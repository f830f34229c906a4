"""Who is calling: the identity a request proves, and its role.

Three kinds of credential, one answer (a `Caller`):
- `Authorization: Bearer mst_…`: a MedSearch API token, verified by the catalog;
- `Authorization: Bearer <JWT>`: a token of the site's identity provider (`oidc.py`);
- the browser's session cookie, verified by the catalog, with its CSRF token for writes.
No credential is an anonymous caller, who may read only where the operator allows it.

Reader endpoints trust a verified credential for a few seconds (`cache_s`), so a page of
thumbnails asks the catalog once; editor and admin endpoints always ask it, so a revoked
token or an ended session changes nothing more, at once.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from medsearch_common.client import UpstreamUnavailable
from medsearch_gateway.access import ROLES, Credential, MalformedCredential, Role, bearer_credential
from medsearch_gateway.accounts import AccountsClient, VerifiedIdentity
from medsearch_gateway.errors import NotAllowed, NotSignedIn
from medsearch_gateway.oidc import IdentityProviderUnavailable, InvalidCredential, NoRole, OidcVerifier

TOKEN_PREFIX = "mst_"  # noqa: S105 - a prefix, not a secret
SESSION_PREFIX = "mss_"
_CACHE_ENTRIES = 10_000
IDENTITY_PROVIDER = "identity provider"
Via = Literal["token", "oidc", "session", "anonymous"]


@dataclass(frozen=True)
class Caller:
    """The identity behind a request. `subject` is `token:<id>`, `oidc:<sub>` or `anonymous`:
    the catalog's own IDs or the provider's subject, never a person's name."""

    subject: str
    role: Role | None  # None: anonymous, where anonymous reading is off
    via: Via
    token_id: int | None = None
    expires_at: float | None = None  # epoch seconds, for OIDC tokens (sessions end with them)


def anonymous(readers: bool) -> Caller:
    return Caller("anonymous", "reader" if readers else None, "anonymous")


class _Cache:
    """Verified credentials by the sha256 of their secret, for a few seconds; bounded in size."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: OrderedDict[bytes, tuple[float, Caller | None]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes) -> tuple[bool, Caller | None]:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] < time.monotonic():
                return False, None
            return True, entry[1]

    def put(self, key: bytes, caller: Caller | None) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            self._entries[key] = (time.monotonic() + self.ttl_s, caller)
            self._entries.move_to_end(key)
            while len(self._entries) > _CACHE_ENTRIES:
                self._entries.popitem(last=False)

    def forget(self, key: bytes) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def forget_token(self, token_id: int) -> None:
        with self._lock:
            for key in [k for k, (_, c) in self._entries.items() if c is not None and c.token_id == token_id]:
                del self._entries[key]


def _key(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii", "replace")).digest()


class Authenticator:
    def __init__(
        self,
        accounts: AccountsClient,
        oidc: OidcVerifier | None,
        *,
        anonymous_readers: bool = False,
        cache_s: float = 5.0,
    ) -> None:
        self.accounts = accounts
        self.oidc = oidc
        self.anonymous_readers = anonymous_readers
        self._cache = _Cache(cache_s)

    def caller(
        self,
        *,
        authorization: str | None,
        session: str | None,
        csrf_token: str | None,
        unsafe: bool,
        fresh: bool,
    ) -> Caller:
        """The request's caller. A bearer header wins over a cookie: API clients send no cookies,
        and a browser never sends the header by itself, so a header is never a cross-site forgery.
        `unsafe`: the method changes something (a browser must then send its CSRF token);
        `fresh`: ask the catalog now, not the cache (for changes to the collection or accounts).

        Raises NotSignedIn (no valid identity), NotAllowed (a browser write without its CSRF
        token, or an identity without a role), or UpstreamError (the catalog or the identity
        provider cannot be asked).
        """
        try:
            credential = bearer_credential(authorization)
        except MalformedCredential as exc:
            raise NotSignedIn(str(exc)) from None
        if credential is not None:
            return self.bearer(credential, fresh=fresh)
        if session:
            return self.session(session, csrf_token if unsafe else None, unsafe=unsafe, fresh=fresh)
        return anonymous(self.anonymous_readers)

    def bearer(self, credential: Credential, *, fresh: bool) -> Caller:
        """The caller an API token or identity-provider token proves."""
        token = credential.token
        if credential.looks_like_jwt:
            return self._cached(token, fresh, self._jwt)
        if not token.startswith(TOKEN_PREFIX):
            raise NotSignedIn("the bearer token is neither a MedSearch API token nor a JWT")
        return self._cached(token, fresh, self._api_token)

    def session(self, secret: str, csrf_token: str | None, *, unsafe: bool, fresh: bool) -> Caller:
        """The caller of a browser session; an unsafe request also needs the session's CSRF token."""
        if not secret.startswith(SESSION_PREFIX) or len(secret) > 200 or not secret.isascii():
            raise NotSignedIn("the session cookie is not one this gateway gave out; sign in again")
        if not unsafe:
            return self._cached(secret, fresh, self._session)
        if not csrf_token:
            raise NotAllowed("a change made from the browser needs its X-CSRF-Token header")
        if len(csrf_token) > 200 or not csrf_token.isascii() or " " in csrf_token:
            raise NotAllowed("the X-CSRF-Token header does not belong to this session")
        return self._cached(f"{secret} {csrf_token}", fresh, self._session_with_csrf)

    def forget_session(self, secret: str) -> None:
        """Forget a session just ended (its reads; its changes are always checked afresh)."""
        self._cache.forget(_key(secret))

    def forget_token(self, token_id: int) -> None:
        self._cache.forget_token(token_id)

    # -- one kind each -------------------------------------------------------------------

    def _cached(self, secret: str, fresh: bool, verify: Callable[[str], Caller]) -> Caller:
        key = _key(secret)
        if not fresh:
            found, caller = self._cache.get(key)
            if found:
                return _known(caller)
        try:
            caller = verify(secret)
        except NotSignedIn:
            self._cache.put(key, None)
            raise
        self._cache.put(key, caller)
        return caller

    def _api_token(self, secret: str) -> Caller:
        identity = self.accounts.verify_token(secret)
        if identity is None:
            raise NotSignedIn("the API token is unknown, revoked or expired")
        return _caller_of(identity, "token")

    def _session(self, secret: str) -> Caller:
        verified = self.accounts.verify_session(secret)
        if verified is None:
            raise NotSignedIn("the session has ended or expired; sign in again")
        return _caller_of(verified[0], "session")

    def _session_with_csrf(self, secret_and_csrf: str) -> Caller:
        secret, csrf_token = secret_and_csrf.split(" ", 1)
        verified = self.accounts.verify_session(secret, csrf_token)
        if verified is None:
            raise NotSignedIn("the session has ended or expired; sign in again")
        identity, csrf_ok = verified
        if not csrf_ok:
            raise NotAllowed("the X-CSRF-Token header does not belong to this session")
        return _caller_of(identity, "session")

    def _jwt(self, token: str) -> Caller:
        if self.oidc is None:
            raise NotSignedIn("this gateway has no identity provider configured; use an API token")
        try:
            identity = self.oidc.verify(token)
        except InvalidCredential:
            raise NotSignedIn("the identity provider's token does not verify") from None
        except NoRole as exc:
            raise NotAllowed(str(exc)) from None
        except IdentityProviderUnavailable:
            # A 503 naming it, as for any service the gateway depends on.
            raise UpstreamUnavailable(
                IDENTITY_PROVIDER, "the identity provider's keys cannot be fetched to check the token"
            ) from None
        return Caller(identity.subject, _role(identity.role), "oidc", expires_at=identity.expires_at)


def _known(caller: Caller | None) -> Caller:
    if caller is None:
        raise NotSignedIn("the credential is unknown, revoked or expired")
    return caller


def _caller_of(identity: VerifiedIdentity, via: Via) -> Caller:
    return Caller(identity.subject, _role(identity.role), via, token_id=identity.token_id)


def _role(name: str) -> Role:
    for role in ROLES:
        if role == name:
            return role
    raise NotAllowed(f"unknown role {name[:20]!r}")
