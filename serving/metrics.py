"""Prometheus metrics as TF Serving exposes them (--monitoring_config_file), with prometheus_client.

The monitoring config is TF Serving's MonitoringConfig text proto:

    prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }

The serving-api wheel does not ship monitoring_config.proto, so the two messages are declared
here at runtime with its field names and numbers (as config.py does for BatchingParameters).
Metric names are TF Serving's (`/tensorflow/serving/request_count` is exported to Prometheus as
`:tensorflow:serving:request_count`); the labels add the version and the API to TF Serving's.
prometheus_client writes a counter's samples with the OpenMetrics `_total` suffix
(`:tensorflow:serving:request_count_total`), where TF Serving writes the bare name.
"""
from __future__ import annotations

import time

import grpc
import prometheus_client
import tensorflow as tf
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

DEFAULT_PATH = "/monitoring/prometheus/metrics"
# Microseconds, as TF Serving's latency histograms.
LATENCY_BUCKETS = tuple(10 * 1.8 ** i for i in range(33))


def _monitoring_config_class():
    kind = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="cardio/serving/monitoring_config.proto",
                                              package="tensorflow.serving", syntax="proto3")
    prometheus = file.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, label=kind.LABEL_OPTIONAL, type=kind.TYPE_BOOL)
    prometheus.field.add(name="path", number=2, label=kind.LABEL_OPTIONAL, type=kind.TYPE_STRING)
    config = file.message_type.add(name="MonitoringConfig")
    config.field.add(name="prometheus_config", number=1, label=kind.LABEL_OPTIONAL,
                     type=kind.TYPE_MESSAGE, type_name=".tensorflow.serving.PrometheusConfig")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))


MonitoringConfig = _monitoring_config_class()


def read_monitoring_config(path: str) -> str | None:
    """The Prometheus path a monitoring config enables, or None when it does not."""
    with tf.io.gfile.GFile(path) as f:
        text = f.read()
    config = MonitoringConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        raise ValueError(f"Error parsing text-format tensorflow.serving.MonitoringConfig: "
                         f"{error} (in {path})") from None
    if not config.prometheus_config.enable:
        return None
    return config.prometheus_config.path or DEFAULT_PATH


class Metrics:
    """Request count and latency per model, version, API and entry point (GRPC or REST)."""

    def __init__(self):
        self.registry = prometheus_client.CollectorRegistry()
        labels = ["model_name", "version", "API", "entrypoint"]
        self.requests = prometheus_client.Counter(
            ":tensorflow:serving:request_count", "The total number of requests.",
            labels + ["status"], registry=self.registry)
        self.latency = prometheus_client.Histogram(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            labels, buckets=LATENCY_BUCKETS, registry=self.registry)

    def observe(self, model: str, version, api: str, entrypoint: str, code: grpc.StatusCode,
                started: float):
        version = str(version or "")
        self.requests.labels(model, version, api, entrypoint, code.name).inc()
        self.latency.labels(model, version, api, entrypoint).observe(
            (time.monotonic() - started) * 1e6)

    def exposition(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)
