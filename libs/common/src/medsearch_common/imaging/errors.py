"""What can be wrong with an uploaded image, the same in every service that reads one."""

from __future__ import annotations


class ImageRejected(Exception):
    """The upload cannot be used as an image (422 by default)."""


class NotAnImage(ImageRejected):
    """The bytes are not a recognizable image (415)."""


class UnsupportedImage(ImageRejected):
    """A recognizable image that cannot be read here: another format, or a DICOM compression with
    no decoder or an unsupported photometric interpretation (415)."""


class UploadTooLarge(ImageRejected):
    """More bytes than the configured limit (413)."""


class TooManyPixels(ImageRejected):
    """More pixels than the configured limit: a possible decompression bomb (422)."""


class MultiFrameImage(ImageRejected):
    """A DICOM with several frames: which one is meant is not ours to guess (422)."""


# The HTTP status of each; a service adds these to its own error statuses.
IMAGE_ERROR_STATUSES: dict[type[Exception], int] = {
    ImageRejected: 422,
    NotAnImage: 415,
    UnsupportedImage: 415,
    UploadTooLarge: 413,
    TooManyPixels: 422,
    MultiFrameImage: 422,
}
