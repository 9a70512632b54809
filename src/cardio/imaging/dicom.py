"""DICOM -> the normalised representation every other input gets: a MONOCHROME2 uint16 array.

Applied in the order the standard defines: the modality LUT (rescale slope/intercept), then the
VOI LUT or window (centre/width) when the file carries one, then MONOCHROME1 inversion (bright
air becomes dark), then scaling of the resulting range to the full 16 bits.
"""
from __future__ import annotations

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut, apply_voi_lut


class DicomError(ValueError):
    pass


def read_dicom(path: str) -> np.ndarray:
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as error:  # pydicom raises many types for damaged files
        raise DicomError(f"{path}: unreadable DICOM ({error})") from error
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomError(f"{path}: {photometric} is not a grayscale radiograph")
    if pixels.ndim != 2:
        raise DicomError(f"{path}: expected one 2-D frame, got shape {pixels.shape}")
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    if "VOILUTSequence" in ds or "WindowCenter" in ds:
        values = apply_voi_lut(values, ds, prefer_lut=True).astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        raise DicomError(f"{path}: constant image")
    scaled = (values - low) / (high - low)
    if photometric == "MONOCHROME1":
        scaled = 1.0 - scaled
    return np.round(scaled * 65535).astype(np.uint16)


def write_dicom(path: str, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 12,
                slope: float = 1.0, intercept: float = 0.0, window=None):
    """Writes a 2-D integer image as an uncompressed secondary-capture DICOM file.

    `pixels` are stored as given: for MONOCHROME1 the caller passes inverted values (bright air),
    the way such modalities store them.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    if pixels.ndim != 2 or pixels.max() >= 2 ** bits or pixels.min() < 0:
        raise ValueError(f"pixels must be a 2-D image within {bits} bits")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.ViewPosition = "CR", "PA"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
