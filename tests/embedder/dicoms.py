"""DICOM files the tests make themselves from pixel arrays, with pydicom."""

from __future__ import annotations

import io

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def dicom(
    pixels: NDArray[np.integer],
    *,
    photometric: str = "MONOCHROME2",
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    frames: int = 1,
    syntax: UID = ExplicitVRLittleEndian,
    modality: str = "DX",
) -> bytes:
    """A minimal single-image DICOM file (Part 10, with preamble) holding `pixels`."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.Rows, ds.Columns = pixels.shape[-2], pixels.shape[-1]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept or 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    # A compressed syntax wants fragments; their content only has to reach the decoder.
    ds.PixelData = encapsulate([pixels.tobytes()]) if syntax.is_compressed else pixels.tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
