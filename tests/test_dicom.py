"""DICOM as PACS exports it: every common compressed transfer syntax, decoded by pydicom's
plugins (pylibjpeg + libjpeg/OpenJPEG/RLE), and normalised exactly like a PNG of the same pixels.

The test files are written here: RLE, JPEG-LS and JPEG 2000 by pydicom's own encoders (RLE
native, pyjpegls, pylibjpeg-openjpeg), JPEG lossless by GDCM's transcoder, JPEG baseline by
Pillow, encapsulated as the standard describes.
"""
import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import uid

from cardio.imaging import dicom, files

RNG = np.random.default_rng(11)
# A radiograph-like 12-bit image: a smooth gradient plus noise, so every codec has real work.
PIXELS12 = np.clip(np.add.outer(np.arange(48) * 40, np.arange(64) * 30)
                   + RNG.integers(0, 200, (48, 64)), 0, 4095).astype(np.uint16)


def _uncompressed(path, pixels, bits):
    dicom.write_dicom(str(path), pixels, bits=bits)
    return pydicom.dcmread(str(path))


def _gdcm_transcode(source, target, syntax, pixel_format=None):
    """GDCM re-encodes `source` in `syntax`; `pixel_format` (gdcm.PixelFormat's arguments)
    replaces the image's pixel format first."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    assert reader.Read()
    image = reader.GetImage()
    if pixel_format:
        image.SetPixelFormat(gdcm.PixelFormat(*pixel_format))
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, syntax)))
    change.SetInput(image)
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(target))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()


@pytest.mark.parametrize("syntax", [uid.RLELossless, uid.JPEGLSLossless, uid.JPEG2000Lossless,
                                    uid.JPEGLosslessSV1])
def test_lossless_compressed_dicom_decodes_to_the_uncompressed_pixels(tmp_path, syntax):
    ds = _uncompressed(tmp_path / "plain.dcm", PIXELS12, bits=12)
    path = tmp_path / "compressed.dcm"
    if syntax == uid.JPEGLosslessSV1:
        _gdcm_transcode(tmp_path / "plain.dcm", path, "JPEGLosslessProcess14_1")
    else:
        ds.compress(syntax, PIXELS12)
        ds.save_as(str(path), enforce_file_format=True)
    assert pydicom.dcmread(str(path)).file_meta.TransferSyntaxUID == syntax
    assert pydicom.dcmread(str(path)).file_meta.TransferSyntaxUID.is_compressed
    np.testing.assert_array_equal(dicom.read_dicom(str(path)),
                                  dicom.read_dicom(str(tmp_path / "plain.dcm")))


def test_jpeg_baseline_dicom_decodes_like_the_same_jpeg_file(tmp_path):
    """8-bit JPEG baseline, the commonest lossy PACS export: the DICOM and the .jpg carrying the
    same JPEG stream give the same pixels (two IDCT implementations: within one grey level)."""
    from pydicom.encaps import encapsulate

    pixels = (PIXELS12 >> 4).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    (tmp_path / "same.jpg").write_bytes(buffer.getvalue())
    ds = _uncompressed(tmp_path / "j.dcm", pixels.astype(np.uint16), bits=8)
    ds.file_meta.TransferSyntaxUID = uid.JPEGBaseline8Bit
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.save_as(str(tmp_path / "j.dcm"), enforce_file_format=True)
    from_dicom = files.normalised_pixels(str(tmp_path / "j.dcm"))
    from_jpeg = files.normalised_pixels(str(tmp_path / "same.jpg"))
    assert from_dicom.dtype == from_jpeg.dtype == np.uint8
    assert np.abs(from_dicom.astype(int) - from_jpeg.astype(int)).max() <= 1
    assert np.abs(from_dicom.astype(int) - pixels.astype(int)).mean() < 3   # lossy, but close


@pytest.mark.parametrize("bits,dtype", [(8, np.uint8), (16, np.uint16)])
def test_dicom_and_png_of_the_same_pixels_are_normalised_identically(tmp_path, bits, dtype):
    """No per-image stretch: the header's range decides, so the two files reach the model as
    exactly the same pixels, even for a narrow range of values."""
    pixels = (PIXELS12[:, :] // 8 + 1000).astype(dtype) if bits == 16 else \
        (PIXELS12 // 64 + 60).astype(dtype)
    Image.fromarray(pixels).save(tmp_path / "same.png")
    dicom.write_dicom(str(tmp_path / "same"), pixels.astype(np.uint16), bits=bits)
    from_png = files.normalised_pixels(str(tmp_path / "same.png"))
    from_dicom = files.normalised_pixels(str(tmp_path / "same"))  # no extension: by DICM magic
    assert from_dicom.dtype == from_png.dtype == dtype
    np.testing.assert_array_equal(from_dicom, from_png)
    np.testing.assert_array_equal(from_dicom, pixels)
    # MONOCHROME1 of the inverted pixels is the same radiograph.
    dicom.write_dicom(str(tmp_path / "m1.dcm"), (2 ** bits - 1 - pixels).astype(np.uint16),
                      photometric="MONOCHROME1", bits=bits)
    np.testing.assert_array_equal(files.normalised_pixels(str(tmp_path / "m1.dcm")), from_png)


def _png16(path, pixels, significant_bits=None):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if significant_bits:
        info.add(b"sBIT", bytes([significant_bits]))
    Image.fromarray(pixels.astype(np.uint16)).save(str(path), pnginfo=info)


@pytest.mark.parametrize("bits", [10, 12, 16])
def test_a_dicom_and_a_16bit_png_of_the_same_radiograph_reach_the_model_alike(tmp_path, bits):
    """The rule: a 16-bit PNG's sBIT chunk, else the site's declared depth, scales it as the
    DICOM's Bits Stored does; with neither, the values are kept as stored."""
    pixels = (PIXELS12.astype(np.int64) * (2 ** bits - 1) // 4095).astype(np.uint16)
    dicom.write_dicom(str(tmp_path / "r.dcm"), pixels, bits=bits)
    from_dicom = files.normalised_pixels(str(tmp_path / "r.dcm"))
    assert from_dicom.dtype == np.uint16 and from_dicom.max() > 60000
    _png16(tmp_path / "sbit.png", pixels, significant_bits=bits)
    _png16(tmp_path / "plain.png", pixels)
    np.testing.assert_array_equal(files.normalised_pixels(str(tmp_path / "sbit.png")), from_dicom)
    np.testing.assert_array_equal(
        files.normalised_pixels(str(tmp_path / "plain.png"), bits_stored=bits), from_dicom)
    kept = files.normalised_pixels(str(tmp_path / "plain.png"))
    np.testing.assert_array_equal(kept, pixels)          # no declaration: as stored
    assert (kept == from_dicom).all() == (bits == 16)
    # The same pixels through the model's decoder: one intensity range.
    from cardio.imaging import decode
    seen = [decode.preprocess(files.encode_png(p), 32).numpy()
            for p in (from_dicom, files.normalised_pixels(str(tmp_path / "sbit.png")))]
    np.testing.assert_array_equal(seen[0], seen[1])


def test_a_png_brighter_than_its_declared_depth_is_refused_with_the_reason(tmp_path):
    _png16(tmp_path / "bright.png", np.full((40, 40), 5000, np.uint16), significant_bits=12)
    with pytest.raises(files.RejectedImage, match=r"above the declared bit depth: maximum 5000 > 4095"):
        files.normalised_pixels(str(tmp_path / "bright.png"))


def _gdcm_jpeg_extended_12bit(source, target):
    """JPEG Extended (process 2 & 4) at 12-bit sample precision, encoded by GDCM. GDCM sizes the
    JPEG precision from Bits Allocated, so the image is handed over as 12 bits allocated and the
    header written back as a PACS writes it (16 allocated, 12 stored)."""
    _gdcm_transcode(source, target, "JPEGExtendedProcess2_4", pixel_format=(1, 12, 12, 11))
    ds = pydicom.dcmread(str(target))
    ds.BitsAllocated = 16
    ds.save_as(str(target))


def test_jpeg_extended_12bit_dicom_decodes_close_to_the_uncompressed_pixels(tmp_path):
    from pydicom.encaps import generate_fragmented_frames

    _uncompressed(tmp_path / "plain.dcm", PIXELS12, bits=12)
    _gdcm_jpeg_extended_12bit(tmp_path / "plain.dcm", tmp_path / "j12.dcm")
    ds = pydicom.dcmread(str(tmp_path / "j12.dcm"))
    assert ds.file_meta.TransferSyntaxUID == uid.JPEGExtended12Bit
    frame = b"".join(next(generate_fragmented_frames(ds.PixelData)))
    assert frame[frame.index(b"\xff\xc1") + 4] == 12       # SOF1, 12-bit sample precision
    lossy = dicom.read_dicom(str(tmp_path / "j12.dcm")).astype(int)
    exact = dicom.read_dicom(str(tmp_path / "plain.dcm")).astype(int)
    assert lossy.shape == exact.shape
    # Lossy at quality 90-ish: within a few 12-bit grey levels (x 16 in the 16-bit range).
    assert np.abs(lossy - exact).mean() < 4 * 16 and np.abs(lossy - exact).max() < 16 * 16


def test_jpeg_extended_at_16bit_precision_decodes_through_gdcm(tmp_path):
    """GDCM's own transcoder codes a 12-bit image at 16-bit sample precision in the lossy
    syntax; pydicom's plugins refuse that stream, GDCM's decoder reads it."""
    from pydicom.encaps import generate_fragmented_frames

    _uncompressed(tmp_path / "plain.dcm", PIXELS12, bits=12)
    _gdcm_transcode(tmp_path / "plain.dcm", tmp_path / "j16.dcm", "JPEGExtendedProcess2_4")
    ds = pydicom.dcmread(str(tmp_path / "j16.dcm"))
    assert ds.file_meta.TransferSyntaxUID == uid.JPEGExtended12Bit
    frame = b"".join(next(generate_fragmented_frames(ds.PixelData)))
    assert frame[frame.index(b"\xff\xc1") + 4] == 16
    with pytest.raises(Exception):
        ds.pixel_array                                   # every pydicom plugin refuses it
    decoded = dicom.read_dicom(str(tmp_path / "j16.dcm")).astype(int)
    exact = dicom.read_dicom(str(tmp_path / "plain.dcm")).astype(int)
    assert np.abs(decoded - exact).max() <= 16 * 2      # within 2 of 4,095 grey levels
