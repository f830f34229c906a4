"""From uploaded bytes to the model's input: an upright 8-bit grayscale X-ray, letterboxed.

Reading the bytes (PNG, JPEG, DICOM with its window and LUTs) is libs/common's
`medsearch_common.imaging`, which the catalog uses too. Letterbox, not a direct resize: X-rays
are not always square (the Hannover images are 640 px wide and up to 755 px high), and
squeezing one changes the shapes a reader compares, the heart's width against the chest's
above all. The long side becomes INPUT_SIZE and the rest is padded with black, the colour of
an X-ray's own border.
"""

from __future__ import annotations

import io

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from medsearch_common.imaging import DecodeLimits
from medsearch_common.imaging import read_grayscale as read_upload

INPUT_SIZE = 224
# Enough for a screen, small enough to send quickly; the NIH images are 1024 px square.
RENDER_MAX_SIDE = 1024
# Bump when anything below changes the pixels the model sees: it is part of the model_id.
PREPROCESSING_VERSION = "p1"

# The embedder's name for the limits on one upload.
InputLimits = DecodeLimits


def prepare(data: bytes, limits: InputLimits, size: int = INPUT_SIZE) -> NDArray[np.uint8]:
    """The upload as a `size` x `size` uint8 grayscale array, ready to be stacked into a batch."""
    return letterbox(read_grayscale(data, limits, hint_size=size), size)


def read_grayscale(data: bytes, limits: InputLimits, *, hint_size: int = INPUT_SIZE) -> Image.Image:
    """Decode PNG, JPEG or DICOM into an upright 8-bit grayscale ("L") image."""
    # A JPEG decoded at reduced scale keeps at least twice the size it is scaled to.
    return read_upload(data, limits, draft_px=hint_size * 2)


def render_png(data: bytes, limits: InputLimits, max_side: int = RENDER_MAX_SIDE) -> bytes:
    """The upload as `read_grayscale` sees it, as an 8-bit grayscale PNG with no side over `max_side`.

    For people to see what the model sees, a DICOM above all, which browsers cannot show.
    """
    image = read_grayscale(data, limits, hint_size=max_side)
    scale = max_side / max(image.width, image.height)
    if scale < 1:  # never up: that would only blur
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def letterbox(image: Image.Image, size: int) -> NDArray[np.uint8]:
    """Scale the long side to `size` (grayscale resize: 3x less work than RGB) and pad to a square."""
    scale = size / max(image.width, image.height)
    width, height = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    resized = image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0)
    canvas = Image.new("L", (size, size), 0)
    canvas.paste(resized, ((size - width) // 2, (size - height) // 2))
    return np.asarray(canvas, dtype=np.uint8)
