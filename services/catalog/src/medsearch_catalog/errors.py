"""What can go wrong in the catalog, in the domain's words, and the HTTP status of each."""


class ImageRejected(Exception):
    """The upload is not an image the catalog can keep (422 by default)."""


class NotAnImage(ImageRejected):
    """The bytes are not a recognizable image (415)."""


class UnsupportedImageFormat(ImageRejected):
    """A recognizable image in a format the catalog does not keep (415)."""


class UploadTooLarge(ImageRejected):
    """More bytes than the configured limit (413)."""


class TooManyPixels(ImageRejected):
    """More pixels than the configured limit: a possible decompression bomb (422)."""


class InvalidMetadata(Exception):
    """Metadata is malformed, has unknown fields, wrong types or values out of range (422)."""


class InvalidIndexState(Exception):
    """An indexing state update is malformed: unknown state, a reason missing or not allowed (422)."""


class MalformedRequest(Exception):
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
    ImageRejected: 422,
    NotAnImage: 415,
    UnsupportedImageFormat: 415,
    UploadTooLarge: 413,
    TooManyPixels: 422,
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
