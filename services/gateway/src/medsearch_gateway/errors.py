"""What can go wrong in the gateway, and the HTTP status of each.

Upstream failures (a service down, slow or broken) come from libs/common's client and map
to 503/504/502 there, naming the dependency.
"""

from __future__ import annotations

from typing import Any, ClassVar


class InvalidRequest(Exception):
    """The request is malformed: a missing part, a bad parameter, bad filter JSON (400)."""


class UploadTooLarge(Exception):
    """More bytes than the configured limit (413)."""


class UnsupportedUpload(Exception):
    """The file is not an image the gateway takes for this action (415)."""


class ImageRejected(Exception):
    """An image the services could not use: corrupt, too many pixels, bad metadata (422)."""


class StoredButRejected(ImageRejected):
    """The catalog stored the image but the model cannot read it; it is marked failed (422)."""

    def __init__(self, detail: str, *, image_id: int) -> None:
        super().__init__(detail)
        self.problem_extensions: dict[str, Any] = {"image_id": image_id, "index_state": "failed"}


class ImageNotFound(Exception):
    """No image has that ID (404)."""


class ExampleNotFound(ImageRejected):
    """An image marked positive or negative is not in the collection (422): the search itself
    is there; one of its examples is not."""


class ModelMismatch(Exception):
    """The request names a model other than the active one (409)."""


class NotIndexed(Exception):
    """The image exists but has no vector for the active model yet (409)."""


class IngestIncomplete(Exception):
    """The image is stored but not indexed: a service failed after the catalog step (503).

    The problem names the image and its state, and a retry of the same upload completes it:
    after the failing service's own Retry-After when it gave one.
    """

    def __init__(self, detail: str, *, image_id: int, dependency: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.problem_headers = {"Retry-After": retry_after_s}
        self.problem_extensions: dict[str, Any] = {
            "image_id": image_id,
            "index_state": "pending",
            "dependency": dependency,
        }


class JobConflict(Exception):
    """A job of that kind is already running (409)."""


class NothingToMap(Exception):
    """The active model has no vectors, or too few, to make a map of (422)."""


class MapNotFound(Exception):
    """No map of the active model was finished yet (404)."""


class NotSignedIn(Exception):
    """No identity, or one that does not verify (401). The detail never says which part of a
    secret was wrong; the header tells API clients how to sign in."""

    problem_headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": 'Bearer realm="medsearch"'}


class NotAllowed(Exception):
    """An identity whose role may not do this, or a cross-site write (403)."""


class TokenNotFound(Exception):
    """No API token has that ID (404)."""


ERROR_STATUSES: dict[type[Exception], int] = {
    InvalidRequest: 400,
    UploadTooLarge: 413,
    UnsupportedUpload: 415,
    ImageRejected: 422,
    ImageNotFound: 404,
    NotIndexed: 409,
    ModelMismatch: 409,
    IngestIncomplete: 503,
    NotSignedIn: 401,
    NotAllowed: 403,
    TokenNotFound: 404,
    JobConflict: 409,
    NothingToMap: 422,
    MapNotFound: 404,
}
