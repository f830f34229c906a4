"""Reading uploaded images by their content: PNG, JPEG and DICOM, the same in every service.

The embedder reads an upload as the model sees it (`read_grayscale`); the catalog decodes what
it stores and makes its thumbnail from the same functions, so an image one keeps the other
can read.
"""

from __future__ import annotations

from PIL import Image

from medsearch_common.imaging.dicom import dicom_grayscale, read_dicom
from medsearch_common.imaging.errors import (
    IMAGE_ERROR_STATUSES,
    ImageRejected,
    MultiFrameImage,
    NotAnImage,
    TooManyPixels,
    UnsupportedImage,
    UploadTooLarge,
)
from medsearch_common.imaging.formats import (
    MIME_TYPES,
    DecodeLimits,
    ImageFormat,
    check_pixels,
    check_size,
    is_dicom,
    sniff_format,
)
from medsearch_common.imaging.raster import decode_raster, stretch, to_gray8

__all__ = [
    "IMAGE_ERROR_STATUSES",
    "MIME_TYPES",
    "DecodeLimits",
    "ImageFormat",
    "ImageRejected",
    "MultiFrameImage",
    "NotAnImage",
    "TooManyPixels",
    "UnsupportedImage",
    "UploadTooLarge",
    "check_pixels",
    "check_size",
    "decode_raster",
    "dicom_grayscale",
    "is_dicom",
    "read_dicom",
    "read_grayscale",
    "sniff_format",
    "stretch",
    "to_gray8",
]


def read_grayscale(data: bytes, limits: DecodeLimits, *, draft_px: int | None = None) -> Image.Image:
    """Any supported upload as an upright 8-bit grayscale ("L") image.

    `draft_px`: the size the caller will scale to; a large JPEG is decoded at a reduced scale
    no smaller than that.
    """
    check_size(data, limits)
    image_format = sniff_format(data)
    if image_format == "DICOM":
        return dicom_grayscale(read_dicom(data, limits))
    return to_gray8(decode_raster(data, image_format, limits, draft_px=draft_px))
