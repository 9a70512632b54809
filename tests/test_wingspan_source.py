"""Wingspan as a real external site (cardio.data.sources.wingspan, `cardio data csv --wingspan`):
its rules on a small table, and the real 143 radiographs converted beside NIH rows."""
import csv
import glob
import json

import tensorflow as tf
from click.testing import CliRunner
from conftest import shared_path

from cardio import features as F
from cardio.cli import main
from cardio.data.sources import wingspan


def test_the_rules(tmp_path):
    rows = ["path,label,ctr,ctr_source,site,view",
            "a.png,1,0.55,masks,wingspan,",          # no view: taken as PA, counted
            "b.png,0,0.45,ground_truth,wingspan,",
            "c.png,1,0.62,ground_truth,wingspan,AP",  # a recorded AP view: excluded
            "d.png,0,0.58,ground_truth,wingspan,",    # label disagrees with the CTR: quarantined
            "e.png,1,,ground_truth,wingspan,"]        # no CTR: quarantined
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    selection, assumed_pa = wingspan.select(str(tmp_path / "labels.csv"))
    assert [(c.path, c.label, c.view, c.site, c.patient_id) for c in selection.candidates] == [
        ("a.png", 1, "PA", "wingspan", "a"), ("b.png", 0, "PA", "wingspan", "b")]
    assert assumed_pa == 2 and selection.excluded == {"not PA projection": 1}
    assert [(s, image) for s, image, _ in selection.quarantined] == [
        ("labels.csv:5", "d.png"), ("labels.csv:6", "e.png")]
    assert "disagrees with ctr 0.58" in selection.quarantined[0][2]


def test_the_real_set_converts_as_the_external_split_beside_nih(tmp_path, monkeypatch):
    """Twelve NIH rows and the 143 Wingspan radiographs in one span: Wingspan is all of the
    external split (100 CTR > 0.5, 43 not), PA by assumption, said on stderr and in the summary;
    no Wingspan image reaches train, validation or test."""
    data = shared_path("data", "wingspan-ctr-512")
    nih = shared_path("data", "nih-cxr14-128")
    with open(nih / "labels.csv") as f:
        reader = csv.DictReader(f)
        nih_rows = [r for r in reader if r["view"] == "PA"][:12]
    with open(tmp_path / "nih.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(nih_rows[0]))
        writer.writeheader()
        writer.writerows(nih_rows)
    monkeypatch.setenv("CARDIO_PATIENT_SALT", "test-salt")
    result = CliRunner().invoke(main, [
        "data", "csv", "--csv", str(tmp_path / "nih.csv"), "--images", str(nih / "images"),
        "--wingspan", str(data), "--external-site", "wingspan", "--out", str(tmp_path / "out"),
        "--id-map", str(tmp_path / "ids.csv")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["splits"]["external"] == {"normal": 43, "cardiomegaly": 100}
    assert summary["quarantined"] == 0 and summary["written"] == 12 + 143
    assert "treated as PA" in summary["notes"][0] and "143 radiograph" in summary["notes"][0]
    assert "treated as PA" in result.stderr
    sites, ratios = {}, []
    for path in glob.glob(str(tmp_path / "out" / "span-1" / "*" / "*.tfrecord.gz")):
        split = path.split("/")[-2]
        for raw in tf.data.TFRecordDataset(path, compression_type="GZIP"):
            f = tf.train.Example.FromString(raw.numpy()).features.feature
            key = (split, f[F.SITE].bytes_list.value[0].decode(),
                   f[F.VIEW].bytes_list.value[0].decode())
            sites[key] = sites.get(key, 0) + 1
            if key[1] == "wingspan":   # its measured CTR travels as ground truth, as labels.csv has it
                ratio = f[F.CTR].float_list.value[0]
                assert f[F.LABEL].int64_list.value[0] == int(ratio > 0.5)
                ratios.append(round(ratio, 4))
            else:
                assert F.CTR not in f
    assert sites[("external", "wingspan", "PA")] == 143
    with open(data / "labels.csv") as f:
        assert sorted(ratios) == sorted(round(float(r["ctr"]), 4) for r in csv.DictReader(f))
    assert all(site == "nih" for (split, site, _) in sites if split != "external")
