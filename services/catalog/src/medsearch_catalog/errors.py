"""What can go wrong in the catalog, in the domain's words; the app maps each to a status."""


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


class MalformedRequest(Exception):
    """The request itself cannot be read: bad JSON, a missing part, a bad parameter (400)."""


class ImageNotFound(Exception):
    """No image has that ID (404)."""


class DatabaseUnavailable(Exception):
    """PostgreSQL cannot be reached or did not answer in time (503)."""
