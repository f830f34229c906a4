"""The request ID of the request being served, visible to logs and outgoing calls."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

REQUEST_ID_HEADER = "X-Request-ID"

# Accept a caller's ID only when it is short and plain, so that it is safe to log and echo.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

_current_request_id: ContextVar[str | None] = ContextVar("medsearch_request_id", default=None)


def accept_request_id(incoming: str | None) -> str:
    """The caller's ID when it is well-formed, else a new one."""
    if incoming and _VALID_REQUEST_ID.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    return _current_request_id.get()


def set_request_id(request_id: str | None) -> None:
    _current_request_id.set(request_id)
