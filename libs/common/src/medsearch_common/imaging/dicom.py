"""DICOM files: parsed with pydicom within bounds, and their pixels as a person or the model sees them.

A DICOM header is a tree that a sender controls, so it is walked within fixed bounds before
anything else reads it: sequences nested at most MAX_SEQUENCE_DEPTH deep, at most MAX_ELEMENTS
elements, none but the pixel data over MAX_ELEMENT_BYTES. pydicom's own warnings and log lines
quote element values (patient data), so they are kept out of the services' logs; the errors
raised here name elements, never their values.
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
from typing import Any

import numpy as np
import pydicom
from PIL import Image, ImageOps
from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut
from pydicom.tag import BaseTag, Tag

from medsearch_common.imaging.errors import ImageRejected, MultiFrameImage, UnsupportedImage
from medsearch_common.imaging.formats import DecodeLimits, check_pixels
from medsearch_common.imaging.raster import stretch

MAX_SEQUENCE_DEPTH = 8
MAX_ELEMENTS = 10_000
MAX_ELEMENT_BYTES = 1024 * 1024
# Pixel data may be as large as the upload; every other element is bounded.
_PIXEL_DATA_TAGS = frozenset(Tag(k) for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
# What reading a damaged element can raise inside pydicom.
READ_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    struct.error,
    UnicodeError,
    OverflowError,
    EOFError,
    OSError,
)

# Values are checked by our own code, where it reads them; pydicom's checks would only warn,
# quoting the value.
pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
logging.getLogger("pydicom").setLevel(logging.CRITICAL)
warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")


def read_dicom(data: bytes, limits: DecodeLimits) -> Dataset:
    """A DICOM Part 10 file with one frame of pixel data within the pixel limit; its header
    walked within bounds. Pixel data is not decoded here."""
    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
        check_structure(dataset)
    except RecursionError:
        raise ImageRejected(
            f"the DICOM file nests sequences too deeply; the limit is {MAX_SEQUENCE_DEPTH} levels"
        ) from None
    except InvalidDicomError as exc:
        raise ImageRejected(f"the DICOM file is corrupt: {exc}") from None
    except READ_ERRORS as exc:
        raise ImageRejected(f"the DICOM file is corrupt or truncated ({type(exc).__name__})") from None
    if "PixelData" not in dataset:
        raise ImageRejected("the DICOM file holds no pixel data (no Image Pixel module)")
    frames = element_value(dataset, "NumberOfFrames")
    frames = _whole(frames, "NumberOfFrames") if frames not in (None, "") else 1
    if frames > 1:
        raise MultiFrameImage(f"the DICOM file has {frames} frames; send one frame per image")
    rows = _whole(element_value(dataset, "Rows"), "Rows")
    columns = _whole(element_value(dataset, "Columns"), "Columns")
    if rows < 1 or columns < 1:
        raise ImageRejected(f"the DICOM image is {columns}x{rows} pixels: it holds no image")
    check_pixels(columns, rows, limits)
    return dataset


def check_structure(dataset: Dataset) -> None:
    """The header within bounds: depth, element count and element size (pixel data aside)."""
    count = 0
    pending: list[tuple[Dataset, int]] = [(dataset, 0)]  # a dataset, and how many sequences hold it
    while pending:
        current, depth = pending.pop()
        for tag in list(current.keys()):
            count += 1
            if count > MAX_ELEMENTS:
                raise ImageRejected(f"the DICOM header has more than {MAX_ELEMENTS} elements")
            raw = current.get_item(tag)
            if _vr_of(tag, raw) == "SQ":
                sequence = current[tag].value
                if depth + 1 > MAX_SEQUENCE_DEPTH and len(sequence):
                    raise ImageRejected(
                        f"the DICOM file nests sequences more than {MAX_SEQUENCE_DEPTH} levels deep"
                        f" (at {_name(tag)})"
                    )
                pending.extend((item, depth + 1) for item in sequence)
                continue
            size = _value_bytes(raw)
            if size > MAX_ELEMENT_BYTES and not (depth == 0 and tag in _PIXEL_DATA_TAGS):
                raise ImageRejected(
                    f"the DICOM element {_name(tag)} holds {size} bytes; the limit outside the pixel"
                    f" data is {MAX_ELEMENT_BYTES}"
                )


def element_value(dataset: Dataset, keyword: str) -> Any:
    """The value of a standard element, None when absent; one with a VR other than the
    standard's, or that cannot be read, is refused, naming the element."""
    element = checked_element(dataset, keyword)
    return None if element is None else element.value


def checked_element(dataset: Dataset, keyword: str) -> DataElement | None:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    if tag not in dataset:
        return None
    try:
        element = dataset[tag]
    except READ_ERRORS:
        raise ImageRejected(f"the DICOM element {_name(Tag(tag))} cannot be read") from None
    allowed = dictionary_VR(tag).split(" or ")
    if element.VR not in allowed:
        raise ImageRejected(
            f"the DICOM element {_name(Tag(tag))} has VR {element.VR};"
            f" the standard gives {' or '.join(allowed)}"
        )
    return element


def dicom_grayscale(dataset: Dataset) -> Image.Image:
    """The pixels as 8-bit grayscale, as a reader sees them: the modality LUT (rescale slope and
    intercept), then the VOI LUT or window, stretched over their range; MONOCHROME1 inverted."""
    syntax = dataset.file_meta.get("TransferSyntaxUID")
    try:
        pixels = dataset.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        name = getattr(syntax, "name", str(syntax))
        raise UnsupportedImage(
            f"DICOM transfer syntax {name} ({syntax}) cannot be decoded here: {str(exc).splitlines()[0]}"
        ) from None
    except READ_ERRORS as exc:
        raise ImageRejected(f"the DICOM pixel data cannot be read: {str(exc).splitlines()[0]}") from None
    photometric = str(element_value(dataset, "PhotometricInterpretation") or "MONOCHROME2")
    if pixels.ndim == 3:  # colour (e.g. a secondary capture): take the luma
        if photometric != "RGB":
            raise UnsupportedImage(f"DICOM photometric interpretation {photometric} is not supported")
        return Image.fromarray(pixels.astype(np.uint8), mode="RGB").convert("L")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnsupportedImage(f"DICOM photometric interpretation {photometric} is not supported")
    try:
        # Stored values -> modality units (rescale slope/intercept) -> the window or VOI LUT.
        values = apply_voi_lut(apply_modality_lut(pixels, dataset), dataset, prefer_lut=True)
    except READ_ERRORS:
        raise ImageRejected("the DICOM file's rescale, window or LUT values cannot be applied") from None
    gray = stretch(np.asarray(values, dtype=np.float64))
    if photometric == "MONOCHROME1":  # there, low values are white
        gray = ImageOps.invert(gray)
    return gray


def _vr_of(tag: BaseTag, raw: DataElement | RawDataElement | Dataset | None) -> str | None:
    """The element's VR; a raw element of an implicit-VR file has none yet: the dictionary's."""
    vr = getattr(raw, "VR", None)
    if vr:
        return str(vr)
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


def _value_bytes(raw: DataElement | RawDataElement | Dataset | None) -> int:
    if isinstance(raw, RawDataElement):
        return len(raw.value) if raw.value is not None else 0
    if isinstance(raw, DataElement):
        value = raw.value
        return len(value) if isinstance(value, bytes | str) else len(str(value))
    return 0


def _whole(value: Any, keyword: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ImageRejected(f"the DICOM element {keyword} is not a whole number") from None


def _name(tag: BaseTag) -> str:
    keyword = pydicom.datadict.keyword_for_tag(tag)
    return f"{keyword} {tag}" if keyword else str(tag)
