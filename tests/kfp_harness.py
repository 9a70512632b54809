"""Runs a compiled PipelineSpec on this machine task by task, as the **open-source** Kubeflow
Pipelines v2 backend runs it (kubeflow/pipelines, `backend/src/v2`), or, opt-in
(`backend="vertex"`), as Vertex AI Pipelines does. Each simulated step names the upstream file it
follows:

- the run's parameters: the spec's defaults, overridden by the run's (`driver/root_dag.go`);
- task order: kfp.local's reading of the DAG (`graph_utils.build_dependency_map`); independent
  tasks run side by side, as on Kubeflow;
- importer tasks: an MLMD artifact for the URI (`driver/driver.go`, `Importer`);
- output URIs: `<root>/<pipeline>/<run id>/<task>/<uuid>/<key>`, the ExecutorOutput file at the
  launcher's local path of `<root>/<pipeline>/<run id>/<task>/<uuid>` (`driver/driver.go`,
  `provisionOutputs`; `metadata/client.go`, `GenerateOutputURI`, `GetPipeline`); input artifacts
  named by their MLMD id and typed by the consumer's input definition
  (`metadata/converter.go`, `toRuntimeArtifact`; `driver/resolve.go`);
- the cache: a task whose caching is enabled and whose fingerprint (sha256 of its input
  parameters, input artifact names, output artifact specs without URIs, command, arguments and
  image; `cacheutils/cache.go`, `GenerateCacheKey`, `GenerateFingerPrint`; `driver/cache.go`,
  `getFingerPrint`) matches an earlier successful execution is not run: its outputs are the
  earlier execution's (`driver/container.go`, `reuseCachedOutputs` in `driver/cache.go`);
- open-source launcher (`component/launcher_v2.go`): **no lifecycle hook** runs; input artifacts
  are downloaded to `LocalPathForURI` (`minio://B/P` -> `/minio/B/P`, `s3://` -> `/s3/`,
  `gs://` -> `/gcs/`; here those folders sit under each pod's own directory, which the pod
  learns from `CARDIO_LAUNCHER_LOCAL_ROOT`) before the command, output folders are prepared
  (`prepareOutputFolders`, which refuses a root it cannot map), the command runs with `{{$}}`
  replaced by the ExecutorInput (`compileCmdAndArgs`), the ExecutorOutput is merged into the
  outputs (`mergeRuntimeArtifacts`: its URI and metadata win) and each output is uploaded from
  its local path when there is one (`uploadOutputArtifacts`), then recorded in ML Metadata
  (type named by the schema title, metadata as custom properties) and, when cacheable, in the
  cache (`Execute`, `CreateExecutionCache`). The object store is a directory
  (`Cluster.store`): `minio://B/P` is `store/minio/B/P`;
- Vertex (opt-in): the `preCacheCheck` hook first (TFX's ExampleGen driver), its ExecutorOutput
  stamped on the outputs; artifact URIs as they are (any root, local paths included); no cache.

Each task is its own process. A `python -m` command of this interpreter (every TFX task's) is
forked from multiprocessing's fork server, which has imported TFX's entrypoint and the spec's
executor modules once; a pod pays that import itself (about 8.5 s of CPU a task here, half the
executed spec's time). The task's argv, environment, working directory, log and exit status are
its own; any other command runs through `subprocess`.

The Beam arguments run as compiled. The pods reach ML Metadata through
`METADATA_GRPC_SERVICE_HOST`/`_PORT`: here MLMD's own gRPC API served from a SQLite store
(`MetadataService`), since the MLMD server binary is not on PyPI.

Why not `kfp.local`: its orchestrator (kfp 2.16) reads output artifacts back as KFP DSL
artifacts, dropping TFX's types, and has no object store, cache or ML Metadata.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import multiprocessing
import multiprocessing.forkserver
import os
import runpy
import shutil
import subprocess
import sys
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

    def record(self, artifacts: list[dict]) -> list[int]:
        """A task's output artifacts, as KFP's launcher publishes them (launcher_v2.go,
        uploadOutputArtifacts -> RecordArtifact); their MLMD ids."""
        from ml_metadata.proto import metadata_store_pb2

        ids = []
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
            ids += self.store.put_artifacts([artifact])
        return ids


@dataclasses.dataclass
class TaskRun:
    name: str
    kind: str                       # "container" or "importer"
    seconds: float
    outputs: dict                   # output key -> list of RuntimeArtifact dicts
    executor_input: dict | None = None
    cached: bool = False            # skipped: an earlier execution's outputs, by fingerprint
    fingerprint: str = ""


@dataclasses.dataclass
class PipelineRun:
    pipeline_root: str
    run_id: str
    tasks: dict                     # task name -> TaskRun, in the order they finished
    backend: str = "open-source"

    def artifact(self, task: str, key: str) -> dict:
        return self.tasks[task].outputs[key][0]

    def executed(self) -> set:
        return {n for n, t in self.tasks.items() if t.kind == "container" and not t.cached}

    def cached(self) -> set:
        return {n for n, t in self.tasks.items() if t.cached}


# The open-source launcher's local paths (component/launcher_v2.go, LocalPathForURI).
LAUNCHER_FOLDERS = {"gs://": "gcs", "minio://": "minio", "s3://": "s3"}


@dataclasses.dataclass
class Cluster:
    """What outlives a run on a Kubeflow cluster: the object store (`store/<scheme folder>/...`),
    ML Metadata (SQLite behind MLMD's gRPC API) and the cache entries (fingerprint -> the
    execution's outputs; KFP keeps them in its API server's task table, `CreateExecutionCache`)."""
    directory: Path

    def __post_init__(self):
        self.directory = Path(self.directory)
        (self.directory / "store").mkdir(parents=True, exist_ok=True)

    @property
    def store(self) -> Path:
        return self.directory / "store"

    @property
    def metadata_path(self) -> str:
        return str(self.directory / "mlmd.sqlite")

    def object_path(self, uri: str) -> Path | None:
        """Where the object store keeps `uri`, or None for a URI outside it."""
        for prefix, folder in LAUNCHER_FOLDERS.items():
            if uri.startswith(prefix):
                return self.store / folder / uri[len(prefix):]
        return None

    def _cache_file(self) -> Path:
        return self.directory / "cache.json"

    def cache_lookup(self, fingerprint: str) -> dict | None:
        path = self._cache_file()
        return json.loads(path.read_text()).get(fingerprint) if path.exists() else None

    def cache_create(self, fingerprint: str, outputs: dict) -> None:
        path = self._cache_file()
        entries = json.loads(path.read_text()) if path.exists() else {}
        entries[fingerprint] = outputs
        path.write_text(json.dumps(entries))


def launcher_local_path(uri: str, pod_root: Path) -> Path | None:
    """launcher_v2.go LocalPathForURI, under the pod's own root instead of `/`."""
    for prefix, folder in LAUNCHER_FOLDERS.items():
        if uri.startswith(prefix):
            return pod_root / folder / uri[len(prefix):]
    return None


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target, dirs_exist_ok=True)
    else:
        shutil.copy2(source, target)


def fingerprint(task: dict, executor_input: dict, container: dict) -> str:
    """KFP's cache fingerprint (cacheutils/cache.go, GenerateCacheKey and GenerateFingerPrint;
    driver/cache.go, getFingerPrint): sha256 of the JSON of the input artifacts' names, the
    input parameter values, the output artifacts without their URIs, the output parameter
    types, the container's command and arguments as compiled, and its image."""
    inputs, outputs = executor_input["inputs"], executor_input["outputs"]
    key = {
        "inputArtifactNames": {k: {"artifactNames": [a["name"] for a in v["artifacts"]]}
                               for k, v in inputs.get("artifacts", {}).items()},
        "inputParameterValues": inputs.get("parameterValues", {}),
        "outputArtifactsSpec": {k: {"name": v["artifacts"][0]["name"],
                                    "type": v["artifacts"][0]["type"],
                                    "metadata": v["artifacts"][0].get("metadata", {})}
                                for k, v in outputs.get("artifacts", {}).items()},
        "outputParametersSpec": {},
        "containerSpec": {"image": container["image"],
                          "cmdArgs": container["command"] + container.get("args", [])},
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def load_spec(path: str) -> dict:
    """The PipelineSpec YAML as compiled (validated against KFP's proto on the way in)."""
    spec = next(yaml.safe_load_all(Path(path).read_text()))   # the platform spec follows it
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


def _python_module(argv: list, env: dict) -> str | None:
    """The module of a `python -m <module> ...` command whose `python` is this interpreter (as
    the task's PATH finds it), else None."""
    if len(argv) < 3 or argv[1] != "-m":
        return None
    found = shutil.which(argv[0], path=env.get("PATH"))
    same = found and os.path.realpath(found) == os.path.realpath(sys.executable)
    return argv[2] if same else None


def _preloaded_modules(spec: dict) -> list[str]:
    """What every TFX task imports before it does anything: TFX's Kubeflow entrypoint (which the
    compiled command runs, or wraps) and each task's executor module (`--executor_class_path`)."""
    modules = {"tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"}
    for executor in spec["deploymentSpec"]["executors"].values():
        container = executor.get("container") or {}
        argv = container.get("command", []) + container.get("args", [])
        for flag, value in zip(argv, argv[1:]):
            if flag == "--executor_class_path":
                modules.add(value.rsplit(".", 1)[0])
    return sorted(modules)


# Why `python -m` tasks fork from here: the module docstring. The server only imports (no
# TensorFlow runtime exists before the fork).
_FORK_SERVER = multiprocessing.get_context("forkserver")


_preloaded: set = set()


def _preload(spec: dict) -> None:
    """The fork server imports this spec's modules too: restarted (it reads its preload list
    when it starts) when a spec brings modules it has not imported."""
    modules = {__name__, *_preloaded_modules(spec)}
    if modules <= _preloaded:
        return
    if _preloaded:
        multiprocessing.forkserver._forkserver._stop()   # CPython's own; the next task restarts it
    _preloaded.update(modules)
    _FORK_SERVER.set_forkserver_preload(sorted(_preloaded))


def _module_main(module: str, args: list, env: dict, cwd: str, log: str) -> None:
    """In the forked task process: `python -m module *args` with the task's environment."""
    out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(out, 1), os.dup2(out, 2)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def _run_command(command: list, executor_input: dict, task: str, log_dir: Path, env: dict,
                 timeout: int) -> None:
    argv = [json.dumps(executor_input) if a == EXECUTOR_INPUT else a for a in command]
    log = log_dir / f"{task}.log"
    module = _python_module(argv, env)
    if module is None:
        with open(log, "a") as out:
            returncode = subprocess.run(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                        timeout=timeout).returncode
    else:
        process = _FORK_SERVER.Process(target=_module_main, name=task,
                                       args=(module, argv[3:], env, os.getcwd(), str(log)))
        process.start()
        process.join(timeout)
        if process.exitcode is None:
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired(argv, timeout)
        returncode = process.exitcode
    if returncode != 0:
        raise RuntimeError(f"task {task} exited {returncode}; the end of its log "
                           f"({log}):\n{log.read_text()[-5000:]}")


BACKENDS = ("open-source", "vertex")


def run(spec_path: str, arguments: dict, work_dir: str, env: dict | None = None,
        timeout: int = 900, parallelism: int = 2, backend: str = "open-source",
        cluster: Cluster | None = None) -> PipelineRun:
    """Executes the PipelineSpec YAML at `spec_path` as `backend` would; `work_dir` holds each
    pod's local files (executor output, downloaded and produced artifacts, logs), `cluster` what
    outlives the run (object store, ML Metadata, cache; default: in `work_dir`). Raises naming
    the task that failed."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: one of {BACKENDS}")
    spec = load_spec(spec_path)
    _preload(spec)
    root = spec.get("defaultPipelineRoot")
    if not root:
        raise ValueError("the compiled spec has no defaultPipelineRoot: Kubeflow would write its "
                         "artifacts to the namespace's default store")
    work = Path(work_dir)
    cluster = cluster or Cluster(work / "cluster")
    if backend == "open-source":
        if cluster.object_path(root) is None:
            # launcher_v2.go prepareOutputFolders: "failed to generate local storage path".
            raise ValueError(f"pipeline root {root!r}: the open-source launcher has no local path "
                             "for it (LocalPathForURI knows gs://, minio://, s3://)")
        if root.startswith("gs://"):
            raise NotImplementedError("a gs:// root: TensorFlow would write to Google Cloud "
                                      "Storage itself, which this machine cannot reach")
    arguments = _arguments(spec, arguments)
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    env = dict(env or os.environ)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    with MetadataService(cluster.metadata_path) as metadata:
        env.update(METADATA_GRPC_SERVICE_HOST="127.0.0.1",
                   METADATA_GRPC_SERVICE_PORT=str(metadata.port))
        done = _run_tasks(spec, arguments, run_id, work, env, timeout, metadata, parallelism,
                          backend, cluster)
    return PipelineRun(root, run_id, done, backend)


def _run_tasks(spec: dict, arguments: dict, run_id: str, work: Path, env: dict, timeout: int,
               metadata: MetadataService, parallelism: int, backend: str,
               cluster: Cluster) -> dict:
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
                                    timeout, dict(done), backend, cluster)] = name
            if not running:
                raise ValueError(f"tasks waiting on each other: {sorted(set(dependencies) - set(done))}")
            finished, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                task = future.result()   # a failed task raises here, naming itself
                if not task.cached:      # published, as KFP's launcher does; named by MLMD id
                    for artifacts in task.outputs.values():
                        for artifact, id_ in zip(artifacts, metadata.record(artifacts)):
                            artifact["name"] = str(id_)
                    if task.fingerprint:
                        cluster.cache_create(task.fingerprint, task.outputs)
                done[name] = task
    return done


def _run_task(spec: dict, name: str, arguments: dict, run_id: str, work: Path, env: dict,
              timeout: int, done: dict, backend: str, cluster: Cluster) -> TaskRun:
    root = spec["defaultPipelineRoot"].rstrip("/")
    pipeline = spec["pipelineInfo"]["name"]
    task = spec["root"]["dag"]["tasks"][name]
    component = spec["components"][task["componentRef"]["name"]]
    executor = spec["deploymentSpec"]["executors"][component["executorLabel"]]
    outputs_defined = component.get("outputDefinitions", {}).get("artifacts", {})
    started = time.time()
    if "importer" in executor:   # driver.go, Importer: an MLMD artifact for the URI
        importer = executor["importer"]
        uri = importer["artifactUri"]
        uri = uri["constant"] if "constant" in uri else arguments[uri["runtimeParameter"]]
        key = next(iter(outputs_defined))
        return TaskRun(name, "importer", time.time() - started, {key: [{
            "name": key, "type": importer["typeSchema"], "uri": uri,
            "metadata": importer.get("metadata", {})}]})
    pod = work / "pods" / name
    pod_root = pod / "fs"   # the pod's `/` for the launcher's local paths
    # driver.go provisionOutputs: the task root, its outputs under it, the output file at the
    # task root's local path (Vertex: any local file; here the pod's directory).
    task_root = f"{root}/{pipeline}/{run_id}/{name}/{uuid.uuid4()}"
    local_task_root = (launcher_local_path(task_root, pod_root)
                       if backend == "open-source" else None) or pod
    executor_input = {
        "inputs": {"parameterValues": _parameters(task, arguments), "artifacts": {}},
        "outputs": {"artifacts": {},
                    "outputFile": str(local_task_root / "output_metadata.json")}}
    inputs_defined = component.get("inputDefinitions", {}).get("artifacts", {})
    for key, source in task.get("inputs", {}).get("artifacts", {}).items():
        producer = source["taskOutputArtifact"]
        artifacts = copy.deepcopy(
            done[producer["producerTask"]].outputs[producer["outputArtifactKey"]])
        for artifact in artifacts:   # typed by the consumer's input definition (resolve.go)
            artifact["type"] = inputs_defined[key]["artifactType"]
        executor_input["inputs"]["artifacts"][key] = {"artifacts": artifacts}
    for key, definition in outputs_defined.items():
        executor_input["outputs"]["artifacts"][key] = {"artifacts": [{
            "name": key, "type": definition["artifactType"],
            "uri": f"{task_root}/{key}", "metadata": {}}]}
    container = executor["container"]
    cacheable = backend == "open-source" and task.get("cachingOptions", {}).get("enableCache")
    fingerprint_ = fingerprint(task, executor_input, container) if cacheable else ""
    if fingerprint_:
        cached = cluster.cache_lookup(fingerprint_)
        if cached is not None:   # driver/container.go: the launcher does not start
            return TaskRun(name, "container", time.time() - started, cached, executor_input,
                           cached=True, fingerprint=fingerprint_)
    task_env = dict(env)
    if backend == "open-source":
        task_env["CARDIO_LAUNCHER_LOCAL_ROOT"] = str(pod_root)
        _download(executor_input, pod_root, cluster)
        for artifacts in executor_input["outputs"]["artifacts"].values():   # prepareOutputFolders
            for artifact in artifacts["artifacts"]:
                launcher_local_path(artifact["uri"], pod_root).parent.mkdir(parents=True,
                                                                            exist_ok=True)
    Path(executor_input["outputs"]["outputFile"]).parent.mkdir(parents=True, exist_ok=True)
    hook = container.get("lifecycle", {}).get("preCacheCheck")
    if hook and backend == "vertex":
        # Vertex: the driver (TFX's ExampleGen: span, version, fingerprint) writes an
        # ExecutorOutput; its artifacts' metadata is stamped on the outputs, and the executor
        # reads its parameters from the same file. The open-source driver runs no hook.
        _run_command(hook["command"] + hook.get("args", []), executor_input, name,
                     work / "logs", task_env, timeout)
        driven = json.loads(Path(executor_input["outputs"]["outputFile"]).read_text())
        for key, reported in driven.get("artifacts", {}).items():
            for ours, theirs in zip(executor_input["outputs"]["artifacts"][key]["artifacts"],
                                    reported["artifacts"]):
                ours["metadata"].update(theirs.get("metadata", {}))
    _run_command(container["command"] + container.get("args", []), executor_input, name,
                 work / "logs", task_env, timeout)
    outputs = copy.deepcopy(executor_input["outputs"]["artifacts"])
    output_file = Path(executor_input["outputs"]["outputFile"])
    if output_file.exists():   # launcher_v2.go mergeRuntimeArtifacts: its URI and metadata win
        reported = json.loads(output_file.read_text()).get("artifacts", {})
        for key, artifacts in reported.items():
            for ours, theirs in zip(outputs[key]["artifacts"], artifacts["artifacts"]):
                if theirs.get("uri"):
                    ours["uri"] = theirs["uri"]
                ours["metadata"].update(theirs.get("metadata", {}))
    if backend == "open-source":
        _upload(outputs, pod_root, cluster)
    return TaskRun(name, "container", time.time() - started,
                   {k: v["artifacts"] for k, v in outputs.items()}, executor_input,
                   fingerprint=fingerprint_)


def _download(executor_input: dict, pod_root: Path, cluster: Cluster) -> None:
    """launcher_v2.go downloadArtifacts: every input artifact with a local path, copied there
    (one the launcher cannot map, e.g. a local path from an importer, is left as it is)."""
    for key, artifacts in executor_input["inputs"]["artifacts"].items():
        for artifact in artifacts["artifacts"]:
            local = launcher_local_path(artifact["uri"], pod_root)
            if local is None:
                continue
            source = cluster.object_path(artifact["uri"])
            if not source.exists():
                raise RuntimeError(f"failed to download input artifact {key!r} from remote "
                                   f"storage URI {artifact['uri']!r}: not in the object store")
            _copy(source, local)


def _upload(outputs: dict, pod_root: Path, cluster: Cluster) -> None:
    """launcher_v2.go uploadOutputArtifacts: each output's local path, copied to the store; a
    missing local path is skipped (components may produce no files)."""
    for artifacts in outputs.values():
        for artifact in artifacts["artifacts"]:
            local = launcher_local_path(artifact["uri"], pod_root)
            if local is not None and local.exists():
                _copy(local, cluster.object_path(artifact["uri"]))
