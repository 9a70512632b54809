"""The blessing gate, run through TFX's Evaluator and Pusher executors on models whose predictions
the tests control (tests/gate_models.py): a model failing any one criterion of the study profile
is neither blessed nor pushed, a passing one is; a random-init model fails the demo profile."""
import dataclasses
import json
import os

import gate_models
import numpy as np
import pytest
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import base_beam_executor
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

from cardio import features as F
from cardio.components import baseline, evaluator
from cardio.pipeline import configs

STUDY = configs.PipelineConfig()          # the study's gate profile, sites site-a / site-b
BEAM = list(STUDY.beam_pipeline_args)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("examples"))
    written = gate_models.write_examples(uri)
    examples = standard_artifacts.Examples()
    examples.uri = uri
    examples.split_names = json.dumps([F.TEST, F.EXTERNAL])
    return examples, written


def _artifact(cls, uri):
    artifact = cls()
    artifact.uri = str(uri)
    os.makedirs(artifact.uri, exist_ok=True)
    return artifact


def evaluate(tmp_path, examples, model_uri, config, baseline_uri=None, intervals=False):
    """The pipeline's Evaluator executor, then TFX's Pusher executor; returns what they decided.
    Bootstrap CIs are off unless asked for: they cost several times the evaluation and the gate
    compares point estimates."""
    model = _artifact(standard_artifacts.Model, model_uri)
    lookup = _artifact(standard_artifacts.Model, tmp_path / "lookup")
    baseline.write_pointer(lookup.uri, config.pipeline_name, "cardio-test",
                           {"model_uri": baseline_uri, "model_id": None, "blessing_id": 1}
                           if baseline_uri else None)
    evaluation = _artifact(standard_artifacts.ModelEvaluation, tmp_path / "evaluation")
    blessing = _artifact(standard_artifacts.ModelBlessing, tmp_path / "blessing")
    context = base_beam_executor.BaseBeamExecutor.Context(beam_pipeline_args=BEAM,
                                                          tmp_dir=str(tmp_path / "tmp"))
    evaluator.Executor(context).Do(
        {"examples": [examples], "model": [model], "baseline_model": [lookup]},
        {"evaluation": [evaluation], "blessing": [blessing]},
        {"eval_config": proto_utils.proto_to_json(evaluator.eval_config(config, intervals)),
         "example_splits": json.dumps(evaluator.EVAL_SPLITS)})
    pushed = _artifact(standard_artifacts.PushedModel, tmp_path / "pushed")
    serving = tmp_path / "serving"
    pusher_executor.Executor().Do(
        {"model": [model], "model_blessing": [blessing]}, {"pushed_model": [pushed]},
        {"push_destination": json.dumps({"filesystem": {"base_directory": str(serving)}})})
    return {"blessed": os.path.exists(os.path.join(blessing.uri, "BLESSED")),
            "pushed": pushed.get_int_custom_property("pushed") == 1 and any(serving.glob("*")),
            "failures": evaluator.validation_failures(evaluation.uri),
            "blessing": blessing, "evaluation": evaluation.uri}


def _export(tmp_path, data, weights, sensitivity="full", name="candidate"):
    return gate_models.export_model(str(tmp_path / name), weights, data[1], sensitivity)


def test_a_model_passing_every_criterion_is_blessed_and_pushed(tmp_path, data):
    # Bootstrap intervals off (the e2e run checks them): the gate reads point estimates.
    result = evaluate(tmp_path, data[0], _export(tmp_path, data, gate_models.GOOD), STUDY)
    assert result["failures"] == []
    assert result["blessed"] and result["pushed"]
    slices = evaluator.metrics_with_intervals(evaluator.load(result["evaluation"]))
    assert slices["site=site-b"]["auc"]["value"] >= 0.95


@pytest.mark.parametrize("weights, sensitivity, failing", [
    (gate_models.EXTERNAL_BLIND, "full", "site=site-b: auc (value)"),
    (gate_models.INTERNAL_BLIND, "full", "site=site-a: auc (value)"),
    (gate_models.GOOD, "low", ": sensitivity (value)"),
], ids=["external-auc", "internal-auc", "sensitivity"])
def test_a_model_failing_one_floor_is_neither_blessed_nor_pushed(tmp_path, data, weights,
                                                                 sensitivity, failing):
    result = evaluate(tmp_path, data[0], _export(tmp_path, data, weights, sensitivity), STUDY)
    assert not result["blessed"] and not result["pushed"]
    assert result["failures"] and all(failing in line for line in result["failures"]), \
        result["failures"]


def test_a_regression_against_the_cells_baseline_is_neither_blessed_nor_pushed(tmp_path, data):
    """Above every floor, but worse than the cell's last blessed model: blocked. The same model
    with no baseline (a cell's first run) passes."""
    previous = _export(tmp_path, data, gate_models.GOOD, name="baseline")
    worse = _export(tmp_path, data, (1.0, 1.0, 0.3))
    result = evaluate(tmp_path / "vs-baseline", data[0], worse, STUDY, baseline_uri=previous)
    assert not result["blessed"] and not result["pushed"]
    assert result["failures"] and all("auc (change vs baseline)" in f for f in result["failures"])
    assert result["blessing"].get_string_custom_property("baseline_model") == previous
    assert result["blessing"].get_string_custom_property(baseline.CELL) == "cardio-test"
    first = evaluate(tmp_path / "first-run", data[0], worse, STUDY)
    assert first["blessed"] and first["pushed"], first["failures"]


def test_a_model_the_trainer_refused_to_calibrate_is_neither_blessed_nor_pushed(tmp_path, data):
    """Metrics that pass every floor do not bless a model whose raw logits ranked validation
    backwards: the Trainer's refusal, carried in the export, fails it with its reason."""
    from cardio.trainer import calibration

    model_uri = _export(tmp_path, data, gate_models.GOOD)
    rng = np.random.default_rng(0)
    labels = (rng.random(300) < 0.3).astype(int)
    _, refused = calibration.calibrate(labels, rng.normal(0, 1, 300) - 1.5 * labels, 10)
    path = os.path.join(model_uri, "Format-Serving", F.ASSETS_EXTRA, F.METADATA_FILE)
    with open(path) as f:
        metadata = json.load(f)
    with open(path, "w") as f:
        json.dump({**metadata, "calibration": refused}, f)
    result = evaluate(tmp_path, data[0], model_uri, STUDY)
    assert not result["blessed"] and not result["pushed"]
    assert result["blessing"].get_int_custom_property("blessed") == 0
    assert [f for f in result["failures"] if "calibration refused" in f] == [
        f"calibration refused: {reason}" for reason in refused["refused"]]
    assert "backwards" in result["failures"][0]
    # Its metrics alone passed: every other line would be a TFMA threshold.
    assert len(result["failures"]) == len(refused["refused"])


def test_a_random_init_model_fails_the_demo_profile(tmp_path, data):
    """The demo's MobileNet, untrained, on synthetic radiographs of both sites."""
    from cardio.data import convert
    from cardio.trainer import export, model as model_lib

    raw = tmp_path / "raw"
    convert.write_synthetic(str(raw), 80, seed=3, size=128, span=1, external_sites=("site-b",),
                            workers=1)
    examples = standard_artifacts.Examples()
    examples.uri = str(raw / "span-1")
    for split in (F.TEST, F.EXTERNAL):   # ExampleGen's layout: Split-<name>
        os.rename(raw / "span-1" / split, raw / "span-1" / f"Split-{split}")
    examples.split_names = json.dumps([F.TEST, F.EXTERNAL])
    config = configs.demo_config(None)
    model = model_lib.build_model("mobilenet_025", 32, "random")
    export.export(model, str(tmp_path / "random" / "Format-Serving"), 32, 0.5)
    result = evaluate(tmp_path, examples, str(tmp_path / "random"), config)
    assert not result["blessed"] and not result["pushed"]
    # An untrained network ranks no better than chance on either site.
    assert any(f.startswith("site=site-a: auc (value)") for f in result["failures"])
    assert any(f.startswith("site=site-b: auc (value)") for f in result["failures"])


def test_gate_profiles_are_named_and_the_study_is_the_default():
    assert configs.PipelineConfig().gate is configs.GATE_PROFILES["study"]
    assert configs.GATE_PROFILES["study"].external_auc_min == 0.85
    assert configs.demo_config(None).gate is configs.GATE_PROFILES["demo"]
    line = evaluator.describe_gate(configs.GATE_PROFILES["demo"])
    assert "'demo'" in line and "point estimates" in line
    assert dataclasses.asdict(configs.GATE_PROFILES["demo"])["auc_regression_tolerance"] > 0


def test_the_gates_auc_is_exact_on_saturated_scores(tmp_path, data):
    """A model whose raw probabilities are saturated (logits -24..-4: most below 1e-4, as the
    demo's uncalibrated models gave). Exported as the Trainer exports it, with Platt scaling
    fitted on its logits, the AUC the gate reads (TFMA, the Evaluator's configuration) matches
    the exact rank AUC; served raw, TFMA's evenly spaced thresholds cannot rank it. The Trainer's
    Keras AUC (thresholds evenly spaced in logit) is exact on the raw scores."""
    import tf_keras as keras
    from sklearn.metrics import roc_auc_score

    from cardio.evaluation import statistics as S
    from cardio.trainer import calibration, export

    model = gate_models.build(gate_models.GOOD, gain=20.0, offset=-14.0)
    logits, labels = [], []
    for images, split_labels in data[1].values():
        scores = gate_models.probabilities(model, images).astype(np.float64)
        logits.append(np.log(scores) - np.log1p(-scores))
        labels.append(split_labels)
    platt = calibration.fit_platt(np.concatenate(labels), np.concatenate(logits))
    readings = {}
    for name, scaling in (("calibrated", platt), ("raw", None)):
        export.export(model, str(tmp_path / name / "Format-Serving"), gate_models.SIZE, 0.5,
                      platt=scaling)
        result = evaluate(tmp_path / name, data[0], str(tmp_path / name), STUDY)
        readings[name] = evaluator.metrics_with_intervals(evaluator.load(result["evaluation"]))
    for split, site in gate_models.SITES.items():
        images, split_labels = data[1][split]
        scores = gate_models.probabilities(model, images)
        assert np.median(scores) < 1e-4
        exact = roc_auc_score(split_labels, scores)
        assert exact > 0.9
        gate_reads = readings["calibrated"][f"site={site}"]["auc"]["value"]
        assert gate_reads == pytest.approx(exact, abs=1e-3), site
        assert exact - readings["raw"][f"site={site}"]["auc"]["value"] > 0.05, site
        trainers = keras.metrics.AUC(thresholds=S.AUC_THRESHOLDS)
        trainers.update_state(split_labels, scores)
        assert float(trainers.result()) == pytest.approx(exact, abs=1e-3), site
        evenly = keras.metrics.AUC(num_thresholds=1000)   # the Trainer's metric before
        evenly.update_state(split_labels, scores)
        assert exact - float(evenly.result()) > 0.05, site
