"""Telling an upload's format by its content, never by its name, and the limits on reading it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from medsearch_common.imaging.errors import NotAnImage, TooManyPixels, UnsupportedImage, UploadTooLarge

ImageFormat = Literal["PNG", "JPEG", "DICOM"]

MIME_TYPES: dict[ImageFormat, str] = {"PNG": "image/png", "JPEG": "image/jpeg", "DICOM": "application/dicom"}

# A DICOM Part 10 file: a 128-byte preamble, then these four bytes.
DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"

# Leading bytes of formats we recognize but do not read, so that the error can name them.
_OTHER_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (0, b"BM", "BMP"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (8, b"WEBP", "WebP"),
    (0, b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (0, b"\xff\x4f\xff\x51", "JPEG 2000"),
    (4, b"ftypavif", "AVIF"),
    (4, b"ftypheic", "HEIC"),
    (0, b"%PDF", "PDF"),
)


@dataclass(frozen=True)
class DecodeLimits:
    """How much a service reads of one upload: bytes, and pixels (checked before decoding)."""

    max_bytes: int
    max_pixels: int


def is_dicom(data: bytes) -> bool:
    """A DICOM Part 10 file, by its `DICM` marker after the preamble."""
    return data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)] == DICOM_MAGIC


def sniff_format(data: bytes) -> ImageFormat:
    """The format the bytes hold; otherwise an error naming what they are, when we can tell."""
    if is_dicom(data):
        return "DICOM"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    for offset, signature, name in _OTHER_SIGNATURES:
        if data[offset : offset + len(signature)] == signature:
            raise UnsupportedImage(f"{name} images are not supported; send PNG, JPEG or DICOM")
    raise NotAnImage(
        "the file is not an image: its content is not PNG, JPEG or DICOM (a DICOM file needs its"
        " 128-byte preamble and DICM marker)"
    )


def check_size(data: bytes, limits: DecodeLimits) -> None:
    """The checks that need no parsing: something was sent, and not too much of it."""
    if not data:
        raise NotAnImage("the file is empty")
    if len(data) > limits.max_bytes:
        raise UploadTooLarge(f"the file is {len(data)} bytes; the limit is {limits.max_bytes}")


def check_pixels(width: int, height: int, limits: DecodeLimits) -> None:
    if width * height > limits.max_pixels:
        raise TooManyPixels(
            f"the image has too many pixels: {width}x{height} ({width * height} pixels);"
            f" the limit is {limits.max_pixels} pixels"
        )
