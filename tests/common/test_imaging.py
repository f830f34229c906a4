"""Reading uploads by content (libs/common's imaging): formats, DICOM header bounds, pixels."""

from __future__ import annotations

import io
import struct

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from medsearch_common.imaging import (
    DecodeLimits,
    ImageRejected,
    MultiFrameImage,
    NotAnImage,
    TooManyPixels,
    UnsupportedImage,
    UploadTooLarge,
    read_dicom,
    read_grayscale,
    sniff_format,
)
from medsearch_common.imaging.dicom import MAX_ELEMENTS, element_value
from tests.embedder.dicoms import dicom

LIMITS = DecodeLimits(max_bytes=50 << 20, max_pixels=64_000_000)
GRAY = (np.arange(64 * 48, dtype=np.uint32) % 256).astype(np.uint8).reshape(48, 64)


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def rewritten(data: bytes, *elements: DataElement) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    for element in elements:
        ds.add(element)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize(
    ("data", "found"),
    [(png(GRAY), "PNG"), (b"\xff\xd8\xff\xe0" + bytes(20), "JPEG"), (dicom(GRAY), "DICOM")],
)
def test_the_format_is_read_from_the_content(data: bytes, found: str) -> None:
    assert sniff_format(data) == found


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        (b"GIF89a" + bytes(20), UnsupportedImage, "GIF images are not supported; send PNG, JPEG or DICOM"),
        (b"II*\x00" + bytes(20), UnsupportedImage, "TIFF"),
        (b"%PDF-1.7", UnsupportedImage, "PDF"),
        (b"DICM" + bytes(200), NotAnImage, "128-byte preamble"),
        (b"hello", NotAnImage, "not PNG, JPEG or DICOM"),
    ],
)
def test_other_content_is_named_or_called_not_an_image(
    data: bytes, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        sniff_format(data)


def test_a_dicom_reads_as_the_same_gray_pixels_as_its_png_twin() -> None:
    assert np.array_equal(
        np.asarray(read_grayscale(dicom(GRAY), LIMITS)), np.asarray(read_grayscale(png(GRAY), LIMITS))
    )
    inverted = np.asarray(read_grayscale(dicom(255 - GRAY, photometric="MONOCHROME1"), LIMITS))
    assert np.array_equal(inverted, GRAY)


def test_limits_are_checked_before_decoding() -> None:
    with pytest.raises(NotAnImage, match="empty"):
        read_grayscale(b"", LIMITS)
    with pytest.raises(UploadTooLarge, match="limit is 100"):
        read_grayscale(dicom(GRAY), DecodeLimits(max_bytes=100, max_pixels=10**6))
    with pytest.raises(TooManyPixels, match="64x48"):
        read_dicom(dicom(GRAY), DecodeLimits(max_bytes=10**6, max_pixels=1000))
    with pytest.raises(MultiFrameImage, match="2 frames"):
        read_dicom(dicom(np.stack([GRAY, GRAY]), frames=2), LIMITS)


def nested_sequences(data: bytes, depth: int) -> bytes:
    """A private sequence nested `depth` levels deep with undefined lengths, spliced in before
    the pixel data (tag order), byte by byte: too deep for pydicom's own writer."""
    creator = struct.pack("<HH2sH", 0x0029, 0x0010, b"LO", 4) + b"DEEP"
    sequence = struct.pack("<HH2sHI", 0x0029, 0x1020, b"SQ", 0, 0xFFFFFFFF)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    ends = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    at = data.index(struct.pack("<HH", 0x7FE0, 0x0010))
    return data[:at] + creator + (sequence + item) * depth + ends * depth + data[at:]


@pytest.mark.parametrize("depth", [1, 8])
def test_sequences_nested_up_to_8_deep_are_read(depth: int) -> None:
    assert read_dicom(nested_sequences(dicom(GRAY), depth), LIMITS).Rows == 48


@pytest.mark.parametrize(("depth", "words"), [(9, "more than 8 levels deep"), (3000, "too deeply")])
def test_sequences_nested_deeper_are_refused_without_crashing(depth: int, words: str) -> None:
    with pytest.raises(ImageRejected, match=words):
        read_grayscale(nested_sequences(dicom(GRAY), depth), LIMITS)


def test_too_many_elements_or_a_huge_one_is_refused() -> None:
    many = Dataset()
    many.add_new(0x00290010, "LO", "MANY")
    item = Dataset()
    for i in range(MAX_ELEMENTS):
        item.add_new(0x00291000 + (i % 0xFF), "LO", "x")
    many.add_new(0x00291020, "SQ", [item] * 41)
    with pytest.raises(ImageRejected, match=f"more than {MAX_ELEMENTS} elements"):
        read_dicom(rewritten(dicom(GRAY), *many), LIMITS)
    huge = DataElement(0x00204000, "LT", "x" * 2_000_000)  # ImageComments
    with pytest.raises(ImageRejected, match=r"ImageComments .* holds 2000000 bytes"):
        read_dicom(rewritten(dicom(GRAY), huge), LIMITS)


def test_an_element_with_a_wrong_vr_is_refused_by_name() -> None:
    data = rewritten(dicom(GRAY), DataElement(0x00280010, "LO", "48"))  # Rows as text
    with pytest.raises(ImageRejected, match=r"Rows \(0028,0010\) has VR LO; the standard gives US"):
        read_dicom(data, LIMITS)
    ds = pydicom.dcmread(io.BytesIO(rewritten(dicom(GRAY), DataElement(0x00100020, "OB", b"ID"))))
    with pytest.raises(ImageRejected, match="PatientID"):
        element_value(ds, "PatientID")
