"""What can go wrong in the embedder, and the HTTP status of each."""

from medsearch_common.imaging import (
    IMAGE_ERROR_STATUSES,
    ImageRejected,
    MultiFrameImage,
    NotAnImage,
    TooManyPixels,
    UnsupportedImage,
    UploadTooLarge,
)

# What an upload can be refused for is libs/common's, as the catalog's is.
__all__ = [
    "BlankImage",
    "ImageRejected",
    "InvalidRegion",
    "MalformedRequest",
    "ModelMismatch",
    "ModelNotReady",
    "MultiFrameImage",
    "NotAnImage",
    "Overloaded",
    "TooManyImages",
    "TooManyPixels",
    "UnsupportedImage",
    "UploadTooLarge",
    "WeightsUnavailable",
]


class BlankImage(ImageRejected):
    """The model sees nothing in it: its features are all zero, so no similarity can be scored (422)."""


class InvalidRegion(ImageRejected):
    """A region outside the image, of no area, or too small for the model to see anything (422)."""


class ModelMismatch(Exception):
    """The request names a model other than the one loaded here (409)."""


class MalformedRequest(Exception):
    """The request itself is wrong: not multipart, no files, files in the wrong field (400)."""


class TooManyImages(Exception):
    """More images in one request than the configured limit (413)."""


class WeightsUnavailable(Exception):
    """The configured weights cannot be had; the message says how to provide them. Stops the start."""


class ModelNotReady(Exception):
    """The model is still loading (worth a retry soon), or failed to load (503)."""

    def __init__(self, detail: str, *, loading: bool) -> None:
        super().__init__(detail)
        # A failed load needs a restart, not a retry: no Retry-After then.
        self.problem_headers = {"Retry-After": 5} if loading else {}


class Overloaded(Exception):
    """The batch queue is full, or the wait for a batch ran out: try again shortly (503)."""

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.problem_headers = {"Retry-After": retry_after_s}


# The HTTP status of each error; a subclass not listed takes its nearest listed parent's.
ERROR_STATUSES: dict[type[Exception], int] = {
    **IMAGE_ERROR_STATUSES,
    MalformedRequest: 400,
    ModelMismatch: 409,
    TooManyImages: 413,
    ModelNotReady: 503,
    Overloaded: 503,
}


def status_of(error: Exception) -> int:
    return next(ERROR_STATUSES[c] for c in type(error).__mro__ if c in ERROR_STATUSES)
