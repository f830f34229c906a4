"""Errors as RFC 9457 problem details (`application/problem+json`)."""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from typing import Any

from flask import Response

PROBLEM_MIME = "application/problem+json"


def problem_type(slug: str) -> str:
    """A problem type URI; a URN, since no page describes it."""
    return f"urn:medsearch:problem:{slug}"


def slug_of(exc_type: type[BaseException]) -> str:
    """`ImageNotFound` -> `image-not-found`."""
    # A break before each capital that starts a word; acronyms stay whole (HTTPError -> http-error).
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", exc_type.__name__).lower()


def problem_body(
    status: int, detail: str, *, slug: str | None = None, title: str | None = None, **extensions: Any
) -> dict[str, Any]:
    if title is None:
        title = slug.replace("-", " ").capitalize() if slug else HTTPStatus(status).phrase
    body: dict[str, Any] = {
        "type": problem_type(slug) if slug else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    body.update(extensions)
    return body


def problem_response(
    status: int, detail: str, *, slug: str | None = None, title: str | None = None, **extensions: Any
) -> Response:
    body = problem_body(status, detail, slug=slug, title=title, **extensions)
    return Response(json.dumps(body), status=status, mimetype=PROBLEM_MIME)
