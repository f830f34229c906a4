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
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from medsearch_common.imaging import DecodeLimits
from medsearch_common.imaging import read_grayscale as read_upload
from medsearch_embedder.errors import InvalidRegion

INPUT_SIZE = 224
# Enough for a screen, small enough to send quickly; the NIH images are 1024 px square.
RENDER_MAX_SIDE = 1024
# Bump when anything below changes the pixels the model sees: it is part of the model_id.
PREPROCESSING_VERSION = "p1"
# The smallest side of a region searched on its own: a 7 x 7 grid of cells over fewer pixels
# would have each cell see under 9 of them, magnified past anything the model learnt from.
MIN_REGION_PX = 64

# The embedder's name for the limits on one upload.
InputLimits = DecodeLimits


def prepare(data: bytes, limits: InputLimits, size: int = INPUT_SIZE) -> NDArray[np.uint8]:
    """The upload as a `size` x `size` uint8 grayscale array, ready to be stacked into a batch."""
    return letterbox(read_grayscale(data, limits, hint_size=size), size)


@dataclass(frozen=True)
class Region:
    """A box on an image, in its pixels: left and top included, right and bottom excluded."""

    left: int
    top: int
    right: int
    bottom: int

    def check(self, width: int, height: int) -> None:
        """Refuses a box the model could not read: outside the image, empty, or so small that
        each of the model's 7 x 7 cells would see fewer than 9 of its pixels."""
        if self.right <= self.left or self.bottom <= self.top:
            raise InvalidRegion(f"the region {self} has no area: right must exceed left, bottom top")
        if self.left < 0 or self.top < 0 or self.right > width or self.bottom > height:
            raise InvalidRegion(f"the region {self} is not inside the {width} x {height} image")
        if min(self.right - self.left, self.bottom - self.top) < MIN_REGION_PX:
            raise InvalidRegion(
                f"the region {self} is {self.right - self.left} x {self.bottom - self.top} px; each side"
                f" needs at least {MIN_REGION_PX} px for the model to see something in it"
            )

    def __str__(self) -> str:
        return f"({self.left}, {self.top}, {self.right}, {self.bottom})"


@dataclass(frozen=True)
class Prepared:
    """The model's input for an upload (or a region of it), and where it came from: the
    upright image's size as decoded (a large JPEG's may be a reduced scale of the original's),
    and the region when there is one (in the original's pixels, decoded whole then)."""

    pixels: NDArray[np.uint8]
    width: int
    height: int
    region: Region | None = None


def prepare_region(data: bytes, limits: InputLimits, region: Region | None = None) -> Prepared:
    """`prepare`, of the whole image or of `region` (letterboxed as a whole image would be),
    with what it takes to place a map back onto the original."""
    if region is None:
        image = read_grayscale(data, limits)
        return Prepared(letterbox(image, INPUT_SIZE), image.width, image.height)
    # Whole, not at a JPEG's reduced scale: the region is in the original's pixels.
    image = read_upload(data, limits)
    region.check(image.width, image.height)
    crop = image.crop((region.left, region.top, region.right, region.bottom))
    return Prepared(letterbox(crop, INPUT_SIZE), image.width, image.height, region)


def read_grayscale(data: bytes, limits: InputLimits, *, hint_size: int = INPUT_SIZE) -> Image.Image:
    """Decode PNG, JPEG or DICOM into an upright 8-bit grayscale ("L") image."""
    # A JPEG decoded at reduced scale keeps at least twice the size it is scaled to.
    return read_upload(data, limits, draft_px=hint_size * 2)


def render_png(
    data: bytes, limits: InputLimits, max_side: int = RENDER_MAX_SIDE
) -> tuple[bytes, tuple[int, int]]:
    """The upload as `read_grayscale` sees it, as an 8-bit grayscale PNG with no side over
    `max_side`, and the width and height it was decoded at: a region is drawn on the rendering
    but sent in those pixels.

    For people to see what the model sees, a DICOM above all, which browsers cannot show.
    """
    image = read_grayscale(data, limits, hint_size=max_side)
    decoded = (image.width, image.height)
    scale = max_side / max(image.width, image.height)
    if scale < 1:  # never up: that would only blur
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue(), decoded


def letterbox(image: Image.Image, size: int) -> NDArray[np.uint8]:
    """Scale the long side to `size` (grayscale resize: 3x less work than RGB) and pad to a square."""
    width, height, left, top = letterbox_geometry(image.width, image.height, size)
    resized = image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0)
    canvas = Image.new("L", (size, size), 0)
    canvas.paste(resized, (left, top))
    return np.asarray(canvas, dtype=np.uint8)


def letterbox_geometry(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """Where `letterbox` puts an image of `width` x `height`: its scaled width and height, and
    its left and top offsets in the `size` square."""
    scale = size / max(width, height)
    scaled_width, scaled_height = max(1, round(width * scale)), max(1, round(height * scale))
    return scaled_width, scaled_height, (size - scaled_width) // 2, (size - scaled_height) // 2
