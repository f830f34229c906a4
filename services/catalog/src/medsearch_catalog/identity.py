"""Who may use MedSearch: API tokens and browser sessions, stored as hashes of their secrets.

A secret is looked up by its sha256 (an equality match on a unique index), never compared
character by character, so that the time an answer takes tells nothing about the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from medsearch_catalog.errors import InvalidIdentityRequest, TokenNotFound
from medsearch_catalog.repository import ImageRepository

ROLES = ("reader", "editor", "admin")
TOKEN_PREFIX = "mst_"  # noqa: S105 - a prefix, not a secret
SESSION_PREFIX = "mss_"
CSRF_PREFIX = "msc_"
MAX_SECRET_CHARS = 200
MAX_TOKEN_NAME_CHARS = 100
MAX_SUBJECT_CHARS = 200
DEFAULT_SESSION_TTL = timedelta(hours=8)
MIN_SESSION_TTL = timedelta(minutes=1)
MAX_SESSION_TTL = timedelta(days=7)
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class TokenRecord:
    """An API token as listed: never its secret or the secret's hash."""

    id: int
    name: str
    role: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


@dataclass(frozen=True)
class Identity:
    """Who a request comes from: `token:<id>` or an OIDC subject, and their role."""

    subject: str
    role: str
    token_id: int | None = None


@dataclass(frozen=True)
class SessionIdentity(Identity):
    expires_at: datetime | None = None


@dataclass(frozen=True)
class NewSession:
    """A session's secrets, given out once: the cookie's value and the CSRF token."""

    secret: str
    csrf_token: str
    expires_at: datetime


def secret_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


def _well_formed(secret: object, prefix: str) -> bool:
    """Whether `secret` could be one this module gave out; decided without the database."""
    return (
        isinstance(secret, str)
        and len(secret) <= MAX_SECRET_CHARS
        and secret.isascii()
        and secret.startswith(prefix)
        and len(secret) > len(prefix)
    )


def check_subject(subject: object) -> str:
    if not isinstance(subject, str) or not 1 <= len(subject) <= MAX_SUBJECT_CHARS:
        raise InvalidIdentityRequest(f"subject must be a string of 1-{MAX_SUBJECT_CHARS} characters")
    if CONTROL_CHARACTERS.search(subject):
        raise InvalidIdentityRequest("subject must not contain control characters")
    return subject


def check_role(role: object) -> str:
    if role not in ROLES:
        raise InvalidIdentityRequest(f"role must be one of {', '.join(ROLES)}, got {role!r:.40}")
    return str(role)


class IdentityStore:
    """API tokens and browser sessions in the catalog's PostgreSQL."""

    def __init__(self, repository: ImageRepository) -> None:
        self.repository = repository

    # -- tokens ---------------------------------------------------------------------------

    def create_token(
        self, name: str, role: str, expires_at: datetime | None = None
    ) -> tuple[TokenRecord, str]:
        """A new token and its secret; the secret is returned here only, and only its hash kept."""
        name = name.strip() if isinstance(name, str) else name
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_TOKEN_NAME_CHARS:
            raise InvalidIdentityRequest(f"name must be a string of 1-{MAX_TOKEN_NAME_CHARS} characters")
        if CONTROL_CHARACTERS.search(name):
            raise InvalidIdentityRequest("name must not contain control characters")
        check_role(role)
        if expires_at is not None and expires_at.tzinfo is None:
            raise InvalidIdentityRequest("expires_at must include a time zone offset")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.repository.transaction() as conn:
            if expires_at is not None:
                row = conn.execute("SELECT %s::timestamptz <= now() AS past", (expires_at,)).fetchone()
                if row is not None and row["past"]:
                    raise InvalidIdentityRequest("expires_at must be in the future")
            row = conn.execute(
                "INSERT INTO api_tokens (name, role, secret_hash, expires_at) VALUES (%s, %s, %s, %s)"
                " RETURNING *",
                (name, role, secret_hash(secret), expires_at),
            ).fetchone()
        assert row is not None
        return _token(row), secret

    def list_tokens(self) -> list[TokenRecord]:
        with self.repository.transaction() as conn:
            rows = conn.execute("SELECT * FROM api_tokens ORDER BY id").fetchall()
        return [_token(row) for row in rows]

    def revoke_token(self, token_id: int) -> TokenRecord:
        """Revoke a token (again: a no-op that keeps the first revocation's time)."""
        with self.repository.transaction() as conn:
            row = conn.execute(
                "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, now()) WHERE id = %s RETURNING *",
                (token_id,),
            ).fetchone()
        if row is None:
            raise TokenNotFound(f"no API token has ID {token_id}")
        return _token(row)

    def verify_token(self, secret: str) -> Identity | None:
        """The identity of a live token's secret; None for anything else (malformed: no query)."""
        if not _well_formed(secret, TOKEN_PREFIX):
            return None
        with self.repository.transaction() as conn:
            row = conn.execute(
                """
                WITH live AS (
                    SELECT id, role FROM api_tokens
                    WHERE secret_hash = %s AND revoked_at IS NULL
                      AND (expires_at IS NULL OR expires_at > now())
                ), touched AS (
                    UPDATE api_tokens t SET last_used_at = now() FROM live
                    WHERE t.id = live.id
                      -- One write a minute at most, however busy a token is.
                      AND (t.last_used_at IS NULL OR t.last_used_at < now() - interval '1 minute')
                )
                SELECT id, role FROM live
                """,
                (secret_hash(secret),),
            ).fetchone()
        if row is None:
            return None
        return Identity(subject=f"token:{row['id']}", role=row["role"], token_id=row["id"])

    # -- sessions -------------------------------------------------------------------------

    def start_session(self, identity: Identity, ttl: timedelta = DEFAULT_SESSION_TTL) -> NewSession:
        """A browser session for `identity`; one with a token needs that token live, and its subject
        and role must be the token's."""
        check_subject(identity.subject)
        check_role(identity.role)
        if not MIN_SESSION_TTL <= ttl <= MAX_SESSION_TTL:
            raise InvalidIdentityRequest(
                f"the session TTL must be between {MIN_SESSION_TTL.total_seconds():.0f}"
                f" and {MAX_SESSION_TTL.total_seconds():.0f} seconds"
            )
        secret = SESSION_PREFIX + secrets.token_urlsafe(32)
        csrf_token = CSRF_PREFIX + secrets.token_urlsafe(32)
        with self.repository.transaction() as conn:
            if identity.token_id is not None:
                token = conn.execute(
                    "SELECT role FROM api_tokens WHERE id = %s AND revoked_at IS NULL"
                    " AND (expires_at IS NULL OR expires_at > now()) FOR SHARE",
                    (identity.token_id,),
                ).fetchone()
                if token is None:
                    raise InvalidIdentityRequest(f"token {identity.token_id} is unknown, revoked or expired")
                if identity.subject != f"token:{identity.token_id}" or identity.role != token["role"]:
                    raise InvalidIdentityRequest(
                        f"a session with token {identity.token_id} has its subject"
                        f" 'token:{identity.token_id}' and its role {token['role']!r}"
                    )
            row = conn.execute(
                "INSERT INTO sessions (secret_hash, token_id, subject, role, csrf_hash, expires_at)"
                " VALUES (%s, %s, %s, %s, %s, now() + %s) RETURNING expires_at",
                (
                    secret_hash(secret),
                    identity.token_id,
                    identity.subject,
                    identity.role,
                    secret_hash(csrf_token),
                    ttl,
                ),
            ).fetchone()
        assert row is not None
        return NewSession(secret, csrf_token, row["expires_at"])

    def verify_session(self, secret: str) -> SessionIdentity | None:
        """The identity of a live session; None when malformed, unknown, ended, expired, or its
        token has been revoked or has expired since."""
        row = self._live_session(secret)
        if row is None:
            return None
        return SessionIdentity(
            subject=row["subject"], role=row["role"], token_id=row["token_id"], expires_at=row["expires_at"]
        )

    def check_csrf(self, session_secret: str, csrf_token: str) -> bool:
        """Whether `csrf_token` is the one given out with this live session."""
        if not _well_formed(csrf_token, CSRF_PREFIX):
            return False
        row = self._live_session(session_secret)
        return row is not None and hmac.compare_digest(bytes(row["csrf_hash"]), secret_hash(csrf_token))

    def end_session(self, secret: str) -> None:
        """End a session (again, or an unknown one: nothing happens)."""
        if not _well_formed(secret, SESSION_PREFIX):
            return
        with self.repository.transaction() as conn:
            conn.execute(
                "UPDATE sessions SET ended_at = now() WHERE secret_hash = %s AND ended_at IS NULL",
                (secret_hash(secret),),
            )

    def _live_session(self, secret: str) -> dict[str, Any] | None:
        if not _well_formed(secret, SESSION_PREFIX):
            return None
        with self.repository.transaction() as conn:
            return conn.execute(
                """
                SELECT s.subject, s.role, s.token_id, s.expires_at, s.csrf_hash
                FROM sessions s LEFT JOIN api_tokens t ON t.id = s.token_id
                WHERE s.secret_hash = %s AND s.ended_at IS NULL AND s.expires_at > now()
                  AND (s.token_id IS NULL
                       OR (t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > now())))
                """,
                (secret_hash(secret),),
            ).fetchone()


def _token(row: dict[str, Any]) -> TokenRecord:
    return TokenRecord(
        id=row["id"],
        name=row["name"],
        role=row["role"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
    )
