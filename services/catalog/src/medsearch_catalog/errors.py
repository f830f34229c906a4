"""What can go wrong in the catalog, in the domain's words, and the HTTP status of each."""

from medsearch_common.imaging import (
    IMAGE_ERROR_STATUSES,
    ImageRejected,
    MultiFrameImage,
    NotAnImage,
    TooManyPixels,
    UnsupportedImage,
    UploadTooLarge,
)
from medsearch_common.validation import Invalid

# What an upload can be refused for is libs/common's, as the embedder's is.
__all__ = [
    "BatchTooLarge",
    "BurnedInAnnotation",
    "DatabaseUnavailable",
    "ImageNotFound",
    "ImageRejected",
    "InvalidAuditEvent",
    "InvalidCredentials",
    "InvalidIdentityRequest",
    "InvalidIndexState",
    "InvalidMetadata",
    "MalformedRequest",
    "MultiFrameImage",
    "NotAnImage",
    "PseudonymKeyUnavailable",
    "TokenNotFound",
    "TooManyPixels",
    "UnsupportedImage",
    "UnsupportedModality",
    "UploadTooLarge",
]


class UnsupportedModality(ImageRejected):
    """A DICOM of a modality the catalog does not keep: it keeps radiographs (422)."""


class BurnedInAnnotation(ImageRejected):
    """A DICOM whose pixels carry burned-in text (BurnedInAnnotation YES), which de-identifying the
    header cannot remove; refused unless the operator allows it (422)."""


class PseudonymKeyUnavailable(Exception):
    """DICOM ingest needs the site's pseudonym key, and none could be read or made (503)."""


class InvalidMetadata(Invalid):
    """Metadata is malformed, has unknown fields, wrong types or values out of range (422)."""


class InvalidIndexState(Exception):
    """An indexing state update is malformed: unknown state, a reason missing or not allowed (422)."""


class MalformedRequest(Invalid):
    """The request itself cannot be read: bad JSON, a missing part, a bad parameter (400)."""


class BatchTooLarge(Exception):
    """A batch over its limits: too many images or items, or too much JSON; split it (413)."""


class ImageNotFound(Exception):
    """No image has that ID (404)."""


class InvalidIdentityRequest(Exception):
    """A token or session request is unacceptable: a name, role, expiry, subject or TTL out of range,
    an unknown field, or a session for a token that is not live (422)."""


class InvalidCredentials(Exception):
    """A token or session secret that is malformed, unknown, revoked, expired or ended (401)."""


class TokenNotFound(Exception):
    """No API token has that ID (404)."""


class InvalidAuditEvent(Exception):
    """An audit event is malformed: unknown action or outcome, or a field out of range (422)."""


class DatabaseUnavailable(Exception):
    """PostgreSQL cannot be reached or did not answer in time (503)."""


# The HTTP status of each error; a subclass not listed takes its nearest listed parent's.
ERROR_STATUSES: dict[type[Exception], int] = {
    **IMAGE_ERROR_STATUSES,
    UnsupportedModality: 422,
    BurnedInAnnotation: 422,
    PseudonymKeyUnavailable: 503,
    InvalidMetadata: 422,
    InvalidIndexState: 422,
    MalformedRequest: 400,
    BatchTooLarge: 413,
    ImageNotFound: 404,
    InvalidIdentityRequest: 422,
    InvalidCredentials: 401,
    TokenNotFound: 404,
    InvalidAuditEvent: 422,
    DatabaseUnavailable: 503,
}


def status_of(error: Exception) -> int:
    return next(ERROR_STATUSES[c] for c in type(error).__mro__ if c in ERROR_STATUSES)
