"""Checking uploads by content and making thumbnails: Pillow on real and generated files."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from PIL import Image

from medsearch_catalog.deidentify import Deidentifier
from medsearch_catalog.errors import NotAnImage, UnsupportedImage, UploadTooLarge
from medsearch_catalog.images import CheckedImage, ImageLimits, displayable
from medsearch_catalog.images import check_image as check_with
from medsearch_common.imaging import sniff_format
from tests.catalog.conftest import PSEUDONYM_KEY

LIMITS = ImageLimits(max_bytes=50 * 1024 * 1024, max_pixels=64_000_000, thumbnail_px=256)
DEIDENTIFIER = Deidentifier(PSEUDONYM_KEY.encode())


def check_image(data: bytes, limits: ImageLimits) -> CheckedImage:
    return check_with(data, limits, DEIDENTIFIER)


def saved(image: Image.Image, image_format: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=image_format, **options)
    return out.getvalue()


def test_every_shared_image_passes_with_its_real_size(test_data: Path) -> None:
    with open(test_data / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows[::20]:  # a spread of every set and mode; the round-trip test covers all
        checked = check_image((test_data / row["path"]).read_bytes(), LIMITS)
        assert (checked.width, checked.height) == (int(row["width"]), int(row["height"]))
        assert checked.sha256 == row["sha256"]


def test_format_is_judged_by_content_not_name() -> None:
    assert sniff_format(saved(Image.new("L", (8, 8)), "JPEG")) == "JPEG"
    assert sniff_format(saved(Image.new("L", (8, 8)), "PNG")) == "PNG"
    with pytest.raises(UnsupportedImage, match="TIFF"):
        sniff_format(saved(Image.new("L", (8, 8)), "TIFF"))
    with pytest.raises(NotAnImage):
        sniff_format(b"PK\x03\x04 a zip file")


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P", "I;16", "1", "CMYK"])
def test_every_pixel_mode_gives_an_8_bit_thumbnail(mode: str) -> None:
    image = Image.new(mode, (600, 300))
    data = saved(image, "JPEG" if mode == "CMYK" else "PNG")
    checked = check_image(data, LIMITS)
    with Image.open(io.BytesIO(checked.thumbnail)) as thumb:
        assert thumb.size == (256, 128)
        assert thumb.mode in ("L", "RGB")


def test_exif_orientation_is_applied_to_size_and_thumbnail() -> None:
    image = Image.new("L", (400, 200), color=200)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    checked = check_image(saved(image, "JPEG", exif=exif), LIMITS)
    assert (checked.width, checked.height) == (200, 400)
    with Image.open(io.BytesIO(checked.thumbnail)) as thumb:
        assert thumb.size == (128, 256)


def test_small_images_are_not_enlarged() -> None:
    checked = check_image(saved(Image.new("L", (102, 102)), "PNG"), LIMITS)
    with Image.open(io.BytesIO(checked.thumbnail)) as thumb:
        assert thumb.size == (102, 102)


def test_sixteen_bit_range_is_stretched_to_eight_bits() -> None:
    image = Image.new("I;16", (4, 1))
    for x, value in enumerate((100, 200, 300, 400)):
        image.putpixel((x, 0), value)
    shown = displayable(image)
    assert shown.mode == "L"
    assert [shown.getpixel((x, 0)) for x in range(4)] == [0, 85, 170, 255]


def test_byte_limit_is_checked_before_decoding() -> None:
    with pytest.raises(UploadTooLarge, match="limit is 2000"):
        check_image(b"\x89PNG\r\n\x1a\n" + b"\x00" * 3000, ImageLimits(2000, 1000, 64))
