"""DriftGate: stops the run when the new span's statistics drifted from the previous span's.

A site that changes its scanner, its export (8-bit instead of 16-bit) or its population passes
the schema (ExampleValidator) and would be trained on without a word. The gate compares, split
by split, this run's StatisticsGen output with the statistics of the newest earlier span it
accepted, using TFDV's own drift comparators (`validate_statistics(..., previous_statistics=...)`):
L-infinity distance on the categorical features (site, sex, age band, label, stored bit depth)
and Jensen-Shannon divergence on the numeric ones (image height and width). Past the pipeline
configuration's thresholds it records the anomalies (an ExampleAnomalies artifact laid out like
ExampleValidator's) and fails its execution, so no Trainer starts; on a pipeline's first span
there is nothing to compare and it passes.

`PreviousStatisticsLookup` finds those earlier statistics in MLMD (through the gate's own stamped
outputs) and hands them to the gate as an input artifact, *by reference*, as BaselineLookup hands
the Evaluator its baseline (components/baseline.py): `previous.json` names the statistics' URI,
and on the open-source Kubeflow backend with a MinIO/S3 root the lookup's output is reported
with that URI (pipeline/kfp_entrypoint.py), so the gate's launcher downloads the statistics like
any input (`launcher_v2.go`, `downloadArtifacts`) and no TensorFlow file system for the object
store is needed.

It first checks the evaluated splits (validation, test, external) hold at least the
configuration's `min_split_positives` cardiomegaly images each, from the same statistics, and
fails naming the split and its count when one does not.
"""

import json
import logging
import os

import tensorflow as tf
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types.standard_artifacts import ExampleAnomalies, Examples, ExampleStatistics, Schema

from cardio import features as F
from cardio.components.anomaly_gate import describe_anomalies
from cardio.components.baseline import _property, open_store

CATEGORICAL = (F.SITE, F.SEX, F.AGE_BAND, F.LABEL, F.BIT_DEPTH)   # L-infinity distance
NUMERIC = (F.IMAGE_HEIGHT, F.IMAGE_WIDTH)                         # Jensen-Shannon divergence
DRIFT_TYPES = {anomalies_pb2.AnomalyInfo.COMPARATOR_L_INFTY_HIGH,
               anomalies_pb2.AnomalyInfo.COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH}
ANOMALIES_TYPES = ("ExampleAnomalies", "tfx.ExampleAnomalies")  # TFX's name; KFP v2's
PIPELINE, SPAN, STATISTICS_URI = "cardio_drift_pipeline", "span", "statistics_uri"  # on the output
# On the lookup's output: this run's span, the earlier one, and the statistics it stands for.
CURRENT_SPAN, PREVIOUS_SPAN, PREVIOUS_URI = "current_span", "previous_span", "previous_statistics_uri"
POINTER_FILE = "previous.json"
STATS_FILE = "FeatureStats.pb"   # StatisticsGen's file in each Split-<name> directory
SCHEMA_FILE = "schema.pbtxt"     # in a Schema artifact (ImportSchemaGen writes this name)


class DriftFound(RuntimeError):
    pass


class TooFewPositives(RuntimeError):
    """An evaluated split with fewer cardiomegaly images than `min_split_positives`."""


def label_counts(stats: statistics_pb2.DatasetFeatureStatisticsList | None) -> tuple[int, int]:
    """(cardiomegaly, images) of one split's statistics; (0, 0) without any."""
    if stats is None or not stats.datasets:
        return 0, 0
    dataset = stats.datasets[0]
    for feature in dataset.features:
        if list(feature.path.step) != [F.LABEL] and feature.name != F.LABEL:
            continue
        if feature.HasField("string_stats"):    # the schema declares the label categorical
            buckets = feature.string_stats.rank_histogram.buckets
            positives = sum(b.sample_count for b in buckets if b.label == "1") or sum(
                v.frequency for v in feature.string_stats.top_values if v.value == "1")
            return int(round(positives)), int(dataset.num_examples)
        common = feature.num_stats.common_stats
        return int(round(feature.num_stats.mean * common.num_non_missing)), int(dataset.num_examples)
    return 0, int(dataset.num_examples)


def too_few_positives(statistics_uri: str, splits, minimum: int) -> list[str]:
    """One line per evaluated split with fewer than `minimum` cardiomegaly images."""
    stats = _split_stats(statistics_uri)
    problems = []
    for split in splits:
        positives, images = label_counts(stats.get(split))
        if positives < minimum:
            problems.append(f"{split}: {positives} cardiomegaly image(s) of {images}, fewer than "
                            f"min_split_positives={minimum}")
    return problems


def drift_schema(schema: schema_pb2.Schema, max_linf: float, max_jsd: float) -> schema_pb2.Schema:
    """The schema with TFDV drift comparators on the watched features."""
    schema = schema_pb2.Schema.FromString(schema.SerializeToString())
    for feature in schema.feature:
        if feature.name in CATEGORICAL:
            feature.drift_comparator.infinity_norm.threshold = max_linf
        elif feature.name in NUMERIC:
            feature.drift_comparator.jensen_shannon_divergence.threshold = max_jsd
    return schema


def drift_anomalies(current: statistics_pb2.DatasetFeatureStatisticsList,
                    previous: statistics_pb2.DatasetFeatureStatisticsList,
                    schema: schema_pb2.Schema, max_linf: float,
                    max_jsd: float) -> anomalies_pb2.Anomalies:
    """TFDV's drift anomalies of one split (schema conformance is ExampleValidator's job)."""
    import tensorflow_data_validation as tfdv

    anomalies = tfdv.validate_statistics(current, drift_schema(schema, max_linf, max_jsd),
                                         previous_statistics=previous)
    for name in list(anomalies.anomaly_info):
        info = anomalies.anomaly_info[name]
        if not any(reason.type in DRIFT_TYPES for reason in info.reason):
            del anomalies.anomaly_info[name]
    anomalies.ClearField("dataset_anomaly_info")
    return anomalies


def _split_stats(uri: str) -> dict:
    stats = {}
    for entry in tf.io.gfile.listdir(uri):
        path = os.path.join(uri, entry.rstrip("/"), STATS_FILE)
        if entry.startswith("Split-") and tf.io.gfile.exists(path):
            stats[entry.rstrip("/").removeprefix("Split-")] = \
                statistics_pb2.DatasetFeatureStatisticsList.FromString(
                    tf.io.gfile.GFile(path, "rb").read())
    return stats


def compare_spans(current_uri: str, previous_uri: str, out_uri: str, schema: schema_pb2.Schema,
                  max_linf: float, max_jsd: float) -> list[str]:
    """Writes each common split's drift anomalies to `out_uri`/Split-<name>/SchemaDiff.pb (as
    ExampleValidator lays them out); returns them one per line."""
    current, previous = _split_stats(current_uri), _split_stats(previous_uri)
    for split in sorted(set(current) & set(previous)):
        anomalies = drift_anomalies(current[split], previous[split], schema, max_linf, max_jsd)
        split_dir = os.path.join(out_uri, f"Split-{split}")
        tf.io.gfile.makedirs(split_dir)
        with tf.io.gfile.GFile(os.path.join(split_dir, "SchemaDiff.pb"), "wb") as f:
            f.write(anomalies.SerializeToString())
    return describe_anomalies(out_uri)


def find_previous(store, pipeline: str, current_span: int) -> dict | None:
    """The newest earlier span this pipeline's gate passed: {"span", "statistics_uri", "id"}.

    StatisticsGen's artifacts do not carry the span, so the gate stamps its own output with the
    span and the statistics it accepted, and looks those up. A span the gate stopped published
    nothing, so the next span is compared with the last accepted one.
    """
    from ml_metadata import errors
    from ml_metadata.proto import metadata_store_pb2

    found = []
    for type_name in ANOMALIES_TYPES:
        try:
            found += store.get_artifacts_by_type(type_name)
        except errors.NotFoundError:
            continue
    stamped = [(_stamped_span(a), a) for a in found if a.state == metadata_store_pb2.Artifact.LIVE
               and _property(a, PIPELINE) == pipeline]
    earlier = [(span, a) for span, a in stamped if span is not None and span < current_span]
    if not earlier:
        return None
    span, latest = max(earlier, key=lambda s_a: (s_a[0], s_a[1].create_time_since_epoch, s_a[1].id))
    return {"span": span, "id": latest.id, "statistics_uri": _property(latest, STATISTICS_URI)}


def _stamped_span(artifact) -> int | None:
    """The span the gate stamped on its output. ExampleAnomalies has a `span` property of its
    own, so TFX's Kubeflow entrypoint reports the custom one as `custom:span` metadata
    (kubeflow_v2_entrypoint_utils.py, `_get_json_metadata_mapping`), which KFP's launcher records
    in MLMD under that name; a local run records `span`."""
    value = _property(artifact, SPAN)
    if value is None:
        value = _property(artifact, "custom:" + SPAN)
    return None if value is None else int(value)


def _span(examples) -> int:
    """ExampleGen's span: TFX's driver stamps it as a custom property (on Kubeflow it travels as
    `custom:span` metadata and comes back as one: kubeflow_v2_entrypoint_utils.py,
    `_parse_raw_artifact`, maybe as a double); the typed property is the fallback."""
    if examples.has_custom_property(SPAN):
        return int(examples.get_custom_property(SPAN) or 0)
    return int(examples.span or 0)


def read_previous(artifact) -> dict | None:
    """The lookup's answer as {"span", "statistics_uri"}, or None on a pipeline's first span.
    With a MinIO/S3 root the artifact *is* the earlier statistics (downloaded by the launcher)."""
    path = os.path.join(artifact.uri, POINTER_FILE)
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            pointer = json.load(f)
        return pointer if pointer.get("statistics_uri") else None
    if not artifact.has_custom_property(PREVIOUS_SPAN):
        return None
    return {"span": int(artifact.get_custom_property(PREVIOUS_SPAN)), "statistics_uri": artifact.uri}


@component
def PreviousStatisticsLookup(examples: InputArtifact[Examples],
                             previous: OutputArtifact[ExampleStatistics],
                             pipeline_name: Parameter[str], metadata_connection: Parameter[str]):
    # Its input is the span's examples, which alone carry the span (StatisticsGen's output does
    # only on Kubeflow); it reruns exactly when they are new.
    span = _span(examples)
    found = find_previous(open_store(metadata_connection), pipeline_name, span)
    logging.info("span %d: previous span's statistics: %s", span, found or "none")
    pointer = {"span": None, "statistics_uri": None, **(found or {})}
    tf.io.gfile.makedirs(previous.uri)
    with tf.io.gfile.GFile(os.path.join(previous.uri, POINTER_FILE), "w") as f:
        json.dump(pointer, f, indent=2)
    previous.set_int_custom_property(CURRENT_SPAN, span)
    if found:
        previous.set_int_custom_property(PREVIOUS_SPAN, found["span"])
        previous.set_string_custom_property(PREVIOUS_URI, found["statistics_uri"])


@component
def DriftGate(statistics: InputArtifact[ExampleStatistics],
              previous_statistics: InputArtifact[ExampleStatistics],
              schema: InputArtifact[Schema], drift: OutputArtifact[ExampleAnomalies],
              pipeline_name: Parameter[str],
              max_categorical_linf: Parameter[float], max_numeric_jsd: Parameter[float],
              min_split_positives: Parameter[int] = 0, evaluated_splits: Parameter[str] = ""):
    from google.protobuf import text_format

    span = int(previous_statistics.get_custom_property(CURRENT_SPAN) or 0)   # the lookup's
    # Before any drift: a split too small to judge stops the run on every orchestrator (the
    # command line's pre-run check says the same before anything starts).
    small = too_few_positives(statistics.uri, [s for s in evaluated_splits.split(",") if s],
                              min_split_positives)
    if small:
        raise TooFewPositives(f"span {span}: too few positives to calibrate, threshold or gate "
                              f"on; nothing will be trained:\n  " + "\n  ".join(small))
    previous = read_previous(previous_statistics)
    drift.set_string_custom_property(PIPELINE, pipeline_name)
    drift.set_int_custom_property(SPAN, span)
    drift.set_string_custom_property(STATISTICS_URI, statistics.uri)
    if previous is None:
        logging.info("span %d: no earlier span's statistics; nothing to compare", span)
        return
    drift.set_int_custom_property(PREVIOUS_SPAN, previous["span"])
    # The pipeline's schema artifact (ImportSchemaGen's, or on Kubeflow the imported one, which
    # the launcher downloads like any input): one schema.pbtxt in its directory.
    schema_text = tf.io.gfile.GFile(os.path.join(schema.uri, SCHEMA_FILE)).read()
    problems = compare_spans(statistics.uri, previous["statistics_uri"], drift.uri,
                             text_format.Parse(schema_text, schema_pb2.Schema()),
                             max_categorical_linf, max_numeric_jsd)
    if problems:
        raise DriftFound(f"span {span} drifted from span {previous['span']}; nothing will be "
                         f"trained:\n  " + "\n  ".join(problems))
