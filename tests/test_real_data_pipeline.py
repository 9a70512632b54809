"""Real radiographs through the whole pipeline: a few hundred NIH ChestX-ray14 images (128 px, real
sex, age and view) converted with `cardio data csv` and run with `cardio pipeline run` from the
shipped NIH configuration, shortened (one grid cell, two epochs, no bootstrap). The full NIH run
(4,386 images, both weightings) is a benchmark: `python -m benchmarks nih`."""
from __future__ import annotations

import collections
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, SHARED, shared_path

NORMALS = 100          # other patients' normal PA images, beside the cardiomegaly patients' images
EPOCHS = 2


def _subset(labels: Path, out: Path) -> dict:
    """Every image of the patients with cardiomegaly (115 PA cardiomegaly images among them) and
    the first NORMALS normal PA images of the others. Their AP rows stay in, so the converter's
    view filter is exercised too."""
    with open(labels) as f:
        rows = list(csv.DictReader(f))
    positive_patients = {r["patient_id"] for r in rows if r["label"] == "1"}
    kept, normals = [], 0
    for row in rows:   # the file's order: deterministic
        if row["patient_id"] in positive_patients:
            kept.append(row)
        elif row["view"] == "PA" and normals < NORMALS:
            kept.append(row)
            normals += 1
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    return {"rows": len(kept), "pa": sum(r["view"] == "PA" for r in kept),
            "pa_positives": sum(r["view"] == "PA" and r["label"] == "1" for r in kept)}


def _cardio(*args, env=None, cwd=REPO) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "cardio", *args], capture_output=True,
                            text=True, cwd=cwd, env=env, timeout=1800)
    if result.returncode != 0:
        pytest.fail(f"cardio {args[0]} {args[1]} failed ({result.returncode}):\n"
                    f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


@pytest.fixture(scope="module")
def nih_run(tmp_path_factory):
    nih = shared_path("data", "nih-cxr14-128")
    work = tmp_path_factory.mktemp("nih")
    selection = _subset(nih / "labels.csv", work / "labels.csv")
    env = {**os.environ, "CARDIO_PATIENT_SALT": "test-salt"}
    converted = _cardio("data", "csv", "--csv", str(work / "labels.csv"),
                        "--images", str(nih / "images"), "--out", str(work / "data"),
                        "--id-map", str(work / "id-map.csv"), env=env)
    conversion = json.loads(converted.stdout.strip().splitlines()[-1])

    config = yaml.safe_load((REPO / "pipeline/config_files/nih-cxr14-128.yaml").read_text())
    config.update(grid=[{"backbone": "mobilenet_025", "weighting": "50-50"}], epochs=EPOCHS,
                  confidence_intervals=False, data_root=str(work / "data"),
                  workdir=str(work / "run"), deterministic=True,
                  weights=str(SHARED / "weights") if (SHARED / "weights").exists() else "random")
    (work / "nih.yaml").write_text(yaml.safe_dump(config))
    ran = _cardio("pipeline", "run", "--config", str(work / "nih.yaml"), env=env)
    summary = json.loads(ran.stdout.strip().splitlines()[-1])
    return {"work": work, "selection": selection, "conversion": conversion, "stdout": ran.stdout,
            "summary": summary}


def _latest(store, node: str, key: str):
    from cardio.pipeline import outputs
    return outputs.latest_output(store, "cardiomegaly-nih", node, key)


@pytest.fixture(scope="module")
def store(nih_run):
    from cardio.pipeline import local_runner, outputs
    return outputs.open_store(local_runner.metadata_path(str(nih_run["work"] / "run" / "pipeline")))


def test_the_converter_keeps_the_pa_cohort_and_quarantines_nothing(nih_run):
    conversion, selection = nih_run["conversion"], nih_run["selection"]
    assert conversion["written"] == selection["pa"] and conversion["quarantined"] == 0
    assert conversion["excluded"] == {"not PA projection": selection["rows"] - selection["pa"]}
    positives = sum(split["cardiomegaly"] for split in conversion["splits"].values())
    assert positives == selection["pa_positives"] == 115
    assert conversion["splits"]["test"]["cardiomegaly"] > 0


def test_real_radiographs_pass_validation(nih_run, store):
    """ExampleValidator finds no anomaly against the schema with the file's site and view, and
    AnomalyGate lets the run on."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    anomalies = _latest(store, "ExampleValidator", "anomalies")
    reports = sorted(Path(anomalies.uri).glob("Split-*/SchemaDiff.pb"))
    assert {p.parent.name for p in reports} == {"Split-train", "Split-validation", "Split-test"}
    for path in reports:
        found = anomalies_pb2.Anomalies.FromString(path.read_bytes())
        assert len(found.anomaly_info) == 0, (path, dict(found.anomaly_info))
        assert not found.HasField("dataset_anomaly_info"), (path, found.dataset_anomaly_info)
    # The gate that stops a run on anomalies let it through to training.
    from ml_metadata.proto import metadata_store_pb2
    from cardio.pipeline import outputs
    gate = outputs.node_executions(store, "cardiomegaly-nih", "AnomalyGate")[-1]
    assert gate.last_known_state == metadata_store_pb2.Execution.COMPLETE


def test_the_model_is_evaluated_per_site_sex_age_band_and_view(nih_run, store):
    import tensorflow_model_analysis as tfma

    from cardio.components import evaluator

    cell = "cardio-mobilenet-025-50-50"
    evaluation = _latest(store, f"Evaluator.{cell}", "evaluation")
    table = evaluator.metrics_with_intervals(tfma.load_eval_result(evaluation.uri))
    by_feature = collections.defaultdict(dict)   # "sex=F, site=nih" -> by_feature["sex"]["F"]
    for name, row in table.items():
        values = dict(part.split("=", 1) for part in name.split(", "))
        assert values.pop("site") == "nih", name
        feature, value = next(iter(values.items()), ("site", "nih"))
        by_feature[feature][value] = row
    test = nih_run["conversion"]["splits"]["test"]
    n_test = test["normal"] + test["cardiomegaly"]
    assert set(by_feature) == {"site", "sex", "age_band", "view"}
    assert set(by_feature["sex"]) == {"F", "M"} and set(by_feature["view"]) == {"PA"}
    assert len(by_feature["age_band"]) >= 2
    for feature, rows in by_feature.items():   # every test image in one slice of each feature
        assert sum(row["example_count"]["value"] for row in rows.values()) == n_test, feature
    assert 0.0 <= by_feature["site"]["nih"]["auc"]["value"] <= 1.0
    result = nih_run["summary"]["models"][cell]
    assert result["model_card"] and os.path.exists(result["model_card"])
    # One site, no external site: the gate judged internal criteria only and said so.
    assert "NO EXTERNAL SITE" in nih_run["stdout"]


def test_the_crop_ran_on_real_radiographs_and_its_qc_is_counted(nih_run):
    qc = nih_run["summary"]["crop_qc"]
    assert sum(split.get("images", 0) for split in qc.values()) == nih_run["conversion"]["written"]
    flagged = sum(split.get("flagged", 0) for split in qc.values())
    assert flagged <= 0.1 * nih_run["conversion"]["written"]   # the U-Net finds lungs at 128 px
