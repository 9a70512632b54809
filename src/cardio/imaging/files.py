"""Radiograph files (PNG 8/16-bit, JPEG, DICOM) to and from MONOCHROME2 pixels.

Every converter stores, and `cardio predict` sends, the PNG `normalised_png` makes, so a file
reaches the model the same way whichever path it takes.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from cardio.imaging.dicom import read_dicom


def encode_png(pixels: np.ndarray) -> bytes:
    """Encodes a 2-D uint8 or uint16 array as a grayscale PNG of the same bit depth."""
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected a 2-D uint8/uint16 image, got {pixels.dtype} {pixels.shape}")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def normalised_pixels(path: str) -> np.ndarray:
    """Any supported file (PNG 8/16-bit, JPEG, DICOM) -> MONOCHROME2 uint8 or uint16 pixels."""
    if path.lower().endswith((".dcm", ".dicom")):
        return read_dicom(path)
    with open(path, "rb") as f:
        data = f.read()
    image = Image.open(io.BytesIO(data))
    image.load()  # raises on truncated or corrupt files
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        pixels = np.asarray(image)
        if pixels.dtype != np.uint16:
            pixels = np.clip(pixels, 0, 65535).astype(np.uint16)
    else:
        pixels = np.asarray(image.convert("L"))
    return pixels


def normalised_png(path: str) -> bytes:
    """Any supported file -> MONOCHROME2 PNG bytes, the form every example stores."""
    return encode_png(normalised_pixels(path))
