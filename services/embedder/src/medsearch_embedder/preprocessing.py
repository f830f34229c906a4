"""From uploaded bytes to the model's input: an upright 8-bit grayscale X-ray, letterboxed.

Letterbox, not a direct resize: X-rays are not always square (the Hannover images are
640 px wide and up to 755 px high), and squeezing one changes the shapes a reader compares,
the heart's width against the chest's above all. The long side becomes INPUT_SIZE and the
rest is padded with black, the colour of an X-ray's own border.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pydicom
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom.errors import InvalidDicomError
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

from medsearch_embedder.errors import (
    ImageRejected,
    MultiFrameImage,
    NotAnImage,
    TooManyPixels,
    UnsupportedImage,
    UploadTooLarge,
)

# Our own limit, read from the header before any decoding, replaces Pillow's process-wide one,
# whose hard stop ignores the configured limit and whose warning filter is not thread-safe.
Image.MAX_IMAGE_PIXELS = None

INPUT_SIZE = 224
# Enough for a screen, small enough to send quickly; the NIH images are 1024 px square.
RENDER_MAX_SIDE = 1024
# Bump when anything below changes the pixels the model sees: it is part of the model_id.
PREPROCESSING_VERSION = "p1"


@dataclass(frozen=True)
class InputLimits:
    max_bytes: int
    max_pixels: int


def prepare(data: bytes, limits: InputLimits, size: int = INPUT_SIZE) -> NDArray[np.uint8]:
    """The upload as a `size` x `size` uint8 grayscale array, ready to be stacked into a batch."""
    return letterbox(read_grayscale(data, limits, hint_size=size), size)


def read_grayscale(data: bytes, limits: InputLimits, *, hint_size: int = INPUT_SIZE) -> Image.Image:
    """Decode PNG, JPEG or DICOM into an upright 8-bit grayscale ("L") image."""
    if not data:
        raise NotAnImage("the file is empty")
    if len(data) > limits.max_bytes:
        raise UploadTooLarge(f"the file is {len(data)} bytes; the limit is {limits.max_bytes}")
    if data[128:132] == b"DICM":
        return _read_dicom(data, limits)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _read_with_pillow(data, "PNG", limits, hint_size)
    if data.startswith(b"\xff\xd8\xff"):
        return _read_with_pillow(data, "JPEG", limits, hint_size)
    raise NotAnImage(
        "the file is not an image this service reads: PNG, JPEG or DICOM (with its DICM preamble)"
    )


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


def _read_with_pillow(data: bytes, image_format: str, limits: InputLimits, hint_size: int) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data), formats=[image_format])
        _check_pixels(image.width, image.height, limits)
        if image_format == "JPEG" and image.mode in ("L", "RGB"):
            # JPEG can decode at 1/2, 1/4 or 1/8 scale: far less work for a large photo.
            image.draft(image.mode, (hint_size * 2, hint_size * 2))
        image.load()
    except UnidentifiedImageError:
        raise ImageRejected(f"the {image_format} file is corrupt: its header cannot be read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRejected(f"the {image_format} image is truncated or corrupt: {exc}") from None
    return _to_gray8(ImageOps.exif_transpose(image))


def _to_gray8(image: Image.Image) -> Image.Image:
    """8-bit grayscale: deeper images stretched over their own range, alpha and colour dropped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _stretch(np.asarray(image, dtype=np.float64))
    # Pillow's own conversion drops alpha and takes the luma of colour.
    return image if image.mode == "L" else image.convert("L")


def _read_dicom(data: bytes, limits: InputLimits) -> Image.Image:
    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, ValueError, OSError) as exc:
        raise ImageRejected(f"the DICOM file is corrupt: {exc}") from None
    if "PixelData" not in dataset:
        raise ImageRejected("the DICOM file holds no pixel data")
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise MultiFrameImage(f"the DICOM file has {frames} frames; send one frame per image")
    _check_pixels(int(dataset.Columns), int(dataset.Rows), limits)
    syntax = dataset.file_meta.get("TransferSyntaxUID")
    try:
        pixels = dataset.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        name = getattr(syntax, "name", str(syntax))
        raise UnsupportedImage(
            f"DICOM transfer syntax {name} ({syntax}) cannot be decoded here: {str(exc).splitlines()[0]}"
        ) from None
    except (ValueError, AttributeError, KeyError) as exc:
        raise ImageRejected(f"the DICOM pixel data cannot be read: {exc}") from None
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
    if pixels.ndim == 3:  # colour (e.g. a secondary capture): take the luma
        if photometric not in ("RGB",):
            raise UnsupportedImage(f"DICOM photometric interpretation {photometric} is not supported")
        return Image.fromarray(pixels.astype(np.uint8), mode="RGB").convert("L")
    # Stored values -> modality units (rescale slope/intercept) -> the window or VOI LUT.
    values = apply_voi_lut(apply_modality_lut(pixels, dataset), dataset, prefer_lut=True)
    gray = _stretch(np.asarray(values, dtype=np.float64))
    if photometric == "MONOCHROME1":  # there, low values are white
        gray = ImageOps.invert(gray)
    return gray


def _stretch(values: NDArray[np.float64]) -> Image.Image:
    """Map the array's own min..max onto 0..255."""
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")


def _check_pixels(width: int, height: int, limits: InputLimits) -> None:
    if width * height > limits.max_pixels:
        raise TooManyPixels(
            f"the image has too many pixels: {width}x{height} ({width * height} pixels);"
            f" the limit is {limits.max_pixels} pixels"
        )
