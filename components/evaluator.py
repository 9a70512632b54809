"""The Evaluator: TFMA metrics per site slice and the blessing gate.

The Evaluator pools the `test` and `external` splits into one collection, so no figure or gate
uses an overall slice: every slice is keyed by site first, and the gate's thresholds are set per
site slice (point estimates, TFMA value thresholds).
"""
from __future__ import annotations

import json

from tensorflow_model_analysis.proto import config_pb2 as tfma
from tfx import v1 as tfx

from cxr import features as F
from pipeline.configs import PipelineConfig
from trainer.export import SERVING_EXAMPLES

# Every slice starts with the site, so internal and external data are never mixed.
SLICE_FEATURES = ([F.SITE], [F.SITE, F.SEX], [F.SITE, F.AGE_BAND])
EVAL_SPLITS = [F.TEST, F.EXTERNAL]


def _metric(class_name: str, per_slice_thresholds=(), **config) -> tfma.MetricConfig:
    return tfma.MetricConfig(class_name=class_name, config=json.dumps(config) if config else "",
                             per_slice_thresholds=list(per_slice_thresholds))


def _threshold(lower_bound: float) -> tfma.MetricThreshold:
    return tfma.MetricThreshold(value_threshold=tfma.GenericValueThreshold(
        lower_bound={"value": lower_bound}))


def _per_site(site: str, lower_bound: float) -> tfma.PerSliceMetricThreshold:
    return tfma.PerSliceMetricThreshold(
        slicing_specs=[tfma.SlicingSpec(feature_values={F.SITE: site})],
        threshold=_threshold(lower_bound))


def eval_config(config: PipelineConfig) -> tfma.EvalConfig:
    gate = config.gate
    sites = list(config.internal_sites) + [config.external_site]
    auc_gates = [_per_site(s, gate.internal_auc_min) for s in config.internal_sites]
    auc_gates.append(_per_site(config.external_site, gate.external_auc_min))
    sensitivity_gates = [_per_site(s, gate.sensitivity_min) for s in sites]
    # Ranking and calibration metrics score the probability; the confusion-matrix metrics score
    # the label at the operating threshold baked into the model, which is what clinicians get.
    probability_metrics = [
        _metric("ExampleCount"),
        _metric("AUC", per_slice_thresholds=auc_gates, num_thresholds=10000),
        _metric("BinaryCrossentropy", name="log_loss"),
    ]
    label_metrics = [
        _metric("Recall", per_slice_thresholds=sensitivity_gates, name="sensitivity"),
        _metric("Specificity", name="specificity"),
        _metric("BinaryAccuracy", name="accuracy"),
        _metric("Precision", name="precision"),
        _metric("F1Score", name="f1"),
    ]
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name=SERVING_EXAMPLES,
                                    label_keys={F.PROBABILITY: F.LABEL, F.PREDICTED_LABEL: F.LABEL})],
        slicing_specs=[tfma.SlicingSpec(feature_keys=keys) for keys in SLICE_FEATURES],
        metrics_specs=[tfma.MetricsSpec(output_names=[F.PROBABILITY], metrics=probability_metrics),
                       tfma.MetricsSpec(output_names=[F.PREDICTED_LABEL], metrics=label_metrics)])


def create(examples, model, config: PipelineConfig, cell_name: str):
    """An Evaluator over the `test` and `external` splits for one grid cell's model."""
    return tfx.components.Evaluator(
        examples=examples, model=model, eval_config=eval_config(config),
        example_splits=EVAL_SPLITS).with_id(f"Evaluator.{cell_name}")
