"""The de-identification logic alone: no database, no app. Files made here with pydicom."""

from __future__ import annotations

import io
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.datadict import DicomDictionary
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian, RLELossless

from medsearch_catalog.deidentify import KEPT_ELEMENTS, Deidentifier, age_in_years
from medsearch_catalog.errors import ImageRejected, PseudonymKeyUnavailable
from medsearch_catalog.pseudonym_key import load_pseudonym_key
from medsearch_catalog.settings import CatalogSettings
from medsearch_common.imaging import DecodeLimits
from medsearch_common.settings import SettingsError
from tests.support.identified_dicoms import Patient, identified_dicom

LIMITS = DecodeLimits(max_bytes=50 << 20, max_pixels=64_000_000)
KEY = b"unit-tests-pseudonym-key-0123456789abcdef"
PIXELS = (np.arange(64 * 48, dtype=np.uint32) % 251).astype(np.uint8).reshape(48, 64)
ALICE = Patient("ZQXALICE")


@pytest.mark.parametrize(
    ("text", "years"),
    [
        ("045Y", 45),
        ("006M", 0),
        ("030M", 2),
        ("052W", 0),
        ("800D", 2),
        ("130Y", 130),
        ("131Y", None),
        ("45Y", None),
        ("045", None),
        ("", None),
        ("04 5Y", None),
    ],
)
def test_patient_age_becomes_whole_years(text: str, years: int | None) -> None:
    assert age_in_years(text) == years


def test_the_same_file_and_key_give_the_same_bytes_and_another_key_others() -> None:
    data = identified_dicom(PIXELS, ALICE).data
    first = Deidentifier(KEY).deidentify(data, LIMITS)
    assert Deidentifier(KEY).deidentify(data, LIMITS) == first
    other = Deidentifier(KEY + b"!").deidentify(data, LIMITS)
    assert other.data != first.data and other.facts.patient_id != first.facts.patient_id
    assert other.facts.sop_instance_uid != first.facts.sop_instance_uid


def test_the_pseudonym_is_a_keyed_hash_of_the_id() -> None:
    deidentifier = Deidentifier(KEY)
    assert (
        deidentifier.pseudonym("12345") == deidentifier.pseudonym("12345") != deidentifier.pseudonym("12346")
    )
    assert len(deidentifier.pseudonym("12345")) == 64
    assert Deidentifier(KEY + b"x").pseudonym("12345") != deidentifier.pseudonym("12345")


def test_every_public_text_element_outside_the_allowlist_is_dropped() -> None:
    """Every single-valued text element of the DICOM dictionary, each with its own marker: only
    the allowlisted ones may stay, and those that identify are replaced."""
    extra = Dataset()
    markers = {}
    for tag, (vr, vm, _name, _retired, keyword) in DicomDictionary.items():
        if vr not in ("LO", "SH", "PN", "LT", "ST", "UT", "UC") or vm != "1" or not keyword:
            continue
        if keyword in KEPT_ELEMENTS or tag >> 16 in (0x0000, 0x0002, 0xFFFE) or tag >> 16 >= 0x5000:
            continue
        marker = f"ZQM{len(markers):05d}"
        extra.add_new(tag, vr, marker)
        markers[keyword] = marker
    assert len(markers) > 600
    made = identified_dicom(PIXELS, ALICE, extra=extra)
    stored = Deidentifier(KEY).deidentify(made.data, LIMITS).data
    survivors = [k for k, marker in markers.items() if marker.encode() in stored]
    survivors += [marker for marker in made.markers if marker.encode() in stored]
    assert survivors == []
    kept = pydicom.dcmread(io.BytesIO(stored))
    assert {element.keyword for element in kept} <= KEPT_ELEMENTS | {
        "PatientBirthDate",
        "PatientIdentityRemoved",
        "DeidentificationMethod",
        "DeidentificationMethodCodeSequence",
        "LongitudinalTemporalInformationModified",
    }


@pytest.mark.parametrize("syntax", ["implicit VR", "RLE Lossless"])
def test_other_transfer_syntaxes_are_kept_and_still_decode(syntax: str) -> None:
    made = identified_dicom(PIXELS, ALICE)
    ds = pydicom.dcmread(io.BytesIO(made.data))
    out = io.BytesIO()
    if syntax == "implicit VR":
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(out, implicit_vr=True, little_endian=True, enforce_file_format=True)
    else:
        ds.compress(RLELossless)
        ds.save_as(out, enforce_file_format=True)
    stored = Deidentifier(KEY).deidentify(out.getvalue(), LIMITS).data
    assert not [marker for marker in made.markers if marker.encode() in stored]
    kept = pydicom.dcmread(io.BytesIO(stored))
    assert kept.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert np.array_equal(kept.pixel_array, PIXELS)


def test_a_file_without_its_sop_instance_uid_is_refused() -> None:
    ds = pydicom.dcmread(io.BytesIO(identified_dicom(PIXELS, ALICE).data))
    del ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    with pytest.raises(ImageRejected, match="no SOPInstanceUID"):
        Deidentifier(KEY).deidentify(out.getvalue(), LIMITS)


def test_without_a_key_dicom_cannot_be_de_identified_and_says_why() -> None:
    with pytest.raises(PseudonymKeyUnavailable, match="no key here"):
        Deidentifier(None, key_problem="no key here").deidentify(identified_dicom(PIXELS, ALICE).data, LIMITS)


# -- the key and the settings ----------------------------------------------------------------------------


def test_a_missing_key_file_is_made_once_private_and_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "catalog" / "pseudonym.key"
    with ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(lambda _: load_pseudonym_key(None, path), range(16)))
    assert len({key for key, _ in keys}) == 1
    key, problem = keys[0]
    assert key is not None and len(key) == 64 and problem == ""
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["pseudonym.key"]  # no temporary left
    assert load_pseudonym_key(None, path) == (key, "")
    assert load_pseudonym_key("g" * 40, path) == (b"g" * 40, "")  # a given key wins


def test_a_short_or_unreadable_key_file_turns_dicom_off_and_says_why(tmp_path: Path) -> None:
    short = tmp_path / "short.key"
    short.write_text("abc\n")
    assert load_pseudonym_key(None, short) == (
        None,
        f"the pseudonym key in {short} is shorter than 32 characters",
    )
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    key, problem = load_pseudonym_key(None, blocked / "pseudonym.key")
    assert key is None and "MEDSEARCH_CATALOG_PSEUDONYM_KEY" in problem


def test_dicom_settings_are_read_and_checked() -> None:
    base = {"MEDSEARCH_DATABASE_URL": "postgresql://x@h/db"}
    settings = CatalogSettings.from_environ(
        {
            **base,
            "MEDSEARCH_CATALOG_PSEUDONYM_KEY": "k" * 32,
            "MEDSEARCH_CATALOG_PSEUDONYM_KEY_FILE": "/etc/medsearch/key",
            "MEDSEARCH_CATALOG_DICOM_MODALITIES": "cr, dx,RG",
            "MEDSEARCH_CATALOG_ALLOW_BURNED_IN_ANNOTATION": "true",
        }
    )
    assert settings.pseudonym_key == "k" * 32 and "k" * 32 not in repr(settings)
    assert settings.pseudonym_key_file == Path("/etc/medsearch/key")
    assert settings.dicom_modalities == ("CR", "DX", "RG") and settings.allow_burned_in_annotation
    defaults = CatalogSettings.from_environ(base)
    assert defaults.pseudonym_key is None and defaults.pseudonym_key_file == Path("var/catalog/pseudonym.key")
    assert defaults.dicom_modalities == ("CR", "DX") and not defaults.allow_burned_in_annotation
    with pytest.raises(SettingsError, match="at least 32 characters") as short:
        CatalogSettings.from_environ({**base, "MEDSEARCH_CATALOG_PSEUDONYM_KEY": "secret-but-short"})
    assert "secret-but-short" not in str(short.value)
    with pytest.raises(SettingsError, match="MEDSEARCH_CATALOG_DICOM_MODALITIES"):
        CatalogSettings.from_environ({**base, "MEDSEARCH_CATALOG_DICOM_MODALITIES": "CR;DX"})
