"""Converters: PNG 8/16-bit, JPEG, DICOM MONOCHROME1/2 and corrupt files, to one schema."""
import functools
import glob
import json

import numpy as np
import pydicom
import pytest
import tensorflow as tf
from PIL import Image

from cardio import features as F
from cardio.data import convert, records
from cardio.imaging import dicom

GRADIENT = np.tile(np.linspace(0, 1, 64), (48, 1))  # dark left, bright right


def write_dicom(path, stored, photometric="MONOCHROME2", bits=12, slope=1.0, intercept=0.0,
                window=None):
    """The project's DICOM writer, plus identifying header fields that must never leak."""
    dicom.write_dicom(str(path), stored.astype(np.uint16), photometric, bits, slope, intercept,
                      window)
    ds = pydicom.dcmread(str(path))
    ds.PatientID, ds.PatientName = "SECRET-123", "Doe^Jane"
    ds.save_as(str(path))


def test_dicom_monochrome2_keeps_bright_bone(tmp_path):
    stored = np.round(GRADIENT * 4095)
    path = str(tmp_path / "m2.dcm")
    write_dicom(path, stored)
    out = dicom.read_dicom(path)
    assert out.dtype == np.uint16
    assert out[:, 0].mean() < out[:, -1].mean()
    assert out.min() == 0 and out.max() == 65535


def test_dicom_monochrome1_is_inverted(tmp_path):
    stored = np.round(GRADIENT * 4095)
    write_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1")
    write_dicom(tmp_path / "m2.dcm", stored)
    m1, m2 = dicom.read_dicom(str(tmp_path / "m1.dcm")), dicom.read_dicom(str(tmp_path / "m2.dcm"))
    np.testing.assert_array_equal(m1, 65535 - m2)


def test_dicom_rescale_and_window(tmp_path):
    stored = np.round(GRADIENT * 4095)
    # Rescale to [-1000, 3095]; a window centred at 1000, width 1000 clips both ends.
    write_dicom(tmp_path / "w.dcm", stored, slope=1.0, intercept=-1000.0, window=(1000, 1000))
    out = dicom.read_dicom(str(tmp_path / "w.dcm")).astype(float)
    rescaled = stored - 1000
    below, above = rescaled < 500, rescaled > 1500
    assert below.any() and above.any()
    assert np.all(out[below] == 0) and np.all(out[above] == 65535)
    inside = ~below & ~above
    assert np.all(np.diff(out[0][inside[0]]) >= 0)


def test_dicom_unreadable_is_a_clear_error(tmp_path):
    (tmp_path / "bad.dcm").write_bytes(b"not a dicom file at all")
    with pytest.raises(dicom.DicomError, match="bad.dcm: unreadable DICOM:"):
        dicom.read_dicom(str(tmp_path / "bad.dcm"))


@pytest.fixture
def export(tmp_path):
    """A small hospital export: PNG 8/16-bit, JPEG, DICOM M1, plus truncated and missing files."""
    root = tmp_path / "images"
    root.mkdir()
    Image.fromarray((GRADIENT * 255).astype(np.uint8)).save(root / "a8.png")
    Image.fromarray((GRADIENT * 65535).astype(np.uint16)).save(root / "b16.png")
    Image.fromarray((GRADIENT * 255).astype(np.uint8)).save(root / "c.jpg", quality=95)
    # MONOCHROME1 stores bright air: the same anatomy is stored inverted.
    write_dicom(root / "d.dcm", np.round((1 - GRADIENT) * 4095), photometric="MONOCHROME1")
    good = (root / "a8.png").read_bytes()
    (root / "e_truncated.png").write_bytes(good[: len(good) // 2])
    rows = ["path,label,patient_id,sex,age,site",
            "a8.png,1,P1,F,70,h1", "b16.png,0,P2,M,45,h1", "c.jpg,0,P3,,,h1", "d.dcm,1,P4,M,80,h2",
            "e_truncated.png,0,P5,M,50,h1", "missing.png,1,P6,F,60,h1", "a8.png,maybe,P7,F,60,h1"]
    (tmp_path / "export.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def _read_examples(out):
    examples = []
    for path in glob.glob(str(out / "span-1" / "*" / "*.tfrecord.gz")):
        for raw in tf.data.TFRecordDataset(path, compression_type="GZIP"):
            examples.append(tf.train.Example.FromString(raw.numpy()))
    return examples


def test_a_failed_conversion_leaves_no_span(export):
    """Over the quarantine limit nothing lands where ExampleGen looks (`span-{SPAN}`); the
    quarantine report and the summary go to failed-span-N, and name no source file."""
    selection = convert.csv_selection(str(export / "export.csv"))
    out = export / "out"
    with pytest.raises(convert.QuarantineLimitExceeded, match="3 of 7"):
        convert.convert(selection, functools.partial(convert.file_loader, str(export / "images")),
                        str(out), 1, ("h2",), salt="s", workers=1)
    assert sorted(p.name for p in out.iterdir()) == ["failed-span-1"]
    summary = json.loads((out / "failed-span-1" / "summary.json").read_text())
    assert summary["written"] == 4 and summary["quarantined"] == 3
    assert summary["quarantine_reasons"] == {"bad label": 1, "unreadable image": 1,
                                             "missing file": 1}
    report = (out / "failed-span-1" / "quarantine.csv").read_text()
    assert "e_truncated" not in report and "missing.png" not in report
    assert f"{records.hash_image_id('missing.png', 's')},missing file" in report
    assert f"{records.hash_image_id('e_truncated.png', 's')},unreadable image" in report


def test_generic_export_converts_every_format_and_quarantines_bad_files(export):
    selection = convert.csv_selection(str(export / "export.csv"))
    out = export / "out"
    summary = convert.convert(
        selection, functools.partial(convert.file_loader, str(export / "images")), str(out), 1,
        ("h2",), salt="s", workers=1, quarantine_limit=0.5, id_map=str(export / "ids.csv"))
    assert summary["written"] == 4 and summary["quarantined"] == 3
    with pytest.raises(FileExistsError, match="span-1 already exists"):
        convert.convert(selection, functools.partial(convert.file_loader, str(export / "images")),
                        str(out), 1, ("h2",), salt="s", workers=1, quarantine_limit=0.5)
    examples = _read_examples(out)
    assert len(examples) == 4
    raw_of = {records.hash_image_id(name, "s"): name.split(".")[0]
              for name in ("a8.png", "b16.png", "c.jpg", "d.dcm")}
    by_id = {raw_of[e.features.feature[F.IMAGE_ID].bytes_list.value[0].decode()]: e
             for e in examples}
    # The id map (kept beside the source data) leads back from every salted id to its file.
    assert {line.split(",")[1] for line in (export / "ids.csv").read_text().splitlines()[1:]} == {
        "a8.png", "b16.png", "c.jpg", "d.dcm", "e_truncated.png", "missing.png", "a8.png"}
    for image_id, example in by_id.items():
        png = example.features.feature[F.IMAGE].bytes_list.value[0]
        pixels = tf.io.decode_png(png, dtype=tf.uint16).numpy()[..., 0].astype(float)
        # The same normalised representation: MONOCHROME2, dark left, bright right.
        assert pixels[:, :4].mean() < pixels[:, -4:].mean(), image_id
        patient = example.features.feature[F.PATIENT_ID].bytes_list.value[0].decode()
        raw = {"a8": "P1", "b16": "P2", "c": "P3", "d": "P4"}[image_id]
        assert patient == records.hash_patient_id(raw, "s") != raw
    assert by_id["c"].features.feature[F.SEX].bytes_list.value[0] == b"unknown"
    assert F.AGE not in by_id["c"].features.feature
    # Nothing of the DICOM header beyond the schema's features reaches the examples.
    serialized = b"".join(e.SerializeToString() for e in examples)
    assert b"SECRET-123" not in serialized and b"Doe^Jane" not in serialized
    assert b"a8" not in serialized and b"d.dcm" not in serialized
    sites = {e.features.feature[F.SITE].bytes_list.value[0] for e in examples}
    assert sites == {b"h1", b"h2"}


def test_synthetic_dataset_has_every_split_and_both_sites(tmp_path):
    summary = convert.write_synthetic(str(tmp_path), 60, seed=2, size=128, span=3,
                                      external_sites=("site-b",), workers=1)
    assert summary["written"] == 60 and summary["quarantined"] == 0
    for split in F.SPLITS:
        assert sum(summary["splits"][split].values()) > 0, split
    assert sum(summary["splits"]["test"].values()) > 0
    again = convert.write_synthetic(str(tmp_path / "again"), 60, seed=2, size=128, span=3,
                                    external_sites=("site-b",), workers=1)
    assert again["splits"] == summary["splits"]


def test_synthetic_examples_carry_their_ground_truth(tmp_path):
    convert.write_synthetic(str(tmp_path), 12, seed=5, size=160, span=1, external_sites=(),
                            workers=1)
    examples = _read_examples(tmp_path)
    assert len(examples) == 12
    for example in examples:
        f = example.features.feature
        ctr = f[F.CTR].float_list.value[0]
        assert f[F.LABEL].int64_list.value[0] == int(ctr > 0.5)
        image = tf.io.decode_png(f[F.IMAGE].bytes_list.value[0], dtype=tf.uint16).numpy()
        lungs = tf.io.decode_png(f[F.LUNG_MASK].bytes_list.value[0]).numpy()
        heart = tf.io.decode_png(f[F.HEART_MASK].bytes_list.value[0]).numpy()
        assert lungs.shape == heart.shape == image.shape
        assert set(np.unique(lungs)) == {0, 255} and not np.any((lungs > 0) & (heart > 0))


def test_contact_sheet_is_written(tmp_path):
    from cardio.data import preview

    path = preview.contact_sheet(str(tmp_path / "sheet.png"), n=2)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 400


def test_synthetic_files_round_trip_through_the_csv_converter(tmp_path):
    """Site-b's MONOCHROME1 DICOM files come back as the same MONOCHROME2 radiograph."""
    from cardio.data import synth

    synth.export_files(str(tmp_path / "files"), 6, seed=1, size=96)
    assert {p.suffix for p in (tmp_path / "files" / "images").iterdir()} == {".png", ".dcm"}
    selection = convert.csv_selection(str(tmp_path / "files" / "export.csv"))
    summary = convert.convert(selection, functools.partial(
        convert.file_loader, str(tmp_path / "files" / "images")), str(tmp_path / "out"), 1,
        ("site-b",), salt="s", workers=1)
    assert summary["written"] == 6 and summary["quarantined"] == 0
    index_of = {records.hash_image_id(f"synth-1-{index:06d}.{ext}", "s"): index
                for index in range(6) for ext in ("png", "dcm")}
    for example in _read_examples(tmp_path / "out"):
        f = example.features.feature
        index, site, patient = list(synth.cohort(1, 6))[
            index_of[f[F.IMAGE_ID].bytes_list.value[0].decode()]]
        image = synth.sample(1, index, site, patient, 96).image
        original = image.astype(float) / np.iinfo(image.dtype).max
        decoded = tf.io.decode_png(f[F.IMAGE].bytes_list.value[0], dtype=tf.uint16).numpy()[..., 0]
        decoded = decoded.astype(float) / np.iinfo(decoded.dtype).max
        # The same pixels: exactly for site-a's PNG, up to the 12 bits site-b's DICOM stores.
        tolerance = 0.0 if site == "site-a" else 0.5 / 4095 + 1e-6
        assert np.abs(original - decoded).max() <= tolerance, (site, index)
