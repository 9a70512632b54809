"""`cardio serve`: a drop-in for `tensorflow_model_server` on one machine.

It takes tensorflow_model_server's command-line flags for what it implements (FLAGS below) and
refuses, by name, the ones it does not; it serves TF Serving's gRPC API (serving/service.py)
from the same models.config, batching parameters file and version directories.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import threading
import time

import grpc
import tensorflow as tf
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from cardio.serving import (config as config_lib, memory, metrics as metrics_lib, rest,
                            service)
from cardio.serving import errors
from cardio.serving.models import Limits, ModelManager

log = logging.getLogger("cardio.serve")


@dataclasses.dataclass
class ServerOptions:
    port: int = 8500
    model_name: str = "default"
    model_base_path: str = ""
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: int = 0
    file_system_poll_wait_seconds: int = 1
    enable_batching: bool = False
    batching_parameters_file: str = ""
    grpc_channel_arguments: str = ""
    grpc_max_threads: int = 0                 # 0: 4 per core, as TF Serving
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 1
    enable_signature_method_name_check: bool = False
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60_000_000
    rest_api_port: int = 0                    # 0: no REST API, as TF Serving
    rest_api_num_threads: int = 0             # 0: 4 per core, as TF Serving
    rest_api_timeout_in_ms: int = 30_000
    monitoring_config_file: str = ""
    # cardio serve's own flags (hardening; TF Serving has no equivalent):
    bind_address: str = "0.0.0.0"             # interface the gRPC and REST ports listen on
    allow_reload_config_request: bool = True  # false: HandleReloadConfigRequest is refused
    reload_config_allowed_roots: str = ""     # comma-separated; reloaded base paths must be under one
    # Memory caps: 0 derives them from --memory_limit_bytes (serving/memory.py's formula).
    memory_limit_bytes: int = 0               # 0: $CARDIO_SERVE_MEMORY_LIMIT_BYTES, cgroup, RAM
    grpc_max_concurrent_rpcs: int = 0         # 0: 4 per gRPC worker; past it RESOURCE_EXHAUSTED
    max_tensor_elements: int = 1 << 28        # per request tensor, checked before it is expanded
    max_tensor_bytes: int = 0
    rest_api_max_body_bytes: int = 0          # larger bodies: 413, refused before they are read
    rest_api_header_timeout_in_ms: int = 10_000   # connect (or last answer) to a whole header
    rest_api_body_timeout_in_ms: int = 30_000     # header to a whole body
    rest_api_max_connections: int = 256       # open REST connections; past it: 503 and closed


# tensorflow_model_server's flags that `cardio serve` implements, with their types.
FLAGS = {field.name: field.type for field in dataclasses.fields(ServerOptions)}
# Its other flags: named so that a script using them gets a clear refusal, not a silent no-op.
UNIMPLEMENTED_FLAGS = (
    "grpc_socket_path", "rest_api_enable_cors_support", "enable_per_model_batching_parameters",
    "allow_version_labels_for_unavailable_models", "num_load_threads", "num_unload_threads",
    "flush_filesystem_caches",
    "tensorflow_session_parallelism", "tensorflow_intra_op_parallelism",
    "tensorflow_inter_op_parallelism", "use_alts_credentials", "ssl_config_file",
    "platform_config_file", "per_process_gpu_memory_fraction", "saved_model_tags",
     "remove_unused_fields_from_bundle_metagraph",
    "prefer_tflite_model", "num_tflite_pools", "num_tflite_interpreters_per_pool",
    "num_tflite_interpreters", "xla_cpu_compilation_enabled", "enable_profiler",
    "thread_pool_factory_config_file", "mixed_precision", "skip_initialize_tpu",
    "enable_grpc_healthcheck_service", "enable_model_warmup_for_all_versions",
    "tensorflow_session_config_file", "use_tflite_model",
)


class FlagError(ValueError):
    pass


def _bool(name: str, text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise FlagError(f"--{name}: expected true or false, got {text!r}")


def parse_flags(argv: list[str]) -> ServerOptions:
    """tensorflow_model_server's flag syntax: --name=value, --name value, and for booleans
    --name, --name=true|false or --noname."""
    options, args = ServerOptions(), list(argv)
    while args:
        arg = args.pop(0)
        if not arg.startswith("-") or arg in ("-", "--"):
            raise FlagError(f"unexpected argument {arg!r}; tensorflow_model_server takes only flags")
        name, has_value, value = arg.lstrip("-").partition("=")
        negated = not has_value and name.startswith("no") and FLAGS.get(name[2:]) == "bool"
        if negated:
            name = name[2:]
        if name in ("version", "help", "h"):
            raise FlagError(f"--{name}: see `cardio serve --help`")
        if name not in FLAGS:
            if name in UNIMPLEMENTED_FLAGS:
                raise FlagError(f"--{name} is a tensorflow_model_server flag that cardio serve does "
                                f"not implement; run the official TF Serving image for it")
            raise FlagError(f"unknown flag --{name} (cardio serve implements: "
                            f"{', '.join('--' + f for f in FLAGS)})")
        kind = FLAGS[name]
        if kind == "bool":
            setattr(options, name, False if negated else (_bool(name, value) if has_value else True))
            continue
        if not has_value:
            if not args:
                raise FlagError(f"--{name} needs a value")
            value = args.pop(0)
        if kind == "int":
            try:
                value = int(value)
            except ValueError:
                raise FlagError(f"--{name}: expected an integer, got {value!r}") from None
        setattr(options, name, value)
    if not options.model_base_path and not options.model_config_file:
        raise FlagError("Both --model_base_path and --model_config_file are empty: name the model "
                        "directory or the models.config to serve")
    return options


def channel_arguments(text: str, max_message_bytes: int = -1) -> list[tuple[str, object]]:
    """--grpc_channel_arguments "k=v,k=v" -> gRPC options. Received messages are capped at
    `max_message_bytes` (-1: unlimited, as in TF Serving), sent ones unlimited, unless set
    here."""
    arguments = {"grpc.max_receive_message_length": max_message_bytes,
                 "grpc.max_send_message_length": -1}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise FlagError(f"--grpc_channel_arguments: {item!r} is not key=value")
        arguments[key] = int(value) if value.lstrip("-").isdigit() else value
    return list(arguments.items())


def model_server_config(options: ServerOptions) -> model_server_config_pb2.ModelServerConfig:
    if options.model_config_file:
        return config_lib.read_models_config(options.model_config_file)
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.config.add(name=options.model_name,
                                        base_path=options.model_base_path,
                                        model_platform="tensorflow")
    return config


class Server:
    """The manager, its polling thread and the gRPC server. `start()` returns once the initial
    models are loaded (as TF Serving, which opens its port only then)."""

    def __init__(self, options: ServerOptions, host: str | None = None):
        self.options, self.host = options, host or options.bind_address
        batching = None
        if options.enable_batching:
            batching = config_lib.BatchingConfig()
            if options.batching_parameters_file:
                with tf.io.gfile.GFile(options.batching_parameters_file) as f:
                    batching = config_lib.parse_batching_parameters(
                        f.read(), options.batching_parameters_file)
            else:   # TF Serving's defaults when no file is given
                batching = config_lib.parse_batching_parameters("", "defaults")
        self.workers = options.grpc_max_threads or 4 * (os.cpu_count() or 1)
        self.max_concurrent_rpcs = options.grpc_max_concurrent_rpcs or 4 * self.workers
        self.memory_limit, self._memory_source = memory.memory_limit(options.memory_limit_bytes)
        self.budget = memory.Budget(0)
        self.limits = Limits(options.max_tensor_elements, options.max_tensor_bytes, self.budget)
        self._derive_caps()     # for the warm-up requests of the first loads; again after them
        self.metrics_path = (metrics_lib.read_monitoring_config(options.monitoring_config_file)
                             if options.monitoring_config_file else None)
        self.metrics = metrics_lib.Metrics() if self.metrics_path else None
        self.manager = ModelManager(batching, options.num_request_iterations_for_warmup,
                                    options.enable_model_warmup, options.max_num_load_retries,
                                    options.load_retry_interval_micros, self.limits, self.metrics)
        self.manager.set_config(model_server_config(options))
        self._stop = threading.Event()
        self._poller = None
        self._grpc = None
        self._rest = None
        self.port = self.rest_port = None

    def _derive_caps(self):
        """serving/memory.py's caps from the memory limit and the resident size now; a cap
        given by its flag stays."""
        self.caps = memory.derived(self.memory_limit, memory.resident(),
                                   self.max_concurrent_rpcs)
        self.budget.total = self.caps["budget"]
        self.limits.max_tensor_bytes = (self.options.max_tensor_bytes
                                        or self.caps["max_tensor_bytes"])

    def start(self) -> int:
        self.manager.reconcile()
        self._derive_caps()
        log.info("memory limit %d bytes (%s); caps: %s", self.memory_limit, self._memory_source,
                 self.caps)
        self._grpc_options = channel_arguments(self.options.grpc_channel_arguments,
                                               self.caps["max_message_bytes"])
        # Past max_concurrent_rpcs (running or queued for a worker), gRPC itself answers
        # RESOURCE_EXHAUSTED before reading the request.
        # One worker more than --grpc_max_threads: the one reload request that may wait.
        self._grpc = grpc.server(concurrent.futures.ThreadPoolExecutor(self.workers + 1),
                                 options=self._grpc_options,
                                 maximum_concurrent_rpcs=self.max_concurrent_rpcs)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            service.PredictionService(self.manager,
                                      self.options.enable_signature_method_name_check,
                                      self.metrics), self._grpc)
        roots = [r.strip() for r in self.options.reload_config_allowed_roots.split(",") if r.strip()]
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            service.ModelService(self.manager, self.options.allow_reload_config_request, roots),
            self._grpc)
        self.port = self._grpc.add_insecure_port(f"{self.host}:{self.options.port}")
        if not self.port:
            raise OSError(f"cannot bind {self.host}:{self.options.port}")
        self._grpc.start()
        if self.options.rest_api_port:
            api = rest.RestApi(self.manager, self.options.enable_signature_method_name_check,
                               self.options.rest_api_timeout_in_ms, self.metrics,
                               self.metrics_path, self.budget)
            limits = rest.HttpLimits(
                max_body_bytes=(self.options.rest_api_max_body_bytes
                                or self.caps["rest_api_max_body_bytes"]),
                header_timeout=self.options.rest_api_header_timeout_in_ms / 1000,
                body_timeout=self.options.rest_api_body_timeout_in_ms / 1000,
                max_connections=self.options.rest_api_max_connections)
            # --rest_api_port=-1 (cardio serve only): any free port, as --port=0 is for gRPC.
            self._rest = rest.RestServer(
                api, self.host, max(self.options.rest_api_port, 0),
                self.options.rest_api_num_threads or 4 * (os.cpu_count() or 1), limits)
            self._rest.start()
            self.rest_port = self._rest.port
            log.info("Exporting HTTP/REST API at:%s:%d ...", self.host, self.rest_port)
        self._poller = threading.Thread(target=self._poll, name="poll", daemon=True)
        self._poller.start()
        log.info("Running gRPC ModelServer at %s:%d ...", self.host, self.port)
        return self.port

    def _poll(self):
        """Reloads models.config every --model_config_file_poll_wait_seconds (0: never) and
        looks for new version directories every --file_system_poll_wait_seconds."""
        interval = max(self.options.file_system_poll_wait_seconds, 0.2)
        config_every = self.options.model_config_file_poll_wait_seconds
        last_config = time.monotonic()
        while not self._stop.wait(interval):
            if self.options.model_config_file and config_every > 0 and \
                    time.monotonic() - last_config >= config_every:
                last_config = time.monotonic()
                try:
                    self.manager.set_config(model_server_config(self.options))
                except (ValueError, tf.errors.OpError) as error:
                    log.error("keeping the previous config: %s", error)
            try:
                self.manager.reconcile()
            except Exception:    # never let the poller die; the next poll tries again
                log.exception("reconcile failed")

    def wait(self):
        self._grpc.wait_for_termination()

    def stop(self, grace: float = 1.0):
        self._stop.set()
        self.manager.stopping.set()
        if self._rest:
            self._rest.stop()
        if self._grpc:
            self._grpc.stop(grace).wait()
        if self._poller:
            self._poller.join()
        self.manager.close()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def main(argv: list[str], echo=print) -> int:
    """`cardio serve FLAGS...`: serves until SIGINT or SIGTERM. Logs go to stderr; once the
    models are loaded, one JSON line on stdout says where it listens and what it serves."""
    import json
    import signal

    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    options = parse_flags(argv)
    try:
        server = Server(options)
    except (ValueError, tf.errors.OpError) as error:
        # A config file missing, unreadable, not parsing or invalid: TF Serving's one line on
        # stdout and its exit status (model_servers/main.cc: "Failed to start server. Error: "
        # << status; return -1). A parse error's line and column go to stderr first, where
        # protobuf's TextFormat logs them.
        if isinstance(error, tf.errors.OpError):
            code, message = errors.code_from_number(error.error_code).name, error.message
        else:
            code, message = "INVALID_ARGUMENT", str(error)
        if getattr(error, "detail", None):
            print(error.detail, file=sys.stderr)
        print(f"Failed to start server. Error: {code}: {message}")
        return 255
    server.start()
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    echo(json.dumps({"port": server.port, "rest_api_port": server.rest_port,
                     "available": server.manager.available(),
                     "labels": server.manager.labels(), "memory_caps": server.caps}))
    done.wait()
    log.info("shutting down")
    server.stop(grace=5.0)
    return 0
