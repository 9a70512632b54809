"""Loaded versions and their life cycle, as TF Serving's ServerCore manages them.

A `ModelManager` follows a ModelServerConfig (from --model_config_file, or one model from
--model_name/--model_base_path): it polls each model's base path for integer version
directories, loads what the version policy selects (replaying the version's warm-up requests
before it reports AVAILABLE), applies version labels once their versions are available, and
unloads versions the policy no longer selects only after their replacements are available.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import math
import os
import threading
import time

import grpc
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import get_model_status_pb2, prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from cardio import features as F
from cardio.serving import config as config_lib, memory
from cardio.serving.batching import Batcher
from cardio.serving.errors import ServingError, from_tensorflow

log = logging.getLogger("cardio.serve")
State = get_model_status_pb2.ModelVersionStatus.State
MAX_WARMUP_RECORDS = 1000   # TF Serving reads at most this many
# Model calls with a deadline run on these (per version), unbatched; TF Serving's default
# gRPC workers, 4 per core, call the model at most that many at once too.
RUN_THREADS = 4 * (os.cpu_count() or 1)


def dtype_name(enum: int) -> str:
    """TensorFlow's spelling of a dtype in error messages ("float", "string", "int64")."""
    name = types_pb2.DataType.Name(enum)
    return name[3:].lower() if name.startswith("DT_") else name


# Bytes each string element costs beyond its characters once expanded: the list and object
# array pointers tf.make_ndarray builds (8 + 8) and the tensor's tstring (32).
STRING_OVERHEAD = 48


@dataclasses.dataclass
class Limits:
    """Per-tensor caps checked on a request's TensorProto *before* it is expanded: a proto may
    declare a shape far larger than the values it carries (TensorFlow repeats the last value),
    so a 61-byte request could otherwise allocate gigabytes. With a `budget`
    (serving/memory.py), a request also holds its expanded size from it while it runs. The
    server sets the caps once its first models are loaded (they derive from its idle size)."""
    max_tensor_elements: int = 1 << 28
    max_tensor_bytes: int = 512 << 20
    budget: memory.Budget | None = dataclasses.field(default=None, compare=False)

    def check(self, alias: str, proto) -> int:
        """The bytes `proto` expands to, whatever its encoding (values repeated to fill its
        shape, tensor_content, strings); refused past the caps."""
        dims = [d.size for d in proto.tensor_shape.dim]
        if any(d < 0 for d in dims):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {alias!r}: shape {dims} has a negative dimension")
        elements = math.prod(dims)
        if elements > self.max_tensor_elements:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {alias!r}: shape {dims} has {elements} elements; at most "
                               f"{self.max_tensor_elements} are accepted per tensor "
                               f"(--max_tensor_elements)")
        if proto.dtype == types_pb2.DT_STRING:
            given = proto.string_val
            last = len(given[-1]) if given else 0
            size = (sum(len(v) for v in given[:elements]) + max(elements - len(given), 0) * last
                    + elements * STRING_OVERHEAD)
        else:
            size = elements * tf.dtypes.as_dtype(proto.dtype).size
        if size > self.max_tensor_bytes:
            raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"input {alias!r}: shape {dims} expands to about {size} bytes; at "
                               f"most {self.max_tensor_bytes} are accepted per tensor "
                               f"(--max_tensor_bytes)")
        return size

    @contextlib.contextmanager
    def admitted(self, tensors: dict):
        """Holds the request's expanded size from the budget while it runs (checked first, so
        a request that does not fit is refused before anything is built)."""
        size = memory.COPIES * sum(self.check(a, p) for a, p in tensors.items())
        if self.budget is None:
            yield
            return
        with self.budget.held(size, "the request"):
            yield


class Servable:
    """One loaded version: its signatures, validated calls and a count of model calls."""

    def __init__(self, name: str, version: int, path: str, batching: config_lib.BatchingConfig | None,
                 limits: "Limits | None" = None):
        self.name, self.version, self.path = name, version, path
        self.limits = limits or Limits()
        if tf.io.gfile.exists(os.path.join(path, "export.meta")):
            # TF Serving's answer (session_bundle/oss/session_bundle_util.cc).
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                               "Session Bundle is deprecated and removed.")
        with tf.io.gfile.GFile(os.path.join(path, "saved_model.pb"), "rb") as f:
            saved_model = saved_model_pb2.SavedModel.FromString(f.read())
        meta_graph = next((g for g in saved_model.meta_graphs
                           if "serve" in g.meta_info_def.tags), None)
        if meta_graph is None:
            raise ValueError(f"{path}: no MetaGraph tagged 'serve'")
        self.signature_defs: dict[str, meta_graph_pb2.SignatureDef] = dict(meta_graph.signature_def)
        self._loaded = self._session = None
        if meta_graph.object_graph_def.nodes:
            self._loaded = tf.saved_model.load(path, tags=["serve"])
        else:
            # A TF1 SavedModel (no object graph): into a session, as TF Serving's
            # SavedModelBundle loads it; TensorFlow 2's loader re-infers shapes of graphs
            # written by old TensorFlow and refuses some (TF Serving's saved_model_half_plus_three:
            # its ParseExample).
            graph = tf.Graph()
            self._session = tf.compat.v1.Session(graph=graph)
            with graph.as_default():
                tf.compat.v1.saved_model.loader.load(self._session, ["serve"], path)
        self.model_calls = 0
        self._calls_lock = threading.Lock()
        self._batcher = Batcher(self.run, batching, f"{name}-{version}") if batching else None
        self._runs = concurrent.futures.ThreadPoolExecutor(RUN_THREADS, f"run-{name}-{version}")

    def signature(self, name: str) -> meta_graph_pb2.SignatureDef:
        name = name or "serving_default"
        if name not in self.signature_defs:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               f'Serving signature key "{name}" not found.')
        return self.signature_defs[name]

    def validate(self, signature_name: str, tensors: dict,
                 check_dtypes: bool = True) -> tuple[dict, int | None]:
        """TensorProtos of a request -> ({alias: ndarray}, rows), or the error TF Serving gives
        for a missing, extra or mistyped input (`check_dtypes` False: serialized Examples, fed
        whatever dtype the signature declares, as TF Serving's classifier and regressor do).
        Shapes are the model's to judge (TF Serving feeds what it gets); `rows` is the common
        0th dimension, None when there is none.
        Sizes are checked against the limits before any tensor is built."""
        signature = self.signature(signature_name)
        expected = set(signature.inputs)
        for alias in tensors:
            if alias not in expected:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"input tensor alias not found in signature: {alias}. Inputs "
                                   f"expected to be in the set {{{','.join(sorted(expected))}}}.")
        missing = expected - set(tensors)
        if missing:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input size does not match signature: {len(tensors)}!="
                               f"{len(expected)}. Missing but required: "
                               f"{{{','.join(sorted(missing))}}}.")
        arrays, rows = {}, set()
        for index, alias in enumerate(sorted(expected)):
            info, proto = signature.inputs[alias], tensors[alias]
            if check_dtypes and proto.dtype != info.dtype:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Expects arg[{index}] to be {dtype_name(info.dtype)} but "
                                   f"{dtype_name(proto.dtype)} is provided")
            self.limits.check(alias, proto)
            try:
                array = tf.make_ndarray(proto)
            except Exception as error:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"input {alias!r}: malformed TensorProto ({error})") from None
            arrays[alias] = array
            rows.add(array.shape[0] if array.ndim else None)
        return arrays, (rows.pop() if len(rows) == 1 else None)

    def run(self, signature_name: str, inputs: dict) -> dict:
        """One model call on validated inputs -> {alias: ndarray}."""
        signature = self.signature_defs[signature_name]
        with self._calls_lock:
            self.model_calls += 1
        try:
            if self._session is not None:       # a TF1 SavedModel: its tensors by name
                return self._session.run(
                    {alias: info.name for alias, info in signature.outputs.items()},
                    {signature.inputs[alias].name: value for alias, value in inputs.items()})
            function = self._loaded.signatures[signature_name]
            outputs = function(**{alias: tf.constant(value, tf.dtypes.as_dtype(
                signature.inputs[alias].dtype)) for alias, value in inputs.items()})
        except tf.errors.OpError as error:
            raise from_tensorflow(error) from None
        except (TypeError, ValueError) as error:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None
        return {alias: value.numpy() for alias, value in outputs.items()}

    def infer(self, signature_name: str, inputs: dict, rows: int | None,
              timeout: float | None = None) -> dict:
        """A request's call: through the batcher when batching is on."""
        signature_name = signature_name or "serving_default"
        if self._batcher is None:
            if timeout is None:
                return self.run(signature_name, inputs)
            # On a thread of its own so the caller answers at its deadline; a model call cannot
            # be stopped, so it runs on, but on at most `_runs` threads.
            try:
                future = self._runs.submit(self.run, signature_name, inputs)
            except RuntimeError:    # the version is being unloaded: a late request runs here
                return self.run(signature_name, inputs)
            try:
                return future.result(timeout=max(timeout, 0))
            except concurrent.futures.TimeoutError:
                future.cancel()      # still queued: never runs
                raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                   "Deadline exceeded waiting for the model to run") from None
        if rows is None:   # TF Serving's batching session refuses what it cannot split in rows
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               "Batching session Run() input tensors must have equal "
                               "0th-dimension size")
        if rows == 0:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               "empty batch: every input has 0 rows; send at least one")
        return self._batcher.submit(signature_name, inputs, rows, timeout)

    def warm_up(self, iterations: int):
        """Replays assets.extra/tf_serving_warmup_requests (Predict and Classify logs)."""
        from cardio.serving import service  # the request handling the gRPC services use

        path = os.path.join(self.path, F.ASSETS_EXTRA, F.WARMUP_FILE)
        if not tf.io.gfile.exists(path):
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(path).take(MAX_WARMUP_RECORDS):
            entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            for _ in range(iterations):
                if entry.HasField("predict_log"):
                    service.predict(self, entry.predict_log.request)
                elif entry.HasField("classify_log"):
                    service.classify(self, entry.classify_log.request, method_check=False)
                else:
                    raise ValueError(f"{path}: warm-up record {count} is neither a Predict nor "
                                     f"a Classify log")
            count += 1
        return count

    def close(self):
        if self._batcher:
            self._batcher.close()
        self._runs.shutdown(wait=False)
        if self._session is not None:
            self._session.close()


@dataclasses.dataclass
class VersionStatus:
    state: int = State.START
    error: ServingError | None = None
    servable: Servable | None = None


def select_versions(policy, on_disk: list[int]) -> list[int]:
    """The versions a ModelVersionPolicy serves (default: the latest one)."""
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return list(on_disk)
    if kind == "specific":
        return [v for v in on_disk if v in set(policy.specific.versions)]
    count = policy.latest.num_versions if kind == "latest" and policy.latest.num_versions else 1
    return on_disk[-count:]


class ModelManager:
    def __init__(self, batching: config_lib.BatchingConfig | None = None,
                 warmup_iterations: int = 1, enable_warmup: bool = True,
                 max_num_load_retries: int = 5, load_retry_interval_micros: int = 60_000_000,
                 limits: Limits | None = None, metrics=None):
        """`metrics` (serving/metrics.py's Metrics): each load attempt is recorded."""
        self.batching, self.warmup_iterations = batching, warmup_iterations
        self.metrics = metrics
        self.enable_warmup = enable_warmup
        # TF Serving's --max_num_load_retries and --load_retry_interval_micros (same defaults).
        self.max_num_load_retries = max_num_load_retries
        self.load_retry_interval = load_retry_interval_micros / 1e6
        self.limits = limits or Limits()
        self.stopping = threading.Event()       # cuts retry waits short at shutdown
        self._config: list[model_server_config_pb2.ModelConfig] = []
        self._versions: dict[str, dict[int, VersionStatus]] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self._lock = threading.RLock()          # guards the three maps above
        self._reconcile_lock = threading.Lock()   # one load/unload pass at a time

    # --- configuration ------------------------------------------------------------------------

    def set_config(self, config: model_server_config_pb2.ModelServerConfig):
        if config.WhichOneof("config") != "model_config_list":
            raise ValueError("only model_config_list is supported (no custom_model_config)")
        names = [m.name for m in config.model_config_list.config]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate model names in the config: {names}")
        for model in config.model_config_list.config:
            if model.model_platform not in ("", "tensorflow"):
                raise ValueError(f"model {model.name}: platform {model.model_platform!r} is not "
                                 f"supported (tensorflow only)")
            if not model.base_path:
                raise ValueError(f"model {model.name}: base_path is empty")
        with self._lock:
            self._config = list(config.model_config_list.config)

    # --- the load / unload pass ---------------------------------------------------------------

    def reconcile(self):
        """Loads what the config and the version directories call for, applies labels, unloads
        what is no longer wanted. Called at start, on every poll and on config reloads."""
        with self._reconcile_lock:
            with self._lock:
                config = list(self._config)
            for model in config:
                self._reconcile_model(model)
            configured = {m.name for m in config}
            for name in list(self._versions):
                if name not in configured:
                    self._unload(name, [v for v, s in self._versions[name].items()
                                        if s.state == State.AVAILABLE])
                    with self._lock:
                        self._labels.pop(name, None)

    def _reconcile_model(self, model):
        try:
            directories = config_lib.version_directories(model.base_path)
        except tf.errors.OpError as error:
            log.error("model %s: cannot list %s: %s", model.name, model.base_path, error)
            return
        if not directories:
            log.warning("model %s: no versions found under %s", model.name, model.base_path)
        wanted = select_versions(model.model_version_policy, sorted(directories))
        with self._lock:
            known = self._versions.setdefault(model.name, {})
            # A version whose load failed (after its retries) stays END until it disappears.
            to_load = [v for v in wanted if v not in known or known[v].state == State.END
                       and known[v].error is None]
            for version in [v for v, s in known.items() if s.error and v not in directories]:
                del known[version]
        for version in to_load:
            self._load(model.name, version, os.path.join(model.base_path, directories[version]))
        self._apply_labels(model)
        with self._lock:
            stale = self._unloadable(known, wanted)
        self._unload(model.name, stale)

    @staticmethod
    def _unloadable(known: dict, wanted: list[int]) -> list[int]:
        """TF Serving's AvailabilityPreservingPolicy, for every version policy: versions no longer
        wanted are unloaded once a wanted version is available; until then the newest of them
        keeps serving (a failed or half-copied new version never leaves the model unserved)."""
        stale = sorted(v for v, s in known.items() if v not in wanted and s.state == State.AVAILABLE)
        if any(known[v].state == State.AVAILABLE for v in wanted if v in known):
            return stale
        return stale[:-1]

    def _load(self, name: str, version: int, path: str):
        status = VersionStatus(State.LOADING)
        with self._lock:
            self._versions[name][version] = status
        attempts = 1 + max(self.max_num_load_retries, 0)
        for attempt in range(1, attempts + 1):
            log.info("Loading servable: {name: %s version: %d}", name, version)
            started = time.monotonic()
            try:
                servable = self._load_once(name, version, path)
                if self.metrics is not None:
                    self.metrics.loaded(path, True, (time.monotonic() - started) * 1e6)
                break
            except Exception as error:   # a broken version fails alone; the server keeps serving
                if self.metrics is not None:
                    self.metrics.loaded(path, False, (time.monotonic() - started) * 1e6)
                message = str(error).splitlines()[0] if str(error) else type(error).__name__
                log.error("Loading servable: {name: %s version: %d} failed (attempt %d of %d): "
                          "%s", name, version, attempt, attempts, message)
                if attempt == attempts or self.stopping.wait(self.load_retry_interval):
                    with self._lock:
                        status.state = State.END
                        status.error = ServingError(
                            error.code if isinstance(error, ServingError)
                            else grpc.StatusCode.UNKNOWN, message)
                    return
        with self._lock:
            status.servable, status.state = servable, State.AVAILABLE
        log.info("Successfully loaded servable version {name: %s version: %d}", name, version)

    def _load_once(self, name: str, version: int, path: str) -> Servable:
        servable = Servable(name, version, path, self.batching, self.limits)
        if self.enable_warmup:
            try:
                replayed = servable.warm_up(self.warmup_iterations)
            except Exception:
                servable.close()
                raise
            if replayed:
                log.info("Finished reading warmup data for model at %s. Number of warmup "
                         "records read: %d.", path, replayed)
        return servable

    def _unload(self, name: str, versions: list[int]):
        for version in versions:
            with self._lock:
                status = self._versions[name][version]
                status.state = State.UNLOADING
                servable, status.servable = status.servable, None
            servable.close()       # in-flight requests hold their own reference and finish
            with self._lock:
                status.state = State.END
            log.info("Done unloading servable version {name: %s version: %d}", name, version)

    def _apply_labels(self, model):
        """Labels move only to available versions, as TF Serving requires; a label pointing
        elsewhere keeps its previous version and is logged."""
        with self._lock:
            versions = self._versions.get(model.name, {})
            labels = dict(self._labels.get(model.name, {}))
            for label, version in model.version_labels.items():
                if version in versions and versions[version].state == State.AVAILABLE:
                    labels[label] = version
                else:
                    log.error("model %s: label %r -> version %d, which is not available; the "
                              "label keeps %s", model.name, label, version, labels.get(label))
            for label in set(labels) - set(model.version_labels):
                del labels[label]
            self._labels[model.name] = labels

    # --- lookups for requests -----------------------------------------------------------------

    def resolve(self, model_spec) -> Servable:
        """The servable a request's ModelSpec names, or TF Serving's NOT_FOUND / INVALID_ARGUMENT."""
        if not model_spec.name:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
        name = model_spec.name
        with self._lock:
            versions = self._versions.get(name, {})
            choice = model_spec.WhichOneof("version_choice")
            if choice == "version_label":
                version = self._labelled_version(name, model_spec.version_label)
                request = f"Specific({name}, {version})"
            elif choice == "version":
                version = model_spec.version.value
                request = f"Specific({name}, {version})"
            else:
                available = [v for v, s in versions.items() if s.state == State.AVAILABLE]
                version = max(available) if available else None
                request = f"Latest({name})"
            status = versions.get(version)
            if status is None or status.state != State.AVAILABLE or status.servable is None:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Servable not found for request: {request}")
            return status.servable

    def _labelled_version(self, name: str, label: str) -> int:
        """The version a label points at; TF Serving answers INVALID_ARGUMENT for an unknown one.
        Called with the lock held."""
        if label not in self._labels.get(name, {}):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Unrecognized servable version label: {label}")
        return self._labels[name][label]

    def statuses(self, model_spec) -> list[tuple[int, VersionStatus]]:
        """(version, status) pairs for GetModelStatus."""
        name = model_spec.name
        if not name:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing model name in request.")
        with self._lock:
            versions = self._versions.get(name)
            if not versions:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find any versions of model {name}")
            choice = model_spec.WhichOneof("version_choice")
            if choice == "version_label":
                wanted = [self._labelled_version(name, model_spec.version_label)]
            elif choice == "version":
                wanted = [model_spec.version.value]
                if wanted[0] not in versions:
                    raise ServingError(grpc.StatusCode.NOT_FOUND,
                                       f"Could not find version {wanted[0]} of model {name}")
            else:
                wanted = sorted(versions)
            return [(v, dataclasses.replace(versions[v])) for v in wanted]

    def available(self) -> dict[str, list[int]]:
        with self._lock:
            return {name: sorted(v for v, s in versions.items() if s.state == State.AVAILABLE)
                    for name, versions in self._versions.items()}

    def labels(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {name: dict(labels) for name, labels in self._labels.items()}

    def close(self):
        self.stopping.set()
        with self._lock:
            names = {n: [v for v, s in vs.items() if s.state == State.AVAILABLE]
                     for n, vs in self._versions.items()}
        for name, versions in names.items():
            self._unload(name, versions)
