"""PNG and JPEG, decoded with Pillow within the limits, upright."""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

from medsearch_common.imaging.errors import ImageRejected
from medsearch_common.imaging.formats import DecodeLimits, check_pixels

# Our own limit, read from the header before any decoding, replaces Pillow's process-wide one,
# whose hard stop ignores the configured limit and whose warning filter is not thread-safe.
Image.MAX_IMAGE_PIXELS = None

RasterFormat = Literal["PNG", "JPEG"]
# Modes deeper than 8 bits, which are stretched over their own range to show them.
HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I", "F")


def decode_raster(
    data: bytes,
    image_format: RasterFormat,
    limits: DecodeLimits,
    *,
    draft_px: int | None = None,
    verify: bool = False,
) -> Image.Image:
    """Every pixel decoded, within the pixel limit, EXIF orientation applied.

    `draft_px`: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale down to about that size, far less
    work for a large photo. `verify`: also check every PNG chunk's CRC, which load() does not.
    """
    try:
        image = Image.open(io.BytesIO(data), formats=[image_format])
        check_pixels(image.width, image.height, limits)
        if draft_px and image_format == "JPEG" and image.mode in ("L", "RGB"):
            image.draft(image.mode, (draft_px, draft_px))
        image.load()
        if verify and image_format == "PNG":
            Image.open(io.BytesIO(data), formats=["PNG"]).verify()  # needs a fresh reader
    except UnidentifiedImageError:
        raise ImageRejected(f"the {image_format} file is corrupt: its header cannot be read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRejected(f"the {image_format} image is truncated or corrupt: {exc}") from None
    return ImageOps.exif_transpose(image)


def to_gray8(image: Image.Image) -> Image.Image:
    """8-bit grayscale: deeper images stretched over their own range, alpha and colour dropped."""
    if image.mode in HIGH_DEPTH_MODES:
        return stretch(np.asarray(image, dtype=np.float64))
    # Pillow's own conversion drops alpha and takes the luma of colour.
    return image if image.mode == "L" else image.convert("L")


def stretch(values: NDArray[np.float64]) -> Image.Image:
    """Map the array's own min..max onto 0..255, as an 8-bit grayscale image."""
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
