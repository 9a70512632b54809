"""AnomalyGate: stops the run when ExampleValidator found anomalies in any split.

TFX's ExampleValidator records anomalies but lets the run go on; here a span with an unknown
site, a label outside {0, 1} or a missing image must train nothing. The gate fails its execution
with the anomalies spelled out, and every Trainer depends on it (locally and on Kubeflow, where a
failed task stops its dependents).
"""

import os

import tensorflow as tf
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.types.standard_artifacts import ExampleAnomalies


class AnomaliesFound(RuntimeError):
    pass


def describe_anomalies(uri: str) -> list[str]:
    """One line per anomaly, across every split directory of an ExampleAnomalies artifact."""
    problems = []
    for split_dir in sorted(tf.io.gfile.listdir(uri)):
        path = os.path.join(uri, split_dir.rstrip("/"), "SchemaDiff.pb")
        if not tf.io.gfile.exists(path):
            continue
        anomalies = anomalies_pb2.Anomalies()
        anomalies.ParseFromString(tf.io.gfile.GFile(path, "rb").read())
        for feature, info in sorted(anomalies.anomaly_info.items()):
            split = split_dir.rstrip("/").removeprefix("Split-")
            problems.append(f"{split}: feature '{feature}': {info.short_description} "
                            f"({info.description})")
        if anomalies.HasField("dataset_anomaly_info"):
            problems.append(f"{split_dir}: {anomalies.dataset_anomaly_info.description}")
    return problems


@component
def AnomalyGate(anomalies: InputArtifact[ExampleAnomalies]) -> None:
    problems = describe_anomalies(anomalies.uri)
    if problems:
        raise AnomaliesFound("the span breaks the schema; nothing will be trained:\n  "
                             + "\n  ".join(problems))
