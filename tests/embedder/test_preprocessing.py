"""Preprocessing on real X-rays and on DICOM files the tests make from them with pydicom."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray
from PIL import Image
from pydicom.uid import JPEGLSLossless

from medsearch_embedder.errors import (
    ImageRejected,
    MultiFrameImage,
    NotAnImage,
    TooManyPixels,
    UnsupportedImage,
    UploadTooLarge,
)
from medsearch_embedder.preprocessing import INPUT_SIZE, InputLimits, prepare, read_grayscale, render_png
from tests.embedder.dicoms import dicom

LIMITS = InputLimits(max_bytes=50 * 1024 * 1024, max_pixels=64_000_000)
NIH = "nih_cxr14/images/00000075_000.png"


@pytest.fixture(scope="module")
def nih_png(test_data: Path) -> bytes:
    return (test_data / NIH).read_bytes()


@pytest.fixture(scope="module")
def nih_gray(nih_png: bytes) -> NDArray[np.uint8]:
    return np.asarray(Image.open(io.BytesIO(nih_png)).convert("L"))


def cosine(a: NDArray[np.uint8], b: NDArray[np.uint8]) -> float:
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def test_every_shared_image_becomes_a_224_square(test_data: Path) -> None:
    paths = sorted((test_data).glob("*/images/*"))
    assert len(paths) == 412
    for path in paths:
        array = prepare(path.read_bytes(), LIMITS)
        assert array.shape == (INPUT_SIZE, INPUT_SIZE) and array.dtype == np.uint8, path
        assert array.max() > array.min(), path


def test_non_square_image_is_letterboxed_not_squeezed(test_data: Path) -> None:
    tall = next(
        p
        for p in sorted((test_data / "covid_hannover" / "images").glob("*.png"))
        if Image.open(p).height > 700
    )
    width, height = Image.open(tall).size
    array = prepare(tall.read_bytes(), LIMITS)
    content_width = round(width * INPUT_SIZE / height)
    pad = (INPUT_SIZE - content_width) // 2
    assert pad > 0
    assert not array[:, : pad - 1].any() and not array[:, pad + content_width + 1 :].any()


def test_rgba_nih_file_reads_as_its_gray_values(test_data: Path) -> None:
    data = (test_data / "nih_cxr14/images/00000100_000.png").read_bytes()
    with Image.open(io.BytesIO(data)) as original:
        assert original.mode == "RGBA"
        expected = np.asarray(original.getchannel("R"))
    assert np.array_equal(np.asarray(read_grayscale(data, LIMITS)), expected)


def test_half_size_jpeg_reencode_stays_close(nih_png: bytes) -> None:
    image = Image.open(io.BytesIO(nih_png)).convert("L")
    out = io.BytesIO()
    image.resize((512, 512)).save(out, format="JPEG", quality=90)
    assert cosine(prepare(out.getvalue(), LIMITS), prepare(nih_png, LIMITS)) > 0.99


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("8-bit MONOCHROME2", lambda g: dicom(g)),
        ("16-bit MONOCHROME2", lambda g: dicom(g.astype(np.uint16) * 257)),
        ("8-bit MONOCHROME1", lambda g: dicom(255 - g, photometric="MONOCHROME1")),
        ("16-bit MONOCHROME1", lambda g: dicom((255 - g.astype(np.uint16)) * 16, photometric="MONOCHROME1")),
        ("rescaled 12-bit", lambda g: dicom(g.astype(np.uint16) * 16, slope=0.5, intercept=-100.0)),
        ("full-range window", lambda g: dicom(g.astype(np.uint16) * 16, window=(2048.0, 4096.0))),
    ],
)
def test_dicom_made_from_a_png_reads_like_the_png(
    nih_png: bytes, nih_gray: NDArray[np.uint8], name: str, make: object
) -> None:
    data = make(nih_gray)  # type: ignore[operator]
    assert cosine(prepare(data, LIMITS), prepare(nih_png, LIMITS)) > 0.99, name


def test_a_narrow_window_changes_what_the_model_sees(nih_gray: NDArray[np.uint8]) -> None:
    wide = prepare(dicom(nih_gray.astype(np.uint16) * 16), LIMITS)
    narrow = prepare(dicom(nih_gray.astype(np.uint16) * 16, window=(2048.0, 400.0)), LIMITS)
    assert np.abs(wide.astype(int) - narrow.astype(int)).mean() > 10


def test_multi_frame_dicom_is_refused(nih_gray: NDArray[np.uint8]) -> None:
    small = nih_gray[:64, :64]
    with pytest.raises(MultiFrameImage, match="2 frames"):
        prepare(dicom(np.stack([small, small]), frames=2), LIMITS)


def test_dicom_compression_without_a_decoder_names_the_transfer_syntax(nih_gray: NDArray[np.uint8]) -> None:
    data = dicom(nih_gray[:64, :64], syntax=JPEGLSLossless)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.file_meta.TransferSyntaxUID == JPEGLSLossless
    with pytest.raises(UnsupportedImage, match=r"JPEG-LS Lossless .*\(1\.2\.840\.10008\.1\.2\.4\.80\)"):
        prepare(data, LIMITS)


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        (b"", NotAnImage, "empty"),
        (b"GIF89a....", UnsupportedImage, "GIF images are not supported; send PNG, JPEG or DICOM"),
        (b"just text", NotAnImage, "not PNG, JPEG or DICOM"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, ImageRejected, "corrupt"),
        (b"\x00" * 128 + b"DICM" + b"\x00" * 20, ImageRejected, "DICOM"),
    ],
)
def test_bad_bytes_are_refused_with_a_reason(data: bytes, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        prepare(data, LIMITS)


def test_limits_on_bytes_and_pixels(nih_png: bytes, nih_gray: NDArray[np.uint8]) -> None:
    with pytest.raises(UploadTooLarge):
        prepare(nih_png, InputLimits(max_bytes=1000, max_pixels=64_000_000))
    with pytest.raises(TooManyPixels, match="1024x1024"):
        prepare(nih_png, InputLimits(max_bytes=50 << 20, max_pixels=1_000_000))
    with pytest.raises(TooManyPixels, match="1024x1024"):
        prepare(dicom(nih_gray), InputLimits(max_bytes=50 << 20, max_pixels=1_000_000))


def test_render_png_scales_the_long_side_down_to_max_side_and_never_up(test_data: Path) -> None:
    data = (test_data / "covid_hannover/images/006f3a8a.png").read_bytes()  # 640x599
    for max_side, size in [(320, (320, round(599 / 2))), (640, (640, 599)), (2048, (640, 599))]:
        png, decoded = render_png(data, LIMITS, max_side)
        assert decoded == (640, 599)  # the pixels a region is given in, whatever the rendering's size
        with Image.open(io.BytesIO(png)) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "L", size), max_side
