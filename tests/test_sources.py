"""PadChest and OpenI cohort selection, on small fixtures and on the real label files."""
import gzip
import io
import tarfile

import pandas as pd
from conftest import shared_path

from cardio.data import convert, records
from cardio.data.sources import openi, padchest

PADCHEST_HEADER = ("ImageID,ImageDir,PatientID,PatientSex_DICOM,PatientBirth,StudyDate_DICOM,"
                   "Projection,MethodLabel,Labels")


def test_padchest_rules(tmp_path):
    rows = [
        "n.png,0,P1,F,1950.0,20150101,PA,Physician,['normal']",
        "c.png,0,P2,M,1940.0,20150101,PA,Physician,\"['cardiomegaly', 'aortic elongation']\"",
        "l.png,0,P3,M,1940.0,20150101,L,Physician,['normal']",
        "r.png,0,P4,M,1940.0,20150101,PA,RNN_model,['normal']",
        "p.png,0,P5,M,1940.0,20150101,PA,Physician,\"['cardiomegaly', 'pacemaker']\"",
        "o.png,0,P6,M,1940.0,20150101,PA,Physician,\"['normal', 'scoliosis']\"",
        "x.png,0,P7,M,1940.0,20150101,PA,Physician,",
        "u.png,0,P8,,,20150101,PA,Physician,['normal']",
        "q.png,0,P9,M,1940.0,20150101,PA,Physician,\"['normal'\"",
        "d.png,0,P10,M,1940.0,20150101,PA,Physician,\"['cardiomegaly', 'dai']\"",
    ]
    path = tmp_path / "labels.csv"
    path.write_text("\n".join([PADCHEST_HEADER] + rows) + "\n")
    selection = padchest.select(str(path))
    assert [(c.image_id, c.label) for c in selection.candidates] == [("n", 0), ("c", 1), ("u", 0)]
    assert selection.candidates[0].age == 65 and selection.candidates[0].sex == "F"
    assert selection.candidates[2].sex == "unknown" and selection.candidates[2].age is None
    assert selection.candidates[0].path == "0/n.png"
    assert dict(selection.excluded) == {
        "not PA projection": 1, "labels not from manual report labelling": 1,
        "external object": 2, "neither normal nor cardiomegaly": 1}
    # Unreadable label lists are quarantined with the reason, not hidden among the exclusions.
    assert [(image, reason.split(":")[0]) for _, image, reason in selection.quarantined] == [
        ("x", "labels unparseable"), ("q", "labels unparseable")]
    # Each names the file's line, so a quarantined image can be found in the export.
    assert [c.source for c in selection.candidates] == [
        "labels.csv:2", "labels.csv:3", "labels.csv:9"]
    assert [source for source, _, _ in selection.quarantined] == ["labels.csv:8", "labels.csv:10"]


def _report(uid, majors, images):
    mesh = "".join(f"<major>{m}</major>" for m in majors)
    parents = "".join(f'<parentImage id="{i}"/>' for i in images)
    return f'<eCitation><uId id="{uid}"/><MeSH>{mesh}</MeSH>{parents}</eCitation>'.encode()


def test_openi_rules(tmp_path):
    archive = tmp_path / "reports.tgz"
    reports = {"1.xml": _report("CXR1", ["normal"], ["I1", "I2"]),
               "2.xml": _report("CXR2", ["Cardiomegaly/mild", "Opacity/lung"], ["I3"]),
               "3.xml": _report("CXR3", ["Opacity/lung"], ["I4"]),
               "4.xml": _report("CXR4", ["normal"], []),
               "5.xml": _report("CXR5", ["normal"], ["I5", "I6"]),
               "6.xml": b"<eCitation><uId id='CXR6'/>"}
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in reports.items():
            info = tarfile.TarInfo(f"ecgen-radiology/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    meta = tmp_path / "meta.csv.gz"
    with gzip.open(meta, "wt") as f:
        f.write("imageid,View Position\nI1,PA\nI2,LL\nI3,PA\nI4,PA\nI5,\n")
    selection = openi.select(str(archive), str(meta))
    assert [(c.image_id, c.label, c.patient_id) for c in selection.candidates] == [
        ("I1", 0, "CXR1"), ("I3", 1, "CXR2")]
    assert all(c.sex == "unknown" and c.age is None for c in selection.candidates)
    assert dict(selection.excluded) == {"not PA projection": 1, "neither normal nor cardiomegaly": 1,
                                        "report without images": 1, "view position missing": 1,
                                        "no DICOM metadata": 1}
    assert [(image, reason.split(":")[0]) for _, image, reason in selection.quarantined] == [
        ("ecgen-radiology/6.xml", "report unparseable")]


def test_padchest_exclusion_list_matches_the_real_vocabulary():
    path = shared_path("data", "metadata", "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz")
    vocabulary = set()
    for text in pd.read_csv(path, usecols=["Labels"], dtype=str, keep_default_na=False).Labels:
        try:
            vocabulary.update(padchest.parse_labels(text))
        except (ValueError, SyntaxError):
            pass
    # Every listed label exists in the real file (no typo can silently exclude nothing) ...
    assert padchest.EXTERNAL_OBJECT_LABELS <= vocabulary
    # ... every label the keywords find is listed, and the listed labels no keyword finds are
    # exactly the reviewed abbreviations (dai: implantable defibrillator).
    derived = {label for label in vocabulary if padchest.mentions_external_object(label)}
    assert derived <= padchest.EXTERNAL_OBJECT_LABELS
    assert padchest.EXTERNAL_OBJECT_LABELS - derived == {"dai"}
    assert "heart valve calcified" not in padchest.EXTERNAL_OBJECT_LABELS


def test_padchest_real_metadata_selection():
    path = shared_path("data", "metadata", "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz")
    selection = padchest.select(str(path))
    summary = convert.dry_run_summary(selection, ("openi",), seed=0, salt="test-salt")
    # "dai" (implantable defibrillator) excludes 33 more images the keywords missed: 11 with
    # cardiomegaly, 22 that were "neither normal nor cardiomegaly" anyway.
    assert summary["classes"] == {"normal": 8708, "cardiomegaly": 1770 - 11}
    assert summary["excluded"]["external object"] == 1530 + 33
    # The file's 103 unreadable label lists are all on rows the cohort rules exclude first.
    assert summary["quarantined"] == 0
    assert (sum(summary["excluded"].values()) + summary["selected"] + summary["quarantined"]
            == 160861)
    # Splits are drawn per patient from the hash alone: about 20% of images are in test.
    test = summary["splits"]["test"]
    assert 0.17 < (test["normal"] + test["cardiomegaly"]) / summary["selected"] < 0.23
    assert summary["splits"]["external"] == {"normal": 0, "cardiomegaly": 0}


def test_openi_real_metadata_selection():
    reports = shared_path("data", "metadata", "NLMCXR_reports.tgz")
    meta = shared_path("data", "metadata", "nlmcxr_dicom_metadata.csv.gz")
    selection = openi.select(str(reports), str(meta))
    summary = convert.dry_run_summary(selection, (openi.SITE,), seed=0, salt="test-salt")
    assert summary["classes"] == {"normal": 1445, "cardiomegaly": 266}
    assert summary["excluded"]["view position missing"] == 1093
    assert summary["splits"]["external"] == {"normal": 1445, "cardiomegaly": 266}


def _tfrecord_ids(out):
    import glob

    import tensorflow as tf
    ids = {}
    for path in glob.glob(str(out / "span-1" / "*" / "*.tfrecord.gz")):
        split = path.split("/")[-2]
        for raw in tf.data.TFRecordDataset(path, compression_type="GZIP"):
            example = tf.train.Example.FromString(raw.numpy())
            ids[example.features.feature["image_id"].bytes_list.value[0].decode()] = split
    return ids


def test_padchest_and_openi_convert_images_through_the_cli(tmp_path, monkeypatch):
    import json

    import numpy as np
    from click.testing import CliRunner
    from PIL import Image

    from cardio.cli import main

    monkeypatch.setenv("CARDIO_PATIENT_SALT", "test-salt")
    pixels = (np.tile(np.linspace(0, 1, 32), (32, 1)) * 65535).astype(np.uint16)
    (tmp_path / "pc" / "0").mkdir(parents=True)
    Image.fromarray(pixels).save(tmp_path / "pc" / "0" / "n.png")
    (tmp_path / "pc" / "0" / "c.png").write_bytes(b"\x89PNG truncated")
    labels = tmp_path / "labels.csv"
    labels.write_text(PADCHEST_HEADER + "\n"
                      "n.png,0,P1,F,1950.0,20150101,PA,Physician,['normal']\n"
                      "c.png,0,P2,M,1940.0,20150101,PA,Physician,['cardiomegaly']\n")
    result = CliRunner().invoke(main, ["data", "padchest", "--labels", str(labels), "--images",
                                       str(tmp_path / "pc"), "--out", str(tmp_path / "out-pc"),
                                       "--quarantine-limit", "0.5"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["written"] == 1 and summary["quarantine_reasons"] == {"unreadable image": 1}
    assert set(_tfrecord_ids(tmp_path / "out-pc")) == {records.hash_image_id("n", "test-salt")}
    # The mapping back to source names stays beside the source's metadata, not in the span.
    id_map = (tmp_path / "labels.image-ids.csv").read_text()
    assert f"{records.hash_image_id('n', 'test-salt')},n" in id_map
    # Over the default 5% limit the same run fails, says where the report is, and leaves no span.
    result = CliRunner().invoke(main, ["data", "padchest", "--labels", str(labels), "--images",
                                       str(tmp_path / "pc"), "--out", str(tmp_path / "out-pc2")])
    assert result.exit_code != 0 and "failed-span-1/quarantine.csv" in result.output
    assert sorted(p.name for p in (tmp_path / "out-pc2").iterdir()) == ["failed-span-1"]
    assert "c.png" not in (tmp_path / "out-pc2" / "failed-span-1" / "quarantine.csv").read_text()

    archive = tmp_path / "reports.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        data = _report("CXR9", ["Cardiomegaly/severe"], ["I9"])
        info = tarfile.TarInfo("ecgen-radiology/9.xml")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    meta = tmp_path / "meta.csv"
    meta.write_text("imageid,View Position\nI9,PA\n")
    (tmp_path / "oi").mkdir()
    Image.fromarray((pixels // 257).astype(np.uint8)).save(tmp_path / "oi" / "I9.png")
    result = CliRunner().invoke(main, ["data", "openi", "--reports", str(archive),
                                       "--dicom-metadata", str(meta), "--images",
                                       str(tmp_path / "oi"), "--out", str(tmp_path / "out-oi")])
    assert result.exit_code == 0, result.output
    assert _tfrecord_ids(tmp_path / "out-oi") == {
        records.hash_image_id("I9", "test-salt"): "external"}


def test_converters_require_a_salt(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cardio.cli import main

    monkeypatch.delenv("CARDIO_PATIENT_SALT", raising=False)
    labels = tmp_path / "labels.csv"
    labels.write_text(PADCHEST_HEADER + "\n")
    result = CliRunner().invoke(main, ["data", "padchest", "--labels", str(labels), "--dry-run"])
    assert result.exit_code == 2 and "CARDIO_PATIENT_SALT" in result.output
