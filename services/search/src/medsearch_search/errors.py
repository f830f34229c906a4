"""What can go wrong in the search service, and the HTTP status of each."""

from medsearch_common.validation import Invalid


class InvalidRequest(Invalid):
    """The request is malformed: wrong JSON shape, unknown or mistyped fields (400)."""


class InvalidVector(Exception):
    """A vector that cannot be stored or searched: wrong dimension, NaN, infinity or zero (422)."""


class BatchTooLarge(Exception):
    """More vectors or items in one request than the configured limit (413)."""


class ModelNotFound(Exception):
    """No vectors were ever stored for this model_id (404)."""


class VectorNotFound(Exception):
    """No vector with this ID for this model (404)."""


class MilvusUnavailable(Exception):
    """Milvus cannot be reached or failed; the message names it (503)."""


class JobRunning(Exception):
    """A map job for this model is already running (409)."""


class TooFewVectors(Exception):
    """The model has too few vectors to map (422)."""


class MapNotFound(Exception):
    """No map was ever finished for this model (404)."""


ERROR_STATUSES: dict[type[Exception], int] = {
    JobRunning: 409,
    TooFewVectors: 422,
    MapNotFound: 404,
    InvalidRequest: 400,
    InvalidVector: 422,
    BatchTooLarge: 413,
    ModelNotFound: 404,
    VectorNotFound: 404,
    MilvusUnavailable: 503,
}
