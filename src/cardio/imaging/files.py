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


def normalised_pixels(path: str) -> np.ndarray:
    """Any supported file (PNG 8/16-bit, JPEG, DICOM) -> MONOCHROME2 uint8 or uint16 pixels.

    DICOM is recognised by its `DICM` magic (or a .dcm/.dicom name), not by its name alone.
    Other files: EXIF orientation is applied; colour, palette and CMYK images become greyscale
    (ITU-R 601 luma); the alpha channel is ignored; 16-bit greyscale keeps its values (no
    stretch: a DICOM and a PNG of the same pixels must stay the same pixels).
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
        else:
            pixels = np.asarray(image.convert("L"))
    if min(pixels.shape) < MIN_SIDE:
        raise RejectedImage(f"image too small: {pixels.shape[1]}x{pixels.shape[0]} pixels "
                         f"(at least {MIN_SIDE} on each side)")
    return pixels


def normalised_png(path: str) -> bytes:
    """Any supported file -> MONOCHROME2 PNG bytes, the form every example stores."""
    return encode_png(normalised_pixels(path))
