"""Prometheus metrics as TF Serving exposes them (--monitoring_config_file), with prometheus_client.

The monitoring config is TF Serving's MonitoringConfig text proto:

    prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }

The serving-api wheel does not ship monitoring_config.proto, so the two messages are declared
here at runtime with its field names and numbers (as config.py does for BatchingParameters).
TF Serving's series are written as its exporter writes them (class Metrics); prometheus_client
writes the project's own (its counters get the OpenMetrics `_total` suffix, which TF Serving's
exporter does not write, so TF Serving's are not left to it).
"""
from __future__ import annotations

import bisect
import threading
import time

import grpc
import prometheus_client
import tensorflow as tf
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from cardio.serving import config as config_lib

DEFAULT_PATH = "/monitoring/prometheus/metrics"


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
    config = config_lib.parse_text_proto(text, MonitoringConfig(), path)
    if not config.prometheus_config.enable:
        return None
    return config.prometheus_config.path or DEFAULT_PATH


def _buckets(scale: float, growth: float, count: int) -> tuple:
    """TensorFlow's monitoring::Buckets::Exponential: `count` limits, then +Inf."""
    return tuple(scale * growth ** i for i in range(count))


# TF Serving's latency samplers: Exponential(10, 1.8, 33), microseconds
# (servables/tensorflow/util.cc).
TF_BUCKETS = _buckets(10, 1.8, 33)
# The APIs TF Serving's gRPC services count (model_servers/prediction_service_impl.cc records
# Predict, Classify and Regress; MultiInference and GetModelMetadata are not counted).
GRPC_APIS = {"predict": "Predict", "classify": "Classify", "regress": "Regress"}
REST_APIS = ("predict", "classify", "regress")      # the URL's method (http_server.cc)


def _number(value: float) -> str:
    """A double as absl::StrCat writes it (six significant digits)."""
    return f"{value:.6g}"


def _escape(value) -> str:
    """A label value as TF Serving's exporter escapes it: backslash and double quote."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"')


def _labels(names: tuple, values: tuple) -> str:
    return ",".join(f'{name}="{_escape(value)}"' for name, value in zip(names, values))


class _Histogram:
    def __init__(self):
        self.counts, self.sum = [0] * (len(TF_BUCKETS) + 1), 0.0

    def add(self, value: float):
        self.counts[bisect.bisect_right(TF_BUCKETS, value)] += 1
        self.sum += value


class Metrics:
    """TF Serving's series, with its names, types, labels and label values, written as its
    Prometheus exporter writes them (util/prometheus_exporter.cc), so its dashboards and alerts
    work unchanged:

      :tensorflow:serving:request_count{model_name,status}              counter
      :tensorflow:serving:request_latency{model_name,API,entrypoint}    histogram, us, successes
      :tensorflow:serving:runtime_latency{model_name,API,runtime}       histogram, us, model runs
      :tensorflow:cc:saved_model:load_attempt_count{model_path,status}  counter (success|fail)
      :tensorflow:cc:saved_model:load_latency{model_path}               counter, us

    (the last two are TensorFlow's SavedModel loader's, tensorflow/cc/saved_model/loader.cc,
    which TF Serving exports too). The project's own series, per version and for every API, are
    prometheus_client's under `cardio_serve_`."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counters = {":tensorflow:serving:request_count": (("model_name", "status"), {}),
                          ":tensorflow:cc:saved_model:load_attempt_count":
                              (("model_path", "status"), {}),
                          ":tensorflow:cc:saved_model:load_latency": (("model_path",), {})}
        self._histograms = {
            ":tensorflow:serving:request_latency": (("model_name", "API", "entrypoint"), {}),
            ":tensorflow:serving:runtime_latency": (("model_name", "API", "runtime"), {})}
        self.registry = prometheus_client.CollectorRegistry()
        labels = ["model_name", "version", "API", "entrypoint"]
        self.requests = prometheus_client.Counter(
            "cardio_serve_requests", "Requests per model, version, API and entry point.",
            labels + ["status"], registry=self.registry)
        self.latency = prometheus_client.Histogram(
            "cardio_serve_request_latency_microseconds",
            "Wall time of a request (microseconds), per model, version, API and entry point.",
            labels, buckets=TF_BUCKETS, registry=self.registry)

    def _count(self, name: str, key: tuple, by: int = 1):
        with self._lock:
            series = self._counters[name][1]
            series[key] = series.get(key, 0) + by

    def _sample(self, name: str, key: tuple, value: float):
        with self._lock:
            self._histograms[name][1].setdefault(key, _Histogram()).add(value)

    def observe(self, model: str, version, api: str, entrypoint: str, code: grpc.StatusCode,
                started: float):
        micros = (time.monotonic() - started) * 1e6
        version = str(version or "")
        self.requests.labels(model, version, api, entrypoint, code.name).inc()
        self.latency.labels(model, version, api, entrypoint).observe(micros)
        tfs_api = GRPC_APIS.get(api) if entrypoint == "GRPC" else (
            api if api in REST_APIS else "")
        if tfs_api is None:
            return
        self._count(":tensorflow:serving:request_count", (model, code.name))
        if code == grpc.StatusCode.OK:       # TF Serving records successes' latency only
            self._sample(":tensorflow:serving:request_latency", (model, tfs_api, entrypoint),
                         micros)

    def runtime(self, model: str, api: str, micros: float):
        """One model run; "TF1" is the runtime label of TF Serving's SavedModel path
        (servables/tensorflow/predict_util.cc)."""
        self._sample(":tensorflow:serving:runtime_latency",
                     (model, GRPC_APIS.get(api, api), "TF1"), micros)

    def loaded(self, path: str, ok: bool, micros: float):
        self._count(":tensorflow:cc:saved_model:load_attempt_count",
                    (path, "success" if ok else "fail"))
        if ok:
            self._count(":tensorflow:cc:saved_model:load_latency", (path,), int(micros))

    def _tf_serving_text(self) -> str:
        lines = []
        with self._lock:
            for name, (labels, series) in sorted(self._counters.items()):
                lines.append(f"# TYPE {name} counter")
                lines += [f"{name}{{{_labels(labels, key)}}} {value}"
                          for key, value in sorted(series.items())]
            for name, (labels, series) in sorted(self._histograms.items()):
                lines.append(f"# TYPE {name} histogram")
                for key, histogram in sorted(series.items()):
                    text, cumulative = _labels(labels, key), 0
                    for i, count in enumerate(histogram.counts):
                        cumulative += count
                        limit = _number(TF_BUCKETS[i]) if i < len(TF_BUCKETS) else "+Inf"
                        lines.append(f'{name}_bucket{{{text},le="{limit}"}} {cumulative}')
                    lines.append(f"{name}_sum{{{text}}} {_number(histogram.sum)}")
                    lines.append(f"{name}_count{{{text}}} {cumulative}")
        return "\n".join(lines) + "\n"

    def exposition(self) -> bytes:
        return self._tf_serving_text().encode() + prometheus_client.generate_latest(self.registry)
