"""DICOM -> the normalised representation every other input gets: MONOCHROME2 uint8 or uint16.

Applied in the order the standard defines: the modality LUT (rescale slope/intercept), then the
VOI LUT or window (centre/width) when the file carries one, then MONOCHROME1 inversion (bright
air becomes dark). The result is scaled from the range the *header* defines (Bits Stored, through
the same LUTs) to 8 bits when at most 8 bits are stored, else to 16 bits; never by the image's own
minimum and maximum. So a DICOM and a PNG of the same pixels become the same pixels.

Compressed transfer syntaxes (JPEG baseline, extended 12-bit and lossless, JPEG-LS, JPEG 2000,
RLE) are decoded by pydicom's plugins (pylibjpeg with its libjpeg, OpenJPEG and RLE codecs); a
stream they refuse goes to GDCM's own decoder (python-gdcm), which reads, for example, the 12-bit
JPEG Extended files GDCM's transcoder writes at 16-bit sample precision.
"""
from __future__ import annotations

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut, apply_voi_lut

DICM_OFFSET = 128  # the DICOM file format's magic, b"DICM", follows a 128-byte preamble


class DicomError(ValueError):
    pass


def is_dicom(head: bytes) -> bool:
    """True when the file's first bytes carry the DICOM magic (Part 10 file format)."""
    return head[DICM_OFFSET:DICM_OFFSET + 4] == b"DICM"


def _header_range(ds) -> tuple[float, float]:
    """The output range the header defines for the LUT chain read_dicom applies."""
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    stored = (np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1]) if ds.get("PixelRepresentation")
              else np.array([0, 2 ** bits - 1]))
    if "VOILUTSequence" in ds:
        lut_bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2 ** lut_bits - 1)
    values = apply_modality_lut(stored, ds).astype(np.float64)
    return float(values.min()), float(values.max())


def read_dicom(path) -> np.ndarray:
    try:
        ds = pydicom.dcmread(path)
    except Exception as error:  # pydicom raises many types for damaged files
        raise DicomError(f"{path}: unreadable DICOM: {error}") from error
    if "PixelData" not in ds:
        raise DicomError(f"{path}: DICOM without pixel data: no (7FE0,0010) element")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomError(f"{path}: not a greyscale DICOM: {photometric} is not a grayscale radiograph")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise DicomError(f"{path}: multi-frame DICOM: {ds.NumberOfFrames} frames, expected one")
    try:
        pixels = ds.pixel_array
    except Exception as error:  # no decoder for the transfer syntax, or damaged pixel data
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown")
        try:
            pixels = _gdcm_pixels(path) if getattr(syntax, "is_compressed", False) else None
        except Exception as gdcm_error:   # GDCM's reason joins pydicom's plugins'
            error = f"{error}; GDCM: {gdcm_error}"
            pixels = None
        if pixels is None:
            raise DicomError(f"{path}: undecodable DICOM pixel data: transfer syntax {syntax} "
                             f"({error})") from None
    if pixels.ndim != 2:
        raise DicomError(f"{path}: not a single 2-D frame: shape {pixels.shape}")
    low, high = _header_range(ds)
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    if "VOILUTSequence" in ds or "WindowCenter" in ds:
        values = apply_voi_lut(values, ds, prefer_lut=True).astype(np.float64)
    if high <= low:
        raise DicomError(f"{path}: unreadable DICOM: the header defines an empty value range")
    scaled = np.clip((values - low) / (high - low), 0.0, 1.0)
    if photometric == "MONOCHROME1":
        scaled = 1.0 - scaled
    if high - low <= 255:
        return np.round(scaled * 255).astype(np.uint8)
    return np.round(scaled * 65535).astype(np.uint16)


def _gdcm_pixels(path) -> np.ndarray:
    """The first frame as GDCM's own codecs decode it. They read streams pydicom's plugins
    refuse, such as a 12-bit image coded at 16-bit sample precision in the lossy JPEG Extended
    syntax, which GDCM's own transcoder (and so some PACS) writes."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    if not reader.Read():
        raise ValueError("GDCM cannot read the file")
    image = reader.GetImage()
    pixel_format = image.GetPixelFormat()
    dtype = {(8, 0): np.uint8, (16, 0): np.uint16, (16, 1): np.int16}.get(
        (pixel_format.GetBitsAllocated(), pixel_format.GetPixelRepresentation()))
    if dtype is None or pixel_format.GetSamplesPerPixel() != 1:
        raise ValueError(f"unsupported pixel format {pixel_format.GetBitsAllocated()} bits, "
                         f"{pixel_format.GetSamplesPerPixel()} samples")
    # python-gdcm hands the buffer over as a str of raw bytes.
    buffer = image.GetBuffer().encode("utf-8", errors="surrogateescape")
    rows, columns = image.GetDimension(1), image.GetDimension(0)
    return np.frombuffer(buffer, dtype=np.dtype(dtype).newbyteorder("<"),
                         count=rows * columns).reshape(rows, columns)


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
