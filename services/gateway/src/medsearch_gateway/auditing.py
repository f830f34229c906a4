"""What the gateway writes to the audit trail (kept by the catalog), one event per request.

Audited: searches and more-like-this (with the result IDs), image reads (record and full
file), browsing, adds, deletes, reindexes, sign-in and sign-out, token changes, reads of the
trail itself, and every refusal (401/403) but a signed-out page asking who it is. Not
audited: thumbnails (the search or browse that listed them is), stats, previews of the
caller's own upload, health and readiness.

An event holds the caller's subject (`token:<id>`, `oidc:<sub>`, `anonymous`), the catalog's
image IDs, the request ID and a short detail written here: never uploaded bytes, metadata,
query strings or anything a user typed, so no patient identifier can reach the trail.

The event is written after the answer is ready, within a short timeout. When the catalog
cannot take it, the request still gets its answer, and the failure is logged (request ID
and action only) and counted in `medsearch_audit_failures_total`, for alerting.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from medsearch_common.client import UpstreamError
from medsearch_gateway.accounts import AccountsClient
from medsearch_gateway.identity import Caller

log = logging.getLogger("medsearch.audit")

# (method, OpenAPI path template) -> the action recorded.
AUDITED: dict[tuple[str, str], str] = {
    ("POST", "/api/v1/search"): "search",
    ("POST", "/api/v1/searches"): "search",
    ("GET", "/api/v1/images/{image_id}/similar"): "similar",
    ("GET", "/api/v1/images/{image_id}"): "view_image",
    ("GET", "/api/v1/images/{image_id}/file"): "view_image",
    ("POST", "/api/v1/similarity-maps"): "view_image",  # the result IDs whose maps were shown
    ("GET", "/api/v1/images"): "browse",
    ("GET", "/api/v1/pending"): "browse",
    ("POST", "/api/v1/duplicates"): "browse",  # the images of the pairs; its detail says duplicates
    ("GET", "/api/v1/map"): "browse",  # every mapped image; its detail says map
    ("POST", "/api/v1/map/jobs"): "reindex",  # a computation over the index; its detail says map
    ("POST", "/api/v1/images"): "add_image",
    ("POST", "/api/v1/images/batch"): "add_image",
    ("DELETE", "/api/v1/images/{image_id}"): "delete_image",
    ("POST", "/api/v1/images/{image_id}/index"): "reindex",
    ("POST", "/api/v1/verify"): "reindex",  # its detail says verify; a new action needs a migration
    ("POST", "/api/v1/session"): "sign_in",
    ("DELETE", "/api/v1/session"): "sign_out",
    ("POST", "/api/v1/tokens"): "token_create",
    ("DELETE", "/api/v1/tokens/{token_id}"): "token_revoke",
    ("GET", "/api/v1/audit"): "audit_read",
    ("GET", "/api/v1/audit.csv"): "audit_read",
}
# Refusals of callers without any identity, recorded per gateway process and minute: beyond
# this a flood of anonymous requests is counted, not written, so it cannot fill the database.
ANONYMOUS_REFUSALS_PER_MINUTE = 60
MAX_RESULT_IDS = 1000


@dataclass
class Note:
    """What a request's handler adds to its event: the image it touched, the images it returned."""

    image_id: int | None = None
    result_ids: list[int] = field(default_factory=list)
    detail: str | None = None


class AuditRecorder:
    def __init__(self, accounts: AccountsClient, registry: CollectorRegistry) -> None:
        self.accounts = accounts
        self._failures = Counter(
            "medsearch_audit_failures_total",
            "Audit events the catalog could not record (the request itself was answered).",
            registry=registry,
        )
        self._dropped = Counter(
            "medsearch_audit_anonymous_refusals_dropped_total",
            "Refusals of anonymous callers beyond the per-minute limit, counted instead of recorded.",
            registry=registry,
        )
        self._lock = threading.Lock()
        self._minute = 0
        self._anonymous_refusals = 0

    def record(
        self,
        caller: Caller,
        action: str,
        *,
        status: int,
        note: Note,
        request_id: str | None,
    ) -> None:
        outcome = "ok" if status < 400 else "refused" if status in (401, 403) else "failed"
        if outcome == "refused" and caller.role is None and not self._admit_anonymous_refusal():
            self._dropped.inc()
            return
        event: dict[str, Any] = {
            "actor": caller.subject,
            "role": caller.role,
            "action": action,
            "outcome": outcome,
            "request_id": request_id,
        }
        if note.image_id is not None:
            event["image_id"] = note.image_id
        if note.result_ids:
            event["result_ids"] = note.result_ids[:MAX_RESULT_IDS]
        detail = note.detail if note.detail is not None else (f"HTTP {status}" if status >= 400 else None)
        if detail:
            event["detail"] = detail[:500]
        try:
            self.accounts.record(event)
        except UpstreamError as exc:
            self._failures.inc()
            log.warning(
                "audit event not recorded",
                extra={"action": action, "outcome": outcome, "error": type(exc).__name__},
            )

    def _admit_anonymous_refusal(self) -> bool:
        minute = int(time.monotonic() // 60)
        with self._lock:
            if minute != self._minute:
                self._minute, self._anonymous_refusals = minute, 0
            self._anonymous_refusals += 1
            return self._anonymous_refusals <= ANONYMOUS_REFUSALS_PER_MINUTE
