"""What can go wrong turning an upload into a model input; the app maps each to a status."""


class ImageRejected(Exception):
    """The upload cannot be embedded (422 by default)."""


class NotAnImage(ImageRejected):
    """The bytes are not a recognizable image (415)."""


class UnsupportedImage(ImageRejected):
    """A recognizable image this service cannot read, e.g. a DICOM compression with no decoder (415)."""


class UploadTooLarge(ImageRejected):
    """More bytes than the configured limit (413)."""


class TooManyPixels(ImageRejected):
    """More pixels than the configured limit: a possible decompression bomb (422)."""


class MultiFrameImage(ImageRejected):
    """A DICOM with several frames: which one to embed is not ours to guess (422)."""
