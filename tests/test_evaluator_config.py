"""The EvalConfig: per-site slices only, and the gate profile's thresholds on the site slices."""
import dataclasses

import pytest

from cardio.components import evaluator
from cardio.evaluation import statistics as S
from cardio.pipeline import configs


def _thresholds(eval_config, metric):
    config = next(m for spec in eval_config.metrics_specs for m in spec.metrics
                  if m.class_name == metric)
    return {t.slicing_specs[0].feature_values["site"]:
            t.threshold.value_threshold.lower_bound.value for t in config.per_slice_thresholds}


def test_every_slice_is_keyed_by_site():
    eval_config = evaluator.eval_config(configs.PipelineConfig())
    assert eval_config.slicing_specs
    for spec in eval_config.slicing_specs:
        assert "site" in spec.feature_keys


def test_study_gate_thresholds_per_site():
    config = configs.PipelineConfig()
    eval_config = evaluator.eval_config(config)
    assert _thresholds(eval_config, "AUC") == {"site-a": 0.85, "site-b": 0.85}
    assert _thresholds(eval_config, "Recall") == {"site-a": 0.7, "site-b": 0.7}


def test_sensitivity_is_scored_on_the_operating_threshold_label():
    eval_config = evaluator.eval_config(configs.PipelineConfig())
    by_output = {spec.output_names[0]: {m.class_name for m in spec.metrics}
                 for spec in eval_config.metrics_specs}
    assert "Recall" in by_output["predicted_label"] and "AUC" in by_output["probability"]


def test_demo_gate_profile():
    eval_config = evaluator.eval_config(configs.demo_config(None))
    gate = configs.GATE_PROFILES["demo"]
    assert _thresholds(eval_config, "AUC") == {"site-a": gate.internal_auc_min,
                                                "site-b": gate.external_auc_min}


def _metrics(eval_config, output):
    return {m.class_name: m for spec in eval_config.metrics_specs if spec.output_names == [output]
            for m in spec.metrics}


def test_confidence_intervals_are_tfma_poisson_bootstrap_or_jackknife_as_configured():
    from tensorflow_model_analysis.proto import config_pb2
    options = evaluator.eval_config(configs.PipelineConfig()).options
    assert options.compute_confidence_intervals.value
    assert options.confidence_intervals.method == config_pb2.ConfidenceIntervalOptions.POISSON_BOOTSTRAP
    demo = configs.demo_config(None)            # the demo's: a fraction of the bootstrap's cost
    assert evaluator.eval_config(demo).options.confidence_intervals.method == \
        config_pb2.ConfidenceIntervalOptions.JACKKNIFE
    assert demo.ci_description == S.JACKKNIFE_CI
    assert evaluator.describe_gate(demo.gate, demo.external_site, demo.ci_description).endswith(
        f"{S.JACKKNIFE_CI}, reported)")
    off = dataclasses.replace(demo, confidence_intervals=False)
    assert not evaluator.eval_config(off, off.confidence_intervals).options.compute_confidence_intervals.value
    assert off.ci_description == S.NO_CI
    with pytest.raises(ValueError, match="ci_method"):
        dataclasses.replace(demo, ci_method="percentile").validate()


def test_auc_calibration_and_confusion_matrix_are_reported():
    eval_config = evaluator.eval_config(configs.PipelineConfig())
    probability = _metrics(eval_config, "probability")
    assert {"AUC", "MeanSquaredError", "Calibration", "CalibrationPlot", "BinaryCrossentropy"} <= set(probability)
    assert '"num_thresholds": 2000' in probability["AUC"].config
    assert '"brier_score"' in probability["MeanSquaredError"].config
    label = _metrics(eval_config, "predicted_label")
    assert {"Recall", "Specificity", "BinaryAccuracy", "Precision", "F1Score", "TruePositives",
            "FalsePositives", "TrueNegatives", "FalseNegatives"} <= set(label)


def test_no_regression_threshold_on_every_site_auc():
    from tensorflow_model_analysis.proto import config_pb2
    gate = configs.GATE_PROFILES["study"]
    auc = _metrics(evaluator.eval_config(configs.PipelineConfig()), "probability")["AUC"]
    changes = {t.slicing_specs[0].feature_values["site"]: t.threshold.change_threshold
               for t in auc.per_slice_thresholds}
    assert set(changes) == {"site-a", "site-b"}
    for change in changes.values():
        assert change.absolute.value == -gate.auc_regression_tolerance
        assert change.direction == config_pb2.MetricDirection.HIGHER_IS_BETTER


def test_both_splits_are_evaluated_and_no_slice_pools_sites():
    eval_config = evaluator.eval_config(configs.PipelineConfig())
    assert evaluator.EVAL_SPLITS == ["test", "external"]
    # No empty SlicingSpec: TFMA would add an `overall` slice mixing internal and external data.
    assert all(spec.feature_keys and spec.feature_keys[0] == "site"
               for spec in eval_config.slicing_specs)
    assert {tuple(s.feature_keys) for s in eval_config.slicing_specs} == {
        ("site",), ("site", "sex"), ("site", "age_band"), ("site", "view")}


def test_per_cell_baseline_and_model_card_compile_for_kubeflow(tmp_path):
    """No resolver (Kubeflow V2 compiles only pipeline-wide ones): each cell's Evaluator takes its
    baseline from that cell's BaselineLookup, which reaches the cluster's MLMD; the model card
    follows the cell's Pusher."""
    import dataclasses
    import json as json_lib

    from cardio.components import baseline
    from cardio.pipeline import kubeflow_runner

    config = dataclasses.replace(configs.PipelineConfig(), segmenter_uri="gs://bucket/unet")
    path = kubeflow_runner.compile_pipeline(
        config, str(tmp_path / "job.json"), data_root="gs://bucket/data",
        pipeline_root="gs://bucket/root", serving_root="gs://bucket/serving")
    tasks = json_lib.loads(open(path).read())["pipelineSpec"]["root"]["dag"]["tasks"]
    assert not [name for name in tasks if "resolver" in name.lower()]
    for cell in config.grid:
        evaluator_inputs = tasks[f"Evaluator.{cell.name}"]["inputs"]["artifacts"]
        assert evaluator_inputs["baseline_model"]["taskOutputArtifact"] == {
            "producerTask": f"BaselineLookup.{cell.name}", "outputArtifactKey": "baseline"}
        lookup = tasks[f"BaselineLookup.{cell.name}"]["inputs"]
        assert lookup["artifacts"]["model"]["taskOutputArtifact"]["producerTask"] == \
            f"Trainer.{cell.name}"
        assert json_lib.dumps(lookup["parameters"]).count(cell.name) == 1
        assert baseline.KUBEFLOW_MLMD in json_lib.dumps(lookup["parameters"])
        card = tasks[f"ModelCard.{cell.name}"]["inputs"]["artifacts"]
        assert card["pushed_model"]["taskOutputArtifact"]["producerTask"] == f"Pusher.{cell.name}"
        assert card["evaluation"]["taskOutputArtifact"]["producerTask"] == f"Evaluator.{cell.name}"


def test_bootstrap_intervals_are_kept_within_the_metrics_range():
    """TFMA's t interval over 20 replicates leaves [0, 1] on small slices; reports clip it."""
    assert evaluator._interval("auc", -0.08, 1.62) == (0.0, 1.0)
    assert evaluator._interval("tp", -0.8, 4.3) == (0.0, 4.3)
    assert evaluator._interval("sensitivity", float("nan"), float("nan")) == (None, None)


def test_a_slice_without_one_class_has_no_auc_or_rate_of_that_class():
    """TFMA reports AUC 0 and recall NaN for a slice without cardiomegaly; the tables show '-'."""
    import types

    def slice_(site, tp, fn, fp, tn, auc):
        label = {name: {"doubleValue": value} for name, value in
                 (("tp", tp), ("fn", fn), ("fp", fp), ("tn", tn), ("specificity", tn / (fp + tn)),
                  ("sensitivity", tp / (tp + fn) if tp + fn else float("nan")))}
        return (((("site", site),), {"probability": {"": {"auc": {"doubleValue": auc}}},
                                     "predicted_label": {"": label}}))

    result = types.SimpleNamespace(slicing_metrics=[slice_("a", 0, 0, 2, 3, 0.0),
                                                    slice_("b", 3, 1, 2, 4, 0.8)])
    table = evaluator.metrics_with_intervals(result)
    assert "auc" not in table["site=a"] and "sensitivity" not in table["site=a"]
    assert table["site=a"]["specificity"]["value"] == 0.6
    assert table["site=b"]["auc"]["value"] == 0.8 and table["site=b"]["sensitivity"]["value"] == 0.75

