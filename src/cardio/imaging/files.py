"""Radiograph files (PNG 8/16-bit, JPEG, DICOM) to and from MONOCHROME2 pixels.

Every converter stores, and `cardio predict` sends, the PNG `normalised_png` makes, so a file
reaches the model the same way whichever path it takes.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from cardio.imaging.dicom import DICM_OFFSET, is_dicom, read_dicom


def encode_png(pixels: np.ndarray) -> bytes:
    """Encodes a 2-D uint8 or uint16 array as a grayscale PNG of the same bit depth."""
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected a 2-D uint8/uint16 image, got {pixels.dtype} {pixels.shape}")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


MIN_SIDE = 32  # smaller is a thumbnail or an icon, not a radiograph


class RejectedImage(ValueError):
    """A readable file that is not a usable radiograph; the message starts with the reason."""


def png_significant_bits(data: bytes) -> int | None:
    """The grey channel's significant bits from a PNG's sBIT chunk (before IDAT), else None."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    position = 8
    while position + 8 <= len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        kind = data[position + 4:position + 8]
        if kind == b"sBIT" and length >= 1:
            return data[position + 8]
        if kind in (b"IDAT", b"IEND"):
            return None
        position += 12 + length
    return None


def to_full_range(pixels: np.ndarray, bits: int) -> np.ndarray:
    """Values stored in the low `bits` of a 16-bit image -> the 16-bit range, as read_dicom
    scales a DICOM with that Bits Stored: the same radiograph reaches the model alike."""
    top = 2 ** bits - 1
    if pixels.max(initial=0) > top:
        raise RejectedImage(f"pixel values above the declared bit depth: maximum "
                            f"{int(pixels.max())} > {top} ({bits} bits); declare the depth the "
                            f"site exports (--bits-stored) or none")
    return np.round(pixels.astype(np.float64) * (65535 / top)).astype(np.uint16)


def normalised_pixels(path: str, bits_stored: int | None = None) -> np.ndarray:
    """Any supported file (PNG 8/16-bit, JPEG, DICOM) -> MONOCHROME2 uint8 or uint16 pixels.

    DICOM is recognised by its `DICM` magic (or a .dcm/.dicom name), not by its name alone.
    Other files: EXIF orientation is applied; colour, palette and CMYK images become greyscale
    (ITU-R 601 luma); the alpha channel is ignored.

    The bit-depth rule: a 16-bit greyscale PNG whose values use fewer bits (a 12-bit detector's
    export, as PadChest ships) is scaled to the 16-bit range exactly as a DICOM of the same Bits
    Stored is (`to_full_range`), so both reach the model in the same intensity range. The depth
    is the PNG's own sBIT chunk when present, else `bits_stored`, the site's declared export
    depth (`cardio data csv --bits-stored`); with neither the values are kept (no stretch by the
    image's own maximum, which would depend on its content).
    """
    with open(path, "rb") as f:
        data = f.read()
    if is_dicom(data[:DICM_OFFSET + 4]) or path.lower().endswith((".dcm", ".dicom")):
        pixels = read_dicom(path)
    else:
        image = Image.open(io.BytesIO(data))
        image.load()  # raises on truncated or corrupt files
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            pixels = np.asarray(image)
            if pixels.dtype != np.uint16:
                pixels = np.clip(pixels, 0, 65535).astype(np.uint16)
            bits = png_significant_bits(data) or bits_stored
            if bits and bits < 16:
                pixels = to_full_range(pixels, bits)
        else:
            pixels = np.asarray(image.convert("L"))
    if min(pixels.shape) < MIN_SIDE:
        raise RejectedImage(f"image too small: {pixels.shape[1]}x{pixels.shape[0]} pixels "
                         f"(at least {MIN_SIDE} on each side)")
    return pixels


def normalised_png(path: str, bits_stored: int | None = None) -> bytes:
    """Any supported file -> MONOCHROME2 PNG bytes, the form every example stores."""
    return encode_png(normalised_pixels(path, bits_stored))
