"""DICOM files as a hospital's modality writes them, made from the shared PNGs with pydicom: a
patient's name, IDs, dates, institution, physicians, free text, UIDs, private tags and a
preamble, each a distinctive marker string, so that a test can search for every one of them
wherever the file went."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian

UID_ROOT = "1.2.826.0.1.3680043.10.543"


@dataclass(frozen=True)
class Patient:
    """A patient's identity as a hospital holds it; `mark` (a few capitals) makes every value
    of it distinctive."""

    mark: str
    patient_id: str = ""
    sex: str = "F"
    age: str = "045Y"

    @property
    def id(self) -> str:
        return self.patient_id or f"{self.mark}PID"


@dataclass(frozen=True)
class IdentifiedDicom:
    data: bytes
    markers: list[str] = field(default_factory=list)  # every identifying value written


def gray_of(path: Path) -> NDArray[np.uint8]:
    """A shared PNG's pixels as 8-bit gray (the six RGBA NIH files included)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def identified_dicom(
    pixels: NDArray[np.integer],
    patient: Patient,
    *,
    study: str = "1",
    image: str = "1",
    view: str = "PA",
    modality: str = "DX",
    burned_in: str | None = "NO",
    photometric: str = "MONOCHROME2",
    syntax: UID = ExplicitVRLittleEndian,
    frames: int = 1,
    extra: Dataset | None = None,
) -> IdentifiedDicom:
    """A DX file of `pixels` for `patient`, study `study`, image `image`, full of identifying
    values; `extra`'s elements are added last (for hostile files)."""
    mark = f"{patient.mark}S{study}I{image}"
    study_uid = f"{UID_ROOT}.{sum(map(ord, patient.mark))}.{study}"
    sop_uid = f"{study_uid}.{image}.3"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = syntax
    meta.SourceApplicationEntityTitle = f"{patient.mark}AET"[:16]
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = f"{mark}PREAMBLE".encode().ljust(128, b"\x00")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = f"{study_uid}.{image}.2"
    ds.FrameOfReferenceUID = f"{study_uid}.{image}.4"
    ds.PatientName = f"{patient.mark}FAMILY^{patient.mark}GIVEN"
    ds.PatientID = patient.id
    ds.IssuerOfPatientID = f"{patient.mark}ISSUER"
    ds.OtherPatientIDs = f"{patient.mark}OTHERPID"
    other = Dataset()
    other.PatientID = f"{patient.mark}SEQPID"
    other.IssuerOfPatientID = f"{patient.mark}SEQISSUER"
    ds.OtherPatientIDsSequence = [other]
    ds.PatientBirthDate = "19470312"
    ds.PatientSex = patient.sex
    ds.PatientAge = patient.age
    ds.PatientAddress = f"{patient.mark}STREET 1, {patient.mark}TOWN"
    ds.PatientTelephoneNumbers = f"555{sum(map(ord, patient.mark)):07d}"
    ds.PatientComments = f"{patient.mark}PATIENTCOMMENT allergic to penicillin"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = f"2019041{study[-1]}"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = "101500"
    ds.AccessionNumber = f"{mark}ACC"[:16]
    ds.StudyID = f"{mark}SID"[:16]
    ds.StudyDescription = f"{mark}STUDYDESC chest"
    ds.ReferringPhysicianName = f"{patient.mark}REFDOC^X"
    ds.PerformingPhysicianName = f"{patient.mark}PERFDOC^Y"
    ds.OperatorsName = f"{patient.mark}OPERATOR^Z"
    ds.InstitutionName = f"{patient.mark}HOSPITAL"
    ds.InstitutionAddress = f"{patient.mark}HOSPITALSTREET 9"
    ds.StationName = f"{patient.mark}STATION"[:16]
    ds.DeviceSerialNumber = f"{patient.mark}SERIAL"
    ds.ImageComments = f"{mark}IMAGECOMMENT"
    ds.Modality = modality
    ds.ViewPosition = view
    ds.BodyPartExamined = "CHEST"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "TESTVENDOR"
    ds.SeriesNumber = 1
    ds.InstanceNumber = int(image) if image.isdigit() else 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PatientOrientation = ["L", "F"]
    if burned_in is not None:
        ds.BurnedInAnnotation = burned_in
    block = ds.private_block(0x0029, f"{patient.mark} PRIVATE", create=True)
    block.add_new(0x10, "LO", f"{mark}PRIVATEVALUE")
    block.add_new(0x11, "UN", f"{mark}PRIVATEBYTES".encode())
    ds.Rows, ds.Columns = pixels.shape[-2], pixels.shape[-1]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LIN"
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = encapsulate([pixels.tobytes()]) if syntax.is_compressed else pixels.tobytes()
    if extra is not None:
        for element in extra:
            ds.add(element)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    markers = [
        f"{mark}PREAMBLE", f"{patient.mark}FAMILY", f"{patient.mark}GIVEN", patient.id,
        f"{patient.mark}ISSUER", f"{patient.mark}OTHERPID", f"{patient.mark}SEQPID",
        f"{patient.mark}SEQISSUER", "19470312", f"{patient.mark}STREET", f"{patient.mark}TOWN",
        str(ds.PatientTelephoneNumbers), f"{patient.mark}PATIENTCOMMENT", str(ds.StudyDate),
        str(ds.AccessionNumber), str(ds.StudyID), f"{mark}STUDYDESC", f"{patient.mark}REFDOC",
        f"{patient.mark}PERFDOC", f"{patient.mark}OPERATOR", f"{patient.mark}HOSPITAL",
        str(ds.StationName), f"{patient.mark}SERIAL", f"{mark}IMAGECOMMENT",
        f"{mark}PRIVATEVALUE", f"{mark}PRIVATEBYTES", f"{patient.mark} PRIVATE",
        str(meta.SourceApplicationEntityTitle), study_uid, sop_uid,
    ]  # fmt: skip
    return IdentifiedDicom(out.getvalue(), markers)
