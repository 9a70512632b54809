"""Runs a compiled PipelineSpec on this machine task by task, as Kubeflow Pipelines' v2 driver and
launcher would: each container task through its own command and arguments with `{{$}}` replaced
by an ExecutorInput, its lifecycle `preCacheCheck` hook first (TFX's ExampleGen driver), importer
tasks resolved to artifacts, runtime parameters from the run's arguments over the spec's
defaults, and every output artifact placed under the spec's `defaultPipelineRoot`.

Why not `kfp.local`: its orchestrator (kfp 2.16) runs container and importer tasks, but ignores
lifecycle hooks, so TFX's ExampleGen executor would get its input pattern with `{SPAN}`
unresolved, and it reads output artifacts back as KFP DSL artifacts, dropping TFX's types. The
task dependencies are kfp.local's own reading (`graph_utils.build_dependency_map`); independent
tasks run side by side, as on Kubeflow.

Artifact URIs follow KFP's launcher: `<pipeline root>/<run id>/<task>/<output key>`. As KFP's
launcher does, each task's output artifacts are recorded in ML Metadata (type named by the schema
title, metadata as custom properties, numbers as doubles), which the pods reach through
`METADATA_GRPC_SERVICE_HOST`/`_PORT`: here MLMD's own gRPC API served from a SQLite store
(`MetadataService`), since the MLMD server binary is not on PyPI.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import grpc
import yaml
from google.protobuf import json_format, message_factory
from kfp.local import graph_utils
from kfp.pipeline_spec import pipeline_spec_pb2

EXECUTOR_INPUT = "{{$}}"


class MetadataService:
    """ML Metadata's gRPC service (every unary method of `ml_metadata.MetadataStoreService`)
    answered by MLMD's own store on a SQLite file, on a localhost port."""

    def __init__(self, sqlite_path: str):
        from concurrent import futures

        from ml_metadata import metadata_store
        from ml_metadata.proto import metadata_store_pb2, metadata_store_service_pb2

        config = metadata_store_pb2.ConnectionConfig()
        config.sqlite.filename_uri = sqlite_path
        config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
        self.store = metadata_store.MetadataStore(config)
        service = metadata_store_service_pb2.DESCRIPTOR.services_by_name["MetadataStoreService"]
        handlers = {}
        for method in service.methods:
            if method.client_streaming or method.server_streaming:
                continue
            request = message_factory.GetMessageClass(method.input_type)
            response = message_factory.GetMessageClass(method.output_type)
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                self._handler(method.name, response),
                request_deserializer=request.FromString,
                response_serializer=response.SerializeToString)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(service.full_name, handlers)])
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def _handler(self, name, response_class):
        from ml_metadata import errors

        def handle(request, context):
            response = response_class()
            try:
                self.store._call_method(name, request, response)
            except errors.StatusError as e:
                context.abort(grpc.StatusCode(next(c for c in grpc.StatusCode
                                                   if c.value[0] == e.error_code)), str(e))
            return response
        return handle

    def __enter__(self):
        self.server.start()
        return self

    def __exit__(self, *exc):
        self.server.stop(grace=None)

    def record(self, artifacts: list[dict]) -> None:
        """A task's output artifacts, as KFP's launcher publishes them."""
        from ml_metadata.proto import metadata_store_pb2

        for runtime in artifacts:
            kind = runtime["type"]
            title = kind.get("schemaTitle") or yaml.safe_load(kind["instanceSchema"])["title"]
            type_id = self.store.put_artifact_type(metadata_store_pb2.ArtifactType(name=title))
            artifact = metadata_store_pb2.Artifact(
                type_id=type_id, uri=runtime["uri"], state=metadata_store_pb2.Artifact.LIVE)
            for key, value in runtime.get("metadata", {}).items():
                if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                    artifact.custom_properties[key].string_value = json.dumps(value)
                elif isinstance(value, str):
                    artifact.custom_properties[key].string_value = value
                else:
                    artifact.custom_properties[key].double_value = value
            self.store.put_artifacts([artifact])


@dataclasses.dataclass
class TaskRun:
    name: str
    kind: str                       # "container" or "importer"
    seconds: float
    outputs: dict                   # output key -> list of RuntimeArtifact dicts
    executor_input: dict | None = None


@dataclasses.dataclass
class PipelineRun:
    pipeline_root: str
    run_id: str
    tasks: dict                     # task name -> TaskRun, in the order they ran

    def artifact(self, task: str, key: str) -> dict:
        return self.tasks[task].outputs[key][0]


def load_spec(path: str) -> dict:
    """The PipelineSpec YAML as compiled (validated against KFP's proto on the way in)."""
    spec = yaml.safe_load(Path(path).read_text())
    json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())   # KFP would refuse it too
    return spec


def _dependencies(spec: dict) -> dict:
    """Task name -> the tasks it waits for, as kfp.local's orchestrator reads them."""
    tasks = {name: json_format.ParseDict(task, pipeline_spec_pb2.PipelineTaskSpec())
             for name, task in spec["root"]["dag"]["tasks"].items()}
    return graph_utils.build_dependency_map(tasks)


def _parameters(task: dict, arguments: dict) -> dict:
    values = {}
    for name, spec in task.get("inputs", {}).get("parameters", {}).items():
        if "componentInputParameter" in spec:
            values[name] = arguments[spec["componentInputParameter"]]
        elif "runtimeValue" in spec:
            values[name] = spec["runtimeValue"]["constant"]
        else:
            raise NotImplementedError(f"parameter {name}: {spec} (not used by TFX's compiler)")
    return values


def _arguments(spec: dict, given: dict) -> dict:
    """The run's parameters: the spec's defaults, overridden by the run's; a missing required one
    fails as KFP's API does."""
    arguments = {}
    for name, definition in spec["root"].get("inputDefinitions", {}).get("parameters", {}).items():
        if name in given:
            arguments[name] = given[name]
        elif "defaultValue" in definition:
            arguments[name] = definition["defaultValue"]
        else:
            raise ValueError(f"run parameter {name!r} has no default and was not given")
    unknown = set(given) - set(arguments)
    if unknown:
        raise ValueError(f"unknown run parameters: {sorted(unknown)}")
    return arguments


def _run_command(command: list, executor_input: dict, task: str, log_dir: Path, env: dict,
                 timeout: int) -> None:
    argv = [json.dumps(executor_input) if a == EXECUTOR_INPUT else a for a in command]
    log = log_dir / f"{task}.log"
    with open(log, "a") as out:
        result = subprocess.run(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"task {task} exited {result.returncode}; the end of its log "
                           f"({log}):\n{log.read_text()[-5000:]}")


def run(spec_path: str, arguments: dict, work_dir: str, env: dict | None = None,
        timeout: int = 900, parallelism: int = 2) -> PipelineRun:
    """Executes the PipelineSpec YAML at `spec_path`; `work_dir` holds each pod's local files
    (executor output, logs). Raises naming the task that failed."""
    spec = load_spec(spec_path)
    root = spec.get("defaultPipelineRoot")
    if not root:
        raise ValueError("the compiled spec has no defaultPipelineRoot: Kubeflow would write its "
                         "artifacts to the namespace's default store")
    arguments = _arguments(spec, arguments)
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    work, env = Path(work_dir), dict(env or os.environ)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    with MetadataService(str(work / "mlmd.sqlite")) as metadata:
        env.update(METADATA_GRPC_SERVICE_HOST="127.0.0.1",
                   METADATA_GRPC_SERVICE_PORT=str(metadata.port))
        done = _run_tasks(spec, arguments, run_id, work, env, timeout, metadata, parallelism)
    return PipelineRun(root, run_id, done)


def _run_tasks(spec: dict, arguments: dict, run_id: str, work: Path, env: dict, timeout: int,
               metadata: MetadataService, parallelism: int) -> dict:
    """Runs every task once its upstream tasks are done, up to `parallelism` at a time (Kubeflow
    starts independent tasks together)."""
    from concurrent import futures

    dependencies = _dependencies(spec)
    done: dict[str, TaskRun] = {}
    running: dict = {}
    with futures.ThreadPoolExecutor(parallelism) as pool:
        while len(done) < len(dependencies):
            ready = [n for n, upstream in dependencies.items() if n not in done
                     and n not in running.values() and all(u in done for u in upstream)]
            for name in ready[:parallelism - len(running)]:
                running[pool.submit(_run_task, spec, name, arguments, run_id, work, env,
                                    timeout, dict(done))] = name
            if not running:
                raise ValueError(f"tasks waiting on each other: {sorted(set(dependencies) - set(done))}")
            finished, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                done[name] = future.result()   # a failed task raises here, naming itself
                for artifacts in done[name].outputs.values():
                    metadata.record(artifacts)   # published, as KFP's launcher does
    return done


def _run_task(spec: dict, name: str, arguments: dict, run_id: str, work: Path, env: dict,
              timeout: int, done: dict) -> TaskRun:
    root = spec["defaultPipelineRoot"]
    task = spec["root"]["dag"]["tasks"][name]
    component = spec["components"][task["componentRef"]["name"]]
    executor = spec["deploymentSpec"]["executors"][component["executorLabel"]]
    outputs_defined = component.get("outputDefinitions", {}).get("artifacts", {})
    started = time.time()
    if "importer" in executor:
        importer = executor["importer"]
        uri = importer["artifactUri"]
        uri = uri["constant"] if "constant" in uri else arguments[uri["runtimeParameter"]]
        key = next(iter(outputs_defined))
        return TaskRun(name, "importer", time.time() - started, {key: [{
            "name": f"{run_id}/{name}/{key}", "type": importer["typeSchema"], "uri": uri,
            "metadata": importer.get("metadata", {})}]})
    task_dir = work / "pods" / name
    executor_input = {
        "inputs": {"parameterValues": _parameters(task, arguments), "artifacts": {}},
        "outputs": {"artifacts": {}, "outputFile": str(task_dir / "executor_output.json")}}
    inputs_defined = component.get("inputDefinitions", {}).get("artifacts", {})
    for key, source in task.get("inputs", {}).get("artifacts", {}).items():
        producer = source["taskOutputArtifact"]
        artifacts = copy.deepcopy(
            done[producer["producerTask"]].outputs[producer["outputArtifactKey"]])
        for artifact in artifacts:   # typed by the consumer's input definition, as KFP's driver
            artifact["type"] = inputs_defined[key]["artifactType"]
        executor_input["inputs"]["artifacts"][key] = {"artifacts": artifacts}
    for key, definition in outputs_defined.items():
        uri = f"{root.rstrip('/')}/{run_id}/{name}/{key}"
        executor_input["outputs"]["artifacts"][key] = {"artifacts": [{
            "name": f"{run_id}/{name}/{key}", "type": definition["artifactType"],
            "uri": uri, "metadata": {}}]}
    container = executor["container"]
    hook = container.get("lifecycle", {}).get("preCacheCheck")
    if hook:
        # The driver (TFX's ExampleGen: span, version, fingerprint) writes an ExecutorOutput;
        # the launcher stamps its artifacts' metadata on the outputs, and the executor reads
        # its parameters from the same file.
        _run_command(hook["command"] + hook.get("args", []), executor_input, name,
                     work / "logs", env, timeout)
        driven = json.loads((task_dir / "executor_output.json").read_text())
        for key, reported in driven.get("artifacts", {}).items():
            for ours, theirs in zip(executor_input["outputs"]["artifacts"][key]["artifacts"],
                                    reported["artifacts"]):
                ours["metadata"].update(theirs.get("metadata", {}))
    _run_command(container["command"] + container.get("args", []), executor_input, name,
                 work / "logs", env, timeout)
    outputs = copy.deepcopy(executor_input["outputs"]["artifacts"])
    output_file = task_dir / "executor_output.json"
    if output_file.exists():   # the launcher records what the executor reports
        reported = json.loads(output_file.read_text()).get("artifacts", {})
        for key, artifacts in reported.items():
            for ours, theirs in zip(outputs[key]["artifacts"], artifacts["artifacts"]):
                ours["metadata"].update(theirs.get("metadata", {}))
    return TaskRun(name, "container", time.time() - started,
                   {k: v["artifacts"] for k, v in outputs.items()}, executor_input)
