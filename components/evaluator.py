"""The Evaluator: TFMA metrics per site slice, with confidence intervals, and the blessing gate.

Slices. The Evaluator pools the `test` and `external` splits into one collection, so a slice
without the site would mix internal and external data. Every slice is therefore keyed by site
first: `site` is each site's overall figure (the internal test set, the external site), then
site x sex, site x age band and site x view. No `overall` slice exists.

Metrics. On the probability: example count, AUC (2,000 evenly spaced thresholds, TFMA's fast
histogram path: within 7e-4 of the exact AUC on the served *calibrated* probabilities of the NIH
runs' test and Wingspan images, 10,000 thresholds within 2e-4 at 2.2 times the Evaluator's time
with jackknife intervals, whose cost grows with the thresholds; on raw saturated scores it is
not close, which is one reason the export serves Platt-calibrated ones), log loss,
Brier score (mean squared error of the probability), calibration (mean prediction / mean label)
and a 20-bin calibration plot. On the label at the operating threshold
baked into the export: sensitivity, specificity, accuracy, precision, F1 and the confusion matrix
(TP, FP, TN, FN). Every metric carries a 95% confidence interval from TFMA, by the configuration's
`ci_method`: its Poisson bootstrap (20 replicates) or its jackknife (20 delete-one-bucket
estimates, from one pass over the data: a fraction of the bootstrap's cost); both give a t
interval, which `metrics_with_intervals` clips to the metric's range. Every table that shows an
interval names its method, read from the evaluation's own EvalConfig (`ci_description`).

The gate (a `GateProfile`) compares POINT ESTIMATES, per site slice: the external site's AUC,
each internal site's AUC, every site's sensitivity at the operating threshold, and, when the
grid cell has a blessed model, each site's AUC may not fall more than the profile's tolerance
below that baseline's. The confidence intervals are reported beside it, not gated on: TFMA's
thresholds compare the unsampled value.

A model the Trainer refused to calibrate (trainer/calibration.py: too few validation positives,
logits ranking validation backwards) fails whatever its metrics: the executor turns its blessing
into NOT_BLESSED and records the reasons (REFUSALS_FILE), which `validation_failures` lists.

The baseline is per grid cell (components/baseline.py finds it); this module's `Executor` is TFX's
Evaluator executor plus the two things that needs: evaluate the model the lookup points to (or no
baseline on a cell's first run), and stamp the blessing with the cell so the next lookup finds it.
"""
from __future__ import annotations

import json
import math
import os

import tensorflow as tf
import tensorflow_model_analysis as tfma_lib
from tensorflow_model_analysis.proto import config_pb2 as tfma
from tfx.components.evaluator.component import Evaluator as TfxEvaluator
from tfx.components.evaluator import executor as tfx_evaluator
from tfx.dsl.components.base import executor_spec
from tfx.types import standard_artifacts, standard_component_specs as keys

from cardio import features as F
from cardio.components import baseline as baseline_lib
from cardio.components.gate import GateProfile
from cardio.evaluation import statistics as S

# Every slice starts with the site, so internal and external data are never mixed.
SLICE_FEATURES = ([F.SITE], *([F.SITE, subgroup] for subgroup in F.SUBGROUPS))
EVAL_SPLITS = [F.TEST, F.EXTERNAL]
# Evenly spaced: TFMA then derives every threshold from one calibration histogram. An explicit
# threshold list takes its per-example path, which with the bootstrap took minutes per slice.
AUC_THRESHOLDS = 2_000
CALIBRATION_BINS = 20
REFUSALS_FILE = "cardio_refusals.json"   # in the evaluation: reasons beyond TFMA's thresholds


def describe_gate(gate: GateProfile, external_site: str | None = "configured",
                  ci: str = S.BOOTSTRAP_CI) -> str:
    """One line a reviewer reads before the results: what a model must reach to be pushed."""
    external = (f"external-site AUC >= {gate.external_auc_min}" if external_site else
                "NO EXTERNAL SITE configured: internal criteria only")
    return (f"Gate profile '{gate.name}': {external}, "
            f"internal AUC >= {gate.internal_auc_min}, sensitivity >= {gate.sensitivity_min} at "
            f"the operating threshold, AUC no more than {gate.auc_regression_tolerance} below the "
            f"cell's last blessed model (point estimates per site slice; "
            + (f"{ci}, reported)" if ci != S.NO_CI else f"{ci}: confidence_intervals is false)"))


def _metric(class_name: str, per_slice_thresholds=(), **config) -> tfma.MetricConfig:
    return tfma.MetricConfig(class_name=class_name, config=json.dumps(config) if config else "",
                             per_slice_thresholds=list(per_slice_thresholds))


def _per_site(site: str, threshold: tfma.MetricThreshold) -> tfma.PerSliceMetricThreshold:
    return tfma.PerSliceMetricThreshold(
        slicing_specs=[tfma.SlicingSpec(feature_values={F.SITE: site})], threshold=threshold)


def _floor(lower_bound: float, regression_tolerance: float | None = None) -> tfma.MetricThreshold:
    """A lower bound on the point estimate and, if given, on the change against the baseline
    (TFMA drops the change part when there is no baseline: a cell's first model)."""
    threshold = tfma.MetricThreshold(value_threshold=tfma.GenericValueThreshold(
        lower_bound={"value": lower_bound}))
    if regression_tolerance is not None:
        threshold.change_threshold.CopyFrom(tfma.GenericChangeThreshold(
            absolute={"value": -regression_tolerance}, direction=tfma.MetricDirection.HIGHER_IS_BETTER))
    return threshold


# TFMA's name of each `ci_method`.
CI_METHODS = {"bootstrap": tfma.ConfidenceIntervalOptions.POISSON_BOOTSTRAP,
              "jackknife": tfma.ConfidenceIntervalOptions.JACKKNIFE}


def eval_config(config, confidence_intervals: bool = True) -> tfma.EvalConfig:
    """The EvalConfig of every grid cell. `confidence_intervals=False` only skips the intervals
    (config.ci_method's); the gate, which compares point estimates, decides the same."""
    gate = config.gate
    auc_floors = {site: gate.internal_auc_min for site in config.internal_sites}
    if config.external_site:   # without one, the internal criteria alone decide
        auc_floors[config.external_site] = gate.external_auc_min
    auc_gates = [_per_site(site, _floor(floor, gate.auc_regression_tolerance))
                 for site, floor in auc_floors.items()]
    sensitivity_gates = [_per_site(site, _floor(gate.sensitivity_min)) for site in config.sites]
    # Ranking and calibration metrics score the probability; the confusion-matrix metrics score
    # the label at the operating threshold baked into the model, which is what clinicians get.
    probability_metrics = [
        _metric("ExampleCount"),
        _metric("AUC", per_slice_thresholds=auc_gates, num_thresholds=AUC_THRESHOLDS),
        _metric("BinaryCrossentropy", name="log_loss"),
        _metric("MeanSquaredError", name="brier_score"),
        _metric("Calibration", name="calibration"),
        _metric("CalibrationPlot", name="calibration_plot", num_buckets=CALIBRATION_BINS),
    ]
    label_metrics = [
        _metric("Recall", per_slice_thresholds=sensitivity_gates, name="sensitivity"),
        _metric("Specificity", name="specificity"),
        _metric("BinaryAccuracy", name="accuracy"),
        _metric("Precision", name="precision"),
        _metric("F1Score", name="f1"),
        _metric("TruePositives", name="tp"),
        _metric("FalsePositives", name="fp"),
        _metric("TrueNegatives", name="tn"),
        _metric("FalseNegatives", name="fn"),
    ]
    return tfma.EvalConfig(
        # One spec: TFX adds the baseline copy when the cell has a blessed model.
        model_specs=[tfma.ModelSpec(signature_name=F.SERVING_EXAMPLES,
                                    label_keys={F.PROBABILITY: F.LABEL, F.PREDICTED_LABEL: F.LABEL})],
        slicing_specs=[tfma.SlicingSpec(feature_keys=keys_) for keys_ in SLICE_FEATURES],
        metrics_specs=[tfma.MetricsSpec(output_names=[F.PROBABILITY], metrics=probability_metrics),
                       tfma.MetricsSpec(output_names=[F.PREDICTED_LABEL], metrics=label_metrics)],
        options=tfma.Options(
            compute_confidence_intervals={"value": confidence_intervals},
            confidence_intervals=tfma.ConfidenceIntervalOptions(
                method=CI_METHODS[config.ci_method])))


def ci_description(evaluation_uri: str) -> str:
    """What an evaluation's intervals are, from its own EvalConfig: a table says its method."""
    from tensorflow_model_analysis.writers import eval_config_writer

    options = eval_config_writer.load_eval_run(evaluation_uri)[0].options
    if not options.compute_confidence_intervals.value:
        return S.NO_CI
    methods = {number: name for name, number in CI_METHODS.items()}
    return S.TFMA_CI[methods[options.confidence_intervals.method]]


class Executor(tfx_evaluator.Executor):
    """TFX's Evaluator executor, with the grid cell's baseline from the lookup (or none)."""

    def Do(self, input_dict, output_dict, exec_properties):
        input_dict = dict(input_dict)
        lookups = input_dict.get(keys.BASELINE_MODEL_KEY) or []
        pointer = baseline_lib.read_pointer(lookups[0]) if lookups else None
        if pointer and pointer.get("model_uri"):
            # Evaluate the blessed model itself (not a copy); the blessing records its uri and id.
            model = standard_artifacts.Model()
            model.uri = pointer["model_uri"]
            if os.environ.get(baseline_lib.KFP_RUNTIME_ENV):
                model.id = lookups[0].id   # the input that brought it (its runtime name)
            elif pointer.get("model_id"):
                model.id = int(pointer["model_id"])   # the blessed model's own MLMD id
            input_dict[keys.BASELINE_MODEL_KEY] = [model]
        else:
            input_dict[keys.BASELINE_MODEL_KEY] = []   # the cell's first model: floors only
        super().Do(input_dict, output_dict, exec_properties)
        fail_refused(input_dict[keys.MODEL_KEY][0].uri, output_dict[keys.BLESSING_KEY][0],
                     output_dict[keys.EVALUATION_KEY][0].uri)
        if pointer:
            blessing = output_dict[keys.BLESSING_KEY][0]
            blessing.set_string_custom_property(baseline_lib.CELL, pointer["cell"])
            blessing.set_string_custom_property(baseline_lib.PIPELINE, pointer["pipeline"])


def fail_refused(model_uri: str, blessing, evaluation_uri: str) -> list[str]:
    """NOT_BLESSED, with the reasons written beside the evaluation, when the export carries the
    Trainer's refusals (components/gate.py); returns them."""
    from cardio.components.gate import refusals

    path = os.path.join(model_uri, "Format-Serving", F.ASSETS_EXTRA, F.METADATA_FILE)
    metadata = {}
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            metadata = json.load(f)
    reasons = refusals(metadata)
    if not reasons:
        return []
    with tf.io.gfile.GFile(os.path.join(evaluation_uri, REFUSALS_FILE), "w") as f:
        json.dump(reasons, f, indent=2)
    blessed = os.path.join(blessing.uri, "BLESSED")
    if tf.io.gfile.exists(blessed):
        tf.io.gfile.remove(blessed)
    with tf.io.gfile.GFile(os.path.join(blessing.uri, "NOT_BLESSED"), "w") as f:
        f.write("")
    blessing.set_int_custom_property("blessed", 0)
    return reasons


class CellEvaluator(TfxEvaluator):
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)


def create(examples, model, baseline_model, config, cell_name: str,
           confidence_intervals: bool = True):
    """An Evaluator over the `test` and `external` splits for one grid cell's model, compared
    with `baseline_model` (a BaselineLookup's output)."""
    return CellEvaluator(
        examples=examples, model=model, baseline_model=baseline_model,
        eval_config=eval_config(config, confidence_intervals),
        example_splits=config.eval_splits).with_id(f"Evaluator.{cell_name}")


# --- reading results -------------------------------------------------------------------------

def load(evaluation_uri: str):
    """The candidate's tfma.EvalResult (TFMA names it `candidate` when a baseline was evaluated)."""
    from tensorflow_model_analysis.writers import eval_config_writer

    _, _, _, locations = eval_config_writer.load_eval_run(evaluation_uri)
    name = tfma_lib.CANDIDATE_KEY if tfma_lib.CANDIDATE_KEY in locations else None
    return tfma_lib.load_eval_result(evaluation_uri, model_name=name)


def slice_name(slice_key) -> str:
    return ", ".join(f"{k}={v}" for k, v in slice_key) or "overall"


# Metrics that live in [0, 1]; every other one (counts, log loss, calibration) is >= 0.
UNIT_INTERVAL_METRICS = ("auc", "sensitivity", "specificity", "accuracy", "precision", "f1",
                         "brier_score")


def _interval(name: str, lower: float, upper: float):
    """TFMA's bootstrap interval is a t interval over 20 replicates: it can leave the metric's
    range on small slices (clipped here) or be undefined (a replicate without positives: None)."""
    if math.isnan(lower) or math.isnan(upper):
        return None, None
    top = 1.0 if name in UNIT_INTERVAL_METRICS else math.inf
    return min(max(lower, 0.0), top), min(max(upper, 0.0), top)


def metrics_with_intervals(eval_result) -> dict:
    """{slice: {metric: {"value", "lower", "upper"}}}; lower/upper are None without a CI."""
    table = {}
    for slice_key, metrics in eval_result.slicing_metrics:
        row = {}
        for by_sub_key in metrics.values():          # one entry per model output
            for name, value in by_sub_key.get("", {}).items():
                if not isinstance(value, dict):
                    continue
                if "boundedValue" in value:
                    bounded = value["boundedValue"]
                    lower, upper = _interval(name, float(bounded["lowerBound"]),
                                             float(bounded["upperBound"]))
                    row[name] = {"value": float(bounded["value"]), "lower": lower, "upper": upper}
                elif "doubleValue" in value:
                    row[name] = {"value": float(value["doubleValue"]), "lower": None, "upper": None}
        table[slice_name(slice_key)] = _without_undefined(row)
    return table


def _without_undefined(row: dict) -> dict:
    """Drops what a slice without one class does not define: TFMA reports its AUC as 0 and its
    recall as NaN (e.g. an age band with no cardiomegaly); tables then show '-'."""
    if not {"tp", "fn", "fp", "tn"} <= row.keys():
        return row
    positives = row["tp"]["value"] + row["fn"]["value"]
    negatives = row["fp"]["value"] + row["tn"]["value"]
    undefined = ({"auc", "sensitivity"} if not positives else set()) | \
                ({"auc", "specificity"} if not negatives else set())
    return {name: cell for name, cell in row.items() if name not in undefined}


def validation_failures(evaluation_uri: str) -> list[str]:
    """Why the gate said no, one line per failed threshold (empty when it blessed)."""
    result = tfma_lib.load_validation_result(evaluation_uri)
    lines = []
    refused = os.path.join(evaluation_uri, REFUSALS_FILE)
    if tf.io.gfile.exists(refused):
        with tf.io.gfile.GFile(refused) as f:
            lines += json.load(f)
    for per_slice in result.metric_validations_per_slice:
        name = slice_name([(k.column, k.bytes_value.decode() or k.int64_value)
                           for k in per_slice.slice_key.single_slice_keys])
        for failure in per_slice.failures:
            kind = "change vs baseline" if failure.metric_key.is_diff else "value"
            lines.append(f"{name}: {failure.metric_key.name} ({kind}) = "
                         f"{failure.metric_value.double_value.value:.4f} fails "
                         f"{_describe_threshold(failure.metric_threshold)}")
    for missing in result.missing_slices:
        lines.append(f"no examples for slice {dict(missing.feature_values)}: its threshold fails")
    return lines


def _describe_threshold(threshold: tfma.MetricThreshold) -> str:
    if threshold.HasField("value_threshold"):
        return f">= {threshold.value_threshold.lower_bound.value}"
    return f"change >= {threshold.change_threshold.absolute.value}"
