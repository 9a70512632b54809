"""The bad-input corpus: every kind of broken or unusual input a PACS export holds, each
quarantined with its reason or accepted as documented (docs/data.md, "Bad inputs"), and every
reason counted in the conversion summary. One conversion of one export covers them all."""
import csv
import functools
import glob
import io
import json
import os

import numpy as np
import pydicom
import pytest
import tensorflow as tf
from PIL import Image
from pydicom import uid

from cardio import features as F
from cardio.data import convert, records
from cardio.imaging import dicom

SALT = "corpus"
RADIOGRAPH = np.add.outer(np.arange(64), np.arange(48)).astype(np.uint8) * 2  # 64x48, bright bottom right


def _dicom(path, **changes):
    dicom.write_dicom(str(path), RADIOGRAPH.astype(np.uint16) * 16, bits=12)
    ds = pydicom.dcmread(str(path))
    for key, value in changes.items():
        if value is None:
            del ds[key]
        elif key == "TransferSyntaxUID":
            ds.file_meta.TransferSyntaxUID = value
        else:
            setattr(ds, key, value)
    ds.save_as(str(path))


def _images(root):
    """{file name: expected outcome}: a quarantine reason, or "accepted"."""
    png = io.BytesIO()
    Image.fromarray(RADIOGRAPH).save(png, format="PNG")
    (root / "good.png").write_bytes(png.getvalue())
    (root / "truncated.png").write_bytes(png.getvalue()[:60])
    (root / "zero.png").write_bytes(b"")
    (root / "text.png").write_text("not an image")
    Image.new("L", (1, 1)).save(root / "one_pixel.png")
    Image.fromarray(np.stack([RADIOGRAPH] * 3, -1)).save(root / "rgb.png")
    Image.fromarray(np.stack([RADIOGRAPH] * 4, -1)).save(root / "rgba.png")
    Image.fromarray(RADIOGRAPH).convert("P").save(root / "palette.png")
    Image.fromarray((RADIOGRAPH.astype(np.uint16) // 100 + 30000)).save(root / "tiny_range16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise on display
    Image.fromarray(RADIOGRAPH).save(root / "exif_rotated.jpg", exif=exif, quality=95)
    Image.fromarray(RADIOGRAPH).convert("CMYK").save(root / "cmyk.jpg", quality=95)
    _dicom(root / "mono2.dcm")
    _dicom(root / "dicom_named.png")
    dicom.write_dicom(str(root / "mono1.dcm"), 4095 - RADIOGRAPH.astype(np.uint16) * 16,
                      photometric="MONOCHROME1", bits=12)
    _dicom(root / "no_pixels.dcm", PixelData=None)
    _dicom(root / "unknown_syntax.dcm", TransferSyntaxUID=uid.UID("1.2.3.4.5.6.7"))
    _dicom(root / "multiframe.dcm", NumberOfFrames=2, Rows=32)
    _dicom(root / "rgb.dcm", PhotometricInterpretation="RGB")
    os.symlink("loop_b.png", root / "loop_a.png")
    os.symlink("loop_a.png", root / "loop_b.png")
    Image.fromarray(RADIOGRAPH).save(root.parent / "outside.png")
    return {
        "good.png": "accepted", "truncated.png": "unreadable image", "zero.png": "unreadable image",
        "text.png": "unreadable image", "one_pixel.png": "image too small",
        "rgb.png": "accepted", "rgba.png": "accepted", "palette.png": "accepted",
        "tiny_range16.png": "accepted", "exif_rotated.jpg": "accepted", "cmyk.jpg": "accepted",
        "mono2.dcm": "accepted", "dicom_named.png": "accepted", "mono1.dcm": "accepted",
        "no_pixels.dcm": "DICOM without pixel data",
        "unknown_syntax.dcm": "undecodable DICOM pixel data",
        "multiframe.dcm": "multi-frame DICOM", "rgb.dcm": "not a greyscale DICOM",
        "loop_a.png": "broken or looping symbolic link", "missing.png": "missing file",
        "../outside.png": "path outside the images root"}


# Rows whose metadata is wrong: (path, label, patient, sex, age, site, view) -> expected outcome.
ROWS = [
    ("neg_age.png", "0", "R1", "F", "-3", "site-a", "PA", "bad age"),
    ("nan_age.png", "0", "R2", "F", "old", "site-a", "PA", "bad age"),
    ("old_age.png", "0", "R3", "F", "150", "site-a", "PA", "bad age"),
    ("label2.png", "2", "R4", "F", "50", "site-a", "PA", "bad label"),
    ("good.png", "0", "R5", "F", "50", "site-a", "PA", "duplicate image row"),
    ("sex_a.png", "0", "R6", "F", "50", "site-a", "PA", "conflicting sex"),
    ("sex_b.png", "1", "R6", "M", "50", "site-a", "PA", "conflicting sex"),
    ("no_site.png", "0", "R7", "F", "50", "", "PA", "missing site"),
    ("female.png", "1", "R8", "Female", "70", "site-a", "PA", "accepted"),
    ("lateral.png", "0", "R9", "M", "40", "site-a", "LL", "excluded"),
    # DICOM Age Strings, as a PACS export carries them.
    ("dicom_years.png", "0", "R10", "M", "045Y", "site-a", "PA", "accepted"),
    ("dicom_months.png", "0", "R11", "F", "030M", "site-a", "PA", "accepted"),
    ("dicom_days.png", "0", "R12", "F", "400D", "site-a", "PA", "accepted"),
    ("dicom_bad.png", "0", "R13", "F", "045X", "site-a", "PA", "bad age"),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    images = root / "images"
    images.mkdir()
    expected = _images(images)
    for path, *_ in ROWS:
        if not (images / path).exists():
            Image.fromarray(RADIOGRAPH).save(images / path)
    with open(root / "export.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "patient_id", "sex", "age", "site", "view"])
        for i, path in enumerate(expected):
            writer.writerow([path, i % 2, f"P{i}", "M", 60, "site-a", "PA"])
        writer.writerows(row[:7] for row in ROWS)
    selection = convert.csv_selection(str(root / "export.csv"))
    summary = convert.convert(selection, functools.partial(convert.file_loader, str(images)),
                              str(root / "out"), 1, ("site-b",), salt=SALT, workers=1,
                              quarantine_limit=1.0)
    examples = {}
    for path in glob.glob(str(root / "out" / "span-1" / "*" / "*.tfrecord.gz")):
        for raw in tf.data.TFRecordDataset(path, compression_type="GZIP"):
            example = tf.train.Example.FromString(raw.numpy())
            examples[example.features.feature[F.IMAGE_ID].bytes_list.value[0].decode()] = example
    with open(root / "out" / "span-1" / "quarantine.csv", newline="") as f:
        quarantined = list(csv.DictReader(f))
    return dict(root=root, expected=expected, summary=summary, examples=examples,
                quarantined=quarantined)


def test_every_bad_file_is_quarantined_with_its_reason_or_accepted(corpus):
    rows = {row["image_id"]: row for row in corpus["quarantined"]}
    for line, (path, outcome) in enumerate(corpus["expected"].items(), start=2):
        image_id = records.hash_image_id(path, SALT)
        if image_id in corpus["examples"]:
            assert outcome == "accepted", path
            continue
        row = rows[image_id]
        assert row["reason"].split(":")[0] == outcome, path
        # The CSV line it was listed on, and a reason a person reads (no Python object repr).
        assert row["source"] == f"export.csv:{line}", path
        assert "object at 0x" not in row["reason"] and "BytesIO" not in row["reason"], row
    text = {records.hash_image_id(p, SALT): p for p in ("text.png", "zero.png")}
    for image_id in text:
        assert "not a PNG, JPEG or DICOM file" in rows[image_id]["reason"]


def test_dicom_age_strings_become_years(corpus):
    def age(path):
        return corpus["examples"][records.hash_image_id(path, SALT)].features.feature[
            F.AGE].int64_list.value[0]

    assert (age("dicom_years.png"), age("dicom_months.png"), age("dicom_days.png")) == (45, 2, 1)
    assert convert.parse_age("003W") == 0 and convert.parse_age(" 045y ") == 45
    with pytest.raises(ValueError, match="DICOM age string"):
        convert.parse_age("45 years")


def test_every_bad_row_is_quarantined_with_its_reason(corpus):
    by_line = {int(row["source"].split(":")[1]): row["reason"].split(":")[0]
               for row in corpus["quarantined"] if row["source"].startswith("export.csv:")}
    first = len(corpus["expected"]) + 2
    for line, (path, *_, outcome) in enumerate(ROWS, start=first):
        if outcome in ("accepted", "excluded"):
            assert line not in by_line, path
        else:
            assert by_line.get(line) == outcome, path
    female = corpus["examples"][records.hash_image_id("female.png", SALT)]
    assert female.features.feature[F.SEX].bytes_list.value[0] == b"F"
    assert corpus["summary"]["excluded"] == {"not PA projection": 1}


def test_the_summary_counts_every_reason(corpus):
    expected = [o for o in corpus["expected"].values() if o != "accepted"]
    expected += [o for *_, o in ROWS if o not in ("accepted", "excluded")]
    counts = {reason: expected.count(reason) for reason in set(expected)}
    assert corpus["summary"]["quarantine_reasons"] == counts
    assert corpus["summary"]["quarantined"] == len(expected) == len(corpus["quarantined"])
    written = json.loads((corpus["root"] / "out" / "span-1" / "summary.json").read_text())
    assert written["quarantine_reasons"] == counts
    # No source file name reaches the quarantine report or the examples.
    report = (corpus["root"] / "out" / "span-1" / "quarantine.csv").read_text()
    assert not [name for name in corpus["expected"] if os.path.basename(name) in report]


def test_accepted_oddities_become_the_documented_pixels(corpus):
    def pixels(path):
        example = corpus["examples"][records.hash_image_id(path, SALT)]
        return tf.io.decode_png(example.features.feature[F.IMAGE].bytes_list.value[0],
                                dtype=tf.uint16).numpy()[..., 0]

    good = pixels("good.png")
    for path in ("rgb.png", "rgba.png", "palette.png"):   # greyscale kept, alpha ignored
        np.testing.assert_array_equal(pixels(path), good, err_msg=path)
    assert pixels("exif_rotated.jpg").shape == good.shape[::-1]   # shown upright, as viewers do
    assert np.abs(pixels("cmyk.jpg").astype(int) - good).mean() < 8
    tiny = pixels("tiny_range16.png")   # a narrow 16-bit range is kept, not stretched
    np.testing.assert_array_equal(tiny, RADIOGRAPH.astype(np.uint16) // 100 + 30000)
    mono1, mono2 = pixels("mono1.dcm"), pixels("mono2.dcm")
    np.testing.assert_array_equal(mono1, mono2)
    np.testing.assert_array_equal(pixels("dicom_named.png"), mono2)


def test_a_csv_that_cannot_be_read_fails_naming_the_file(tmp_path):
    (tmp_path / "latin1.csv").write_bytes("path,label,patient_id\nJosé.png,0,P1\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.csv: not UTF-8 text \(byte \d+\)"):
        convert.csv_selection(str(tmp_path / "latin1.csv"))
    (tmp_path / "cols.csv").write_text("path,label\na.png,0\n")
    with pytest.raises(ValueError, match=r"cols.csv: missing column\(s\) \['patient_id'\]"):
        convert.csv_selection(str(tmp_path / "cols.csv"))
