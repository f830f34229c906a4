"""De-identifying a DICOM upload before anything of it is stored (DICOM PS3.15 Annex E).

The stored object keeps an allowlist of elements, those that show the radiograph and say
what it is (the image pixel, modality LUT, VOI LUT and DX/CR acquisition attributes, sex and
age); every other element goes, private ones and free text included. Of what is kept, dicognito
replaces names, identifiers and UIDs with consistent stand-ins and shifts dates back by a
consistent offset, both seeded per patient from the site's secret key, so that the same file
always gives the same bytes (re-uploads are recognised by sha256) and one patient's studies
keep their UIDs and intervals. The patient ID becomes a keyed pseudonym, HMAC-SHA256 of the
original with the site key: the same patient has the same pseudonym in every upload.

Refused before anything is written: modalities other than the accepted radiographs, burned-in
annotation (unless allowed), multi-frame files, and headers outside libs/common's bounds.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass

import pydicom
from dicognito.anonymizer import Anonymizer
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

from medsearch_catalog.errors import (
    BurnedInAnnotation,
    ImageRejected,
    PseudonymKeyUnavailable,
    UnsupportedModality,
)
from medsearch_catalog.settings import DEFAULT_DICOM_MODALITIES
from medsearch_common.imaging import DecodeLimits, read_dicom
from medsearch_common.imaging.dicom import READ_ERRORS, checked_element, element_value

# Bump when anything below changes the stored bytes: it is written into each file.
DEIDENTIFICATION_VERSION = "1"
MAX_AGE = 130

# The elements a de-identified radiograph keeps, by module. Names, IDs, UIDs and dates among
# them are replaced or shifted by dicognito; everything not listed is dropped.
KEPT_ELEMENTS = frozenset(
    {
        # SOP Common
        "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID",
        # Patient (sex and age: the Retain Patient Characteristics option)
        "PatientName", "PatientID", "PatientSex", "PatientAge",
        # General Study
        "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
        # General Series, DX Series
        "Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDate", "SeriesTime", "Laterality",
        "BodyPartExamined", "PatientPosition", "PresentationIntentType",
        # General Equipment
        "Manufacturer", "ManufacturerModelName",
        # General Image, DX Image, DX Positioning
        "InstanceNumber", "PatientOrientation", "ContentDate", "ContentTime", "AcquisitionDate",
        "AcquisitionTime", "AcquisitionNumber", "ImageType", "ImageLaterality", "ViewPosition",
        "BurnedInAnnotation", "LossyImageCompression", "LossyImageCompressionRatio",
        "LossyImageCompressionMethod", "PresentationLUTShape", "PixelIntensityRelationship",
        "PixelIntensityRelationshipSign", "ImagerPixelSpacing", "PixelSpacing",
        # Image Pixel
        "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated",
        "BitsStored", "HighBit", "PixelRepresentation", "PlanarConfiguration", "PixelAspectRatio",
        "SmallestImagePixelValue", "LargestImagePixelValue", "NumberOfFrames", "PixelData",
        # Modality LUT, VOI LUT
        "RescaleIntercept", "RescaleSlope", "RescaleType", "ModalityLUTSequence", "WindowCenter",
        "WindowWidth", "VOILUTFunction", "VOILUTSequence",
    }
)  # fmt: skip
# What a kept LUT sequence's items keep (their free-text explanations go).
_KEPT_IN_ITEMS = {
    "ModalityLUTSequence": ("LUTDescriptor", "ModalityLUTType", "LUTData"),
    "VOILUTSequence": ("LUTDescriptor", "LUTData"),
}
# The longest value of each text VR (PS3.5 6.2), so that nothing kept is over-long.
_MAX_CHARS = {
    "AE": 16, "AS": 4, "CS": 16, "DA": 8, "DS": 16, "DT": 26, "IS": 12, "LO": 64,
    "PN": 324, "SH": 16, "TM": 16, "UI": 64, "ST": 1024, "LT": 10240,
}  # fmt: skip
_AGE = re.compile(r"([0-9]{3})([DWMY])")
_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    ("113108", "Retain Patient Characteristics Option"),
)


@dataclass(frozen=True)
class DicomFacts:
    """What the catalog's metadata takes from a DICOM header: de-identified values only."""

    patient_id: str | None  # the keyed pseudonym of PatientID
    age: int | None  # years, from PatientAge (045Y, 006M, ...)
    sex: str | None
    view_position: str | None
    modality: str
    sop_instance_uid: str  # the replaced one


@dataclass(frozen=True)
class DeidentifiedDicom:
    data: bytes
    facts: DicomFacts


class Deidentifier:
    """De-identifies DICOM uploads with the site's pseudonym key, by the site's policy."""

    def __init__(
        self,
        key: bytes | None,
        *,
        modalities: Iterable[str] = DEFAULT_DICOM_MODALITIES,
        allow_burned_in_annotation: bool = False,
        key_problem: str = "no pseudonym key is configured",
    ) -> None:
        self._key = key
        self._key_problem = key_problem
        self.modalities = frozenset(m.upper() for m in modalities)
        self.allow_burned_in_annotation = allow_burned_in_annotation

    def pseudonym(self, patient_id: str) -> str:
        """The patient's key in the catalog: HMAC-SHA256 of the original ID, hex (64 characters)."""
        return hmac.new(self._secret(), b"patient-id\x00" + patient_id.encode(), hashlib.sha256).hexdigest()

    def deidentify(self, data: bytes, limits: DecodeLimits) -> DeidentifiedDicom:
        """The upload's de-identified DICOM file and what the metadata takes from it."""
        original = read_dicom(data, limits)
        modality = _text(element_value(original, "Modality")).upper()
        if modality not in self.modalities:
            accepted = ", ".join(sorted(self.modalities))
            named = f"modality {modality}" if modality else "no modality"
            raise UnsupportedModality(
                f"the DICOM file has {named}; the catalog keeps radiographs of modality {accepted}"
            )
        burned_in = _text(element_value(original, "BurnedInAnnotation")).upper() == "YES"
        if burned_in and not self.allow_burned_in_annotation:
            raise BurnedInAnnotation(
                "the DICOM file says its pixels carry burned-in annotation (BurnedInAnnotation YES),"
                " which may identify the patient and cannot be removed from the header; the operator"
                " may allow such files (MEDSEARCH_CATALOG_ALLOW_BURNED_IN_ANNOTATION)"
            )
        patient = _text(element_value(original, "PatientID"))
        pseudonym = self.pseudonym(patient) if patient else None
        kept = _kept_elements(original)
        # Seeded per patient: the same file gives the same bytes, one patient's studies keep
        # consistent UIDs and date intervals, and no two patients share a date offset.
        seed = hmac.new(self._secret(), b"dicognito\x00" + patient.encode(), hashlib.sha256).hexdigest()
        try:
            Anonymizer(seed=seed).anonymize(kept)
        except READ_ERRORS:
            raise ImageRejected(
                "the DICOM file's names, IDs, UIDs, dates or times cannot be de-identified: one is malformed"
            ) from None
        _mark_deidentified(kept, pseudonym, burned_in)
        kept.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        out = io.BytesIO()
        kept.save_as(out, enforce_file_format=True)  # a zero preamble: the original's may hide data
        return DeidentifiedDicom(
            data=out.getvalue(),
            facts=DicomFacts(
                patient_id=pseudonym,
                age=age_in_years(_text(element_value(original, "PatientAge"))),
                sex=_sex(_text(element_value(original, "PatientSex"))),
                view_position=_text(element_value(original, "ViewPosition")).upper() or None,
                modality=modality,
                sop_instance_uid=str(kept.SOPInstanceUID),
            ),
        )

    def _secret(self) -> bytes:
        if self._key is None:
            raise PseudonymKeyUnavailable(f"DICOM files cannot be added: {self._key_problem}")
        return self._key


def age_in_years(text: str) -> int | None:
    """PatientAge (`nnnD`, `nnnW`, `nnnM` or `nnnY`) in whole years; None when absent or malformed."""
    match = _AGE.fullmatch(text.strip())
    if match is None:
        return None
    count, unit = int(match[1]), match[2]
    years = {"Y": count, "M": count // 12, "W": count * 7 // 365, "D": count // 365}[unit]
    return years if years <= MAX_AGE else None


def _kept_elements(original: Dataset) -> Dataset:
    """A new dataset of the allowlisted elements (each checked: its VR and its length), with a
    file meta of its own."""
    for keyword in ("SOPClassUID", "SOPInstanceUID"):
        if not _text(element_value(original, keyword)):
            raise ImageRejected(f"the DICOM file has no {keyword}")
    kept = Dataset()
    for keyword in sorted(KEPT_ELEMENTS):
        element = checked_element(original, keyword)
        if element is None:
            continue
        if element.VR == "SQ":
            kept.add(_kept_sequence(keyword, element))
        else:
            kept.add(_copy(element))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = kept.SOPClassUID
    meta.MediaStorageSOPInstanceUID = kept.SOPInstanceUID  # replaced with it
    meta.TransferSyntaxUID = original.file_meta.TransferSyntaxUID
    kept.file_meta = meta
    return kept


def _kept_sequence(keyword: str, element: DataElement) -> DataElement:
    items = []
    for item in element.value:
        kept_item = Dataset()
        for inner in _KEPT_IN_ITEMS[keyword]:
            found = checked_element(item, inner)
            if found is not None:
                kept_item.add(_copy(found))
        items.append(kept_item)
    return DataElement(element.tag, "SQ", pydicom.Sequence(items))


def _copy(element: DataElement) -> DataElement:
    """The element anew (dicognito changes values in place), its text within its VR's length."""
    limit = _MAX_CHARS.get(element.VR)
    if limit is not None:
        values = element.value if isinstance(element.value, MultiValue) else [element.value]
        for value in values:
            if value is not None and len(str(value)) > limit:
                raise ImageRejected(
                    f"the DICOM element {element.keyword} {element.tag} holds a value of {len(str(value))}"
                    f" characters; VR {element.VR} allows {limit}"
                )
    return DataElement(
        element.tag,
        element.VR,
        element.value,
        is_undefined_length=element.is_undefined_length,
        already_converted=True,
    )


def _mark_deidentified(dataset: Dataset, pseudonym: str | None, burned_in: bool) -> None:
    """The pseudonym, no birth date, and the de-identification attributes (PS3.3 C.7.1.1)."""
    dataset.PatientID = pseudonym or ""
    dataset.PatientBirthDate = ""
    if "PatientName" not in dataset:
        dataset.PatientName = ""
    # Burned-in text an operator let through may still identify the patient.
    dataset.PatientIdentityRemoved = "NO" if burned_in else "YES"
    dataset.DeidentificationMethod = f"MEDSEARCH DEID {DEIDENTIFICATION_VERSION} (DICOGNITO)"
    codes = []
    for value, meaning in _CODES:
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, "DCM", meaning
        codes.append(code)
    dataset.DeidentificationMethodCodeSequence = codes
    dataset.LongitudinalTemporalInformationModified = "MODIFIED"


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        value = value[0] if len(value) else ""
    return str(value).strip()


def _sex(text: str) -> str | None:
    sex = text.upper()
    return sex if sex in ("M", "F", "O") else None
