"""Compiles the same pipeline definition for Kubeflow Pipelines 2.x (KubeflowV2DagRunner).

`create_pipeline` assembles the pipeline once, for every runner. What only Kubeflow needs is
applied here to its nodes, and nowhere else:

- compile-time **profiles** (`PROFILES`): the grid and the gate shape the DAG (one Trainer,
  Evaluator and Pusher per grid cell), so each profile compiles to its own PipelineJob;
- **runtime parameters** (`RUNTIME_PARAMETERS`): the data root, the span range (empty: the
  newest span, so every scheduled run ingests the newest data), epochs and learning rate;
- **images**: the CPU image for every component, the GPU image for the Trainers;
- **resources**: GPUs for the Trainers, memory for the Beam stages;
- **beam_pipeline_args** for the chosen Beam runner (`beam_pipeline_args`);
- the **training launcher**: in the Trainer's pod, or a TFJob (components/tfjob_trainer.py).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re

import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx.dsl.components.common.importer import Importer
from tfx.orchestration.data_types import RuntimeParameter
from tfx.orchestration.kubeflow.v2.kubeflow_v2_dag_runner import (KubeflowV2DagRunner,
                                                                 KubeflowV2DagRunnerConfig)
from tfx.dsl.components.base import executor_spec

import cardio
from cardio import schemas
from cardio.components import tfjob_trainer, trainer_component
from cardio.imaging import SHIPPED_UNET_DIR
from cardio.pipeline import configs
from cardio.pipeline.configs import PipelineConfig
from cardio.pipeline.pipeline import create_pipeline
from cardio.trainer import model as model_lib

DEFAULT_REPOSITORY = "ghcr.io/cardio-pipeline/cardio"
DEFAULT_TAG = cardio.__version__
DEFAULT_IMAGE = f"{DEFAULT_REPOSITORY}:{DEFAULT_TAG}"
# Where the image keeps ImageNet weights (Dockerfile: the optional `weights` build context), and
# the configuration's name for them (`weights: image`), resolved in the Trainer's pod.
IMAGE_WEIGHTS_DIR = model_lib.IMAGE_WEIGHTS_DIR
IMAGE_WEIGHTS = model_lib.IMAGE_WEIGHTS

PROFILES = ("study", "demo")
BEAM_RUNNERS = ("in-pod", "portable", "dataflow")
TRAINING_MODES = ("in-pod", "tfjob")

# Runtime parameters of the compiled pipeline (names as the KFP UI and API show them).
DATA_ROOT, RANGE_CONFIG, EPOCHS, LEARNING_RATE = "data_root", "range_config", "epochs", "learning_rate"
RUNTIME_PARAMETERS = (DATA_ROOT, RANGE_CONFIG, EPOCHS, LEARNING_RATE)

# Stages that hold radiographs or models in memory: the Beam stages and the model comparison.
DATA_STAGE_PREFIXES = ("ImportExampleGen", "StatisticsGen", "LungCrop", "CropReport", "Evaluator",
                       "ModelComparison")
ResourceSpec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec
WORKERS_FLAG = "--direct_num_workers="


def profile_config(profile: str) -> PipelineConfig:
    """The grid and the gate of a profile: `study` (5 backbones x 2 weightings, the study's
    gate) or `demo` (one small MobileNet, the demo gate)."""
    if profile == "study":
        return PipelineConfig()
    if profile == "demo":
        return configs.demo_config(weights=None)
    raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")


def images(repository: str = DEFAULT_REPOSITORY, tag: str = DEFAULT_TAG) -> tuple[str, str]:
    """(CPU image, GPU image) as the Dockerfile's two targets are tagged: TAG and TAG-gpu. A
    digest cannot be derived this way (each target has its own): give both references with
    `image_references`."""
    if not tag or tag == "latest":
        raise ValueError("give the image an explicit tag (not 'latest'): a compiled pipeline must "
                         "name the exact image it was tested with")
    if "@" in tag or ":" in tag:
        raise ValueError(f"image tag {tag!r}: a tag may not carry a digest ('{tag}-gpu' would be "
                         "no valid reference); give both images in full instead: --image "
                         "REGISTRY/cardio@sha256:... --gpu-image REGISTRY/cardio@sha256:...")
    return check_image(f"{repository}:{tag}", "--image-tag"), \
        check_image(f"{repository}:{tag}-gpu", "--image-tag")


# An OCI image reference: [registry[:port]/]path[:tag][@sha256:<64 hex>]
# (distribution/reference's grammar, simplified: lower-case path components).
_REFERENCE = re.compile(
    r"(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@sha256:(?P<digest>[0-9a-f]{64}))?")


def check_image(reference: str, key: str = "--image") -> str:
    """`reference` if it is a full image reference that names one image: a tag other than
    `latest`, or a digest (best: both, `REPO:TAG@sha256:...`); else a ValueError naming `key`."""
    match = _REFERENCE.fullmatch(reference or "")
    if not match:
        raise ValueError(f"{key} {reference!r}: not an image reference "
                         "(REGISTRY/REPOSITORY:TAG or REGISTRY/REPOSITORY[:TAG]@sha256:<64 hex>)")
    if not match.group("digest") and match.group("tag") in (None, "latest"):
        raise ValueError(f"{key} {reference!r}: give an explicit tag (not 'latest') or a digest: "
                         "a compiled pipeline must name the exact image it was tested with")
    return reference


def image_references(image: str, gpu_image: str) -> tuple[str, str]:
    """(CPU image, GPU image) given in full, each with its own tag or digest."""
    if not image or not gpu_image:
        raise ValueError("give both images: --image (every component) and --gpu-image (the "
                         "Trainers, CUDA); each the Dockerfile's target of that name")
    return check_image(image, "--image"), check_image(gpu_image, "--gpu-image")


@dataclasses.dataclass(frozen=True)
class Resources:
    """Requests (and memory limits) per kind of component, and the sizes behind each task's
    ephemeral-storage estimate (`ephemeral_storage_gb`)."""
    default_cpu: str = "1"
    default_memory: str = "4G"
    beam_cpu: str = "4"              # the in-pod Beam runner: one worker per core requested
    beam_memory: str = "16G"         # LungCrop holds a U-Net and batches of 1-3k px radiographs;
                                     # ModelComparison every grid cell's model
    trainer_cpu: str = "8"
    trainer_memory: str = "32G"
    trainer_gpus: int = 1
    gpu_type: str = "nvidia.com/gpu"
    # (component id prefix, cpu, memory) for one stage's own size, e.g. (("LungCrop", "8",
    # "32G"),): its Beam workers follow its own CPU request.
    stages: tuple = ()
    # What KFP's launcher copies into a task's pod (every input artifact; outputs too, once
    # written to the launcher's local path before upload), in GB: one span's examples as
    # TFRecords (raw or cropped), one exported model (a SavedModel with the U-Net), anything
    # else (statistics, schema, evaluations, blessings, reports); plus scratch (/tmp, Beam's
    # and TensorFlow's temporary files).
    examples_gb: float = 10.0
    model_gb: float = 1.0
    small_gb: float = 0.1
    scratch_gb: float = 2.0

    @property
    def beam_workers(self) -> int:
        """In-pod Beam workers of a Beam stage of `beam_cpu`: one per core it requests (not the
        limit it may burst to). Beam's own default (`--direct_num_workers=0`) counts the
        *node's* cores, and each worker loads TensorFlow and the U-Net."""
        return workers_for(self.beam_cpu)

    def for_node(self, node_id: str, kind: str) -> tuple[str, str]:
        """(cpu, memory) of a node: its stage override, else its kind's (`beam` or `default`)."""
        for prefix, cpu, memory in self.stages:
            if node_id.startswith(prefix):
                return cpu, memory
        return ((self.beam_cpu, self.beam_memory) if kind == "beam"
                else (self.default_cpu, self.default_memory))

    def artifact_gb(self, artifact_type) -> float:
        from tfx.types import standard_artifacts
        if issubclass(artifact_type, standard_artifacts.Examples):
            return self.examples_gb
        if issubclass(artifact_type, standard_artifacts.Model):
            return self.model_gb
        return self.small_gb

    def ephemeral_storage_gb(self, node) -> int:
        """A task's ephemeral storage, estimated: every input artifact the launcher copies into
        the pod (backend/src/v2/component/launcher_v2.go, `downloadArtifacts`: all of them,
        whether read or not) and every output written under its local path before upload, by
        artifact type, plus scratch; whole GB, rounded up."""
        channels = list(node.inputs.values()) + list(node.outputs.values())
        total = self.scratch_gb + sum(self.artifact_gb(c.type) for c in channels)
        return int(-(-total // 1))


def workers_for(cpu: str) -> int:
    """In-pod Beam workers for a pod requesting `cpu` cores: one per whole core, at least one."""
    return max(1, int(float(cpu)))


def cpu_limit(cpu: str) -> float:
    """A pod may burst to twice the cores it requests."""
    return float(cpu) * 2


def _gigabytes(quantity: str) -> float:
    units = {"G": 1.0, "M": 1e-3, "Gi": 2**30 / 1e9, "Mi": 2**20 / 1e9}
    for unit in sorted(units, key=len, reverse=True):
        if quantity.endswith(unit):
            return float(quantity[:-len(unit)]) * units[unit]
    raise ValueError(f"memory quantity {quantity!r} needs a unit (G, M, Gi or Mi)")


def resource_spec(cpu: str, memory: str, gpus: int = 0, gpu_type: str = "") -> ResourceSpec:
    spec = ResourceSpec(cpu_request=float(cpu), cpu_limit=cpu_limit(cpu),
                        memory_request=_gigabytes(memory), memory_limit=_gigabytes(memory),
                        resource_cpu_request=cpu, resource_cpu_limit=str(cpu_limit(cpu)),
                        resource_memory_request=memory, resource_memory_limit=memory)
    if gpus:
        spec.accelerator.type = spec.accelerator.resource_type = gpu_type
        spec.accelerator.count, spec.accelerator.resource_count = gpus, str(gpus)
    return spec


def beam_pipeline_args(runner: str, image: str, job_endpoint: str | None = None,
                       extra: tuple = (), workers: int = Resources().beam_workers) -> list[str]:
    """beam_pipeline_args for one of `BEAM_RUNNERS`, plus `extra` (which may override):

    - `in-pod`: Beam's multi-process local runner in the component's pod, `workers` processes
      (`Resources.beam_workers`: the pod's CPU limit; no cluster services needed);
    - `portable`: Beam's PortableRunner to a job server in the cluster (a Flink or Spark job
      server), whose task managers run the SDK worker pool from this image as a sidecar on
      localhost:50000 (EXTERNAL environment);
    - `dataflow`: Google Cloud Dataflow with this image as the SDK container (needs --project,
      --region and --temp_location in `extra`).
    """
    if runner == "in-pod":
        args = [f"--runner={configs.FN_API_RUNNER}", "--direct_running_mode=multi_processing",
                f"--direct_num_workers={workers}", configs.NO_STAGING]
    elif runner == "portable":
        if not job_endpoint:
            raise ValueError("the portable Beam runner needs the job server's endpoint "
                             "(--beam-job-endpoint HOST:PORT)")
        args = ["--runner=PortableRunner", f"--job_endpoint={job_endpoint}",
                "--environment_type=EXTERNAL", "--environment_config=localhost:50000"]
    elif runner == "dataflow":
        given = {a.split("=", 1)[0] for a in extra}
        missing = [k for k in ("--project", "--region", "--temp_location") if k not in given]
        if missing:
            raise ValueError(f"the Dataflow runner needs {', '.join(missing)} (--beam-arg)")
        args = ["--runner=DataflowRunner", f"--sdk_container_image={image}",
                "--experiments=use_runner_v2"]
    else:
        raise ValueError(f"unknown Beam runner {runner!r}; choose one of {', '.join(BEAM_RUNNERS)}")
    overridden = {a.split("=", 1)[0] for a in extra}
    return [a for a in args if a.split("=", 1)[0] not in overridden] + list(extra)


# Pipeline roots this stack can write. gs:// TensorFlow writes itself; minio:// and s3:// go
# through the open-source launcher's local copies (downloaded before, uploaded after each task;
# pipeline/kfp_entrypoint.py hands the executors those paths), so they need no TensorFlow
# file-system plugin; an absolute path is a volume mounted at the same path in every pod (or a
# local execution of the compiled spec). docs/operator-guide.md, "On-prem object storage".
WRITABLE_ROOT_SCHEMES = ("gs", "minio", "s3")


def check_pipeline_root(root: str) -> str:
    """The pipeline root if this stack can write it, else a ValueError naming the scheme."""
    scheme = root.split("://", 1)[0] if "://" in root else ""
    if scheme in WRITABLE_ROOT_SCHEMES or (not scheme and root.startswith("/")):
        return root
    what = f"scheme {scheme}://" if scheme else "a relative path"
    raise ValueError(
        f"pipeline root {root!r}: {what} cannot be written by this stack's executors (they write "
        f"{', '.join(s + '://' for s in WRITABLE_ROOT_SCHEMES)} and absolute paths); see "
        "docs/operator-guide.md, 'On-prem object storage'")


# The container command of every TFX task: TFX's own entrypoint, wrapped for the open-source
# backend (span resolution without the lifecycle hook, artifacts through the launcher's local
# paths; pipeline/kfp_entrypoint.py).
TFX_ENTRYPOINT = "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"
ENTRYPOINT = "cardio.pipeline.kfp_entrypoint"
# Tasks whose result depends on more than the inputs KFP's cache key sees
# (backend/src/v2/cacheutils/cache.go: input parameters and artifact names, command, image):
# ImportExampleGen resolves the newest span at run time, so a cached one would never ingest a
# new span (on Vertex its lifecycle hook changes its inputs before the cache check; the
# open-source driver runs no hook).
UNCACHED_TASKS = ("ImportExampleGen",)


def _for_open_source_backend(spec: dict) -> None:
    """The compiled PipelineSpec, made to run on the open-source KFP backend as on Vertex."""
    for executor in spec["deploymentSpec"]["executors"].values():
        container = executor.get("container")
        if container and container.get("command", [])[-1:] == [TFX_ENTRYPOINT]:
            container["command"] = container["command"][:-1] + [ENTRYPOINT]
    for name, task in spec["root"]["dag"]["tasks"].items():
        if name in UNCACHED_TASKS:
            # proto3 JSON leaves a false bool out, as kfp.Client re-serialises the spec
            task["cachingOptions"] = {}


def schema_uri(pipeline_root: str) -> str:
    """Where the compiled pipeline reads its schema; `compile_pipeline` writes a copy to upload."""
    return f"{pipeline_root.rstrip('/')}/schema/schema.pbtxt"


def _runtime_parameter(name: str, ptype: type, default):
    return RuntimeParameter(name=name, ptype=ptype, default=default)


def compile_pipeline(config: PipelineConfig, output_file: str, data_root: str, pipeline_root: str,
                     serving_root: str, image: str = DEFAULT_IMAGE, gpu_image: str | None = None,
                     beam_args: list[str] | None = None, resources: Resources = Resources(),
                     training: str = "in-pod",
                     tfjob: tfjob_trainer.TFJobSpec | None = None,
                     workers_per_cpu: bool = True, storage: dict | None = None) -> str:
    """Writes a PipelineJob JSON for Kubeflow Pipelines 2.x (or Vertex Pipelines), and beside it
    the PipelineSpec YAML (`pipeline_spec_path`) and `schema.pbtxt` with the configured sites, to
    upload to `schema_uri(pipeline_root)`.

    `data_root` is the default of the `data_root` runtime parameter. `training="tfjob"` makes
    each Trainer a launcher of a multi-worker TFJob (`tfjob`, default: 2 replicas on
    `gpu_image`); the launcher pod itself needs no GPU. With the in-pod multi-process Beam
    runner, each Beam stage's `--direct_num_workers` is its own CPU request (`workers_per_cpu`;
    False keeps the args' own count). `storage`, when given, receives each task's
    ephemeral-storage estimate in GB (`Resources.ephemeral_storage_gb`).
    """
    if training not in TRAINING_MODES:
        raise ValueError(f"unknown training mode {training!r}; choose one of "
                         f"{', '.join(TRAINING_MODES)}")
    check_pipeline_root(pipeline_root)
    storage = {} if storage is None else storage
    claims = {}
    for key in CLAIM_MOUNTS:   # roots on a claim: the path where its tasks mount it
        claim = claim_root(key, {"data_root": data_root, "serving_root": serving_root}[key])
        if claim:
            claims[key] = claim[0]
            data_root, serving_root = ((claim[1], serving_root) if key == "data_root"
                                       else (data_root, claim[1]))
    gpu_image = gpu_image or image
    if beam_args is not None:
        config = dataclasses.replace(config, beam_pipeline_args=tuple(beam_args))
    # In-pod Beam (multi-process): each Beam stage's workers come from its own CPU request below,
    # so the pipeline-wide args (which every other task also receives) carry no count.
    workers_per_cpu = workers_per_cpu and "--direct_running_mode=multi_processing" in \
        config.beam_pipeline_args
    if workers_per_cpu:
        config = dataclasses.replace(config, beam_pipeline_args=tuple(
            a for a in config.beam_pipeline_args if not a.startswith(WORKERS_FLAG)))
    output_dir = os.path.dirname(os.path.abspath(output_file))
    os.makedirs(output_dir, exist_ok=True)
    schemas.render(config.sites, os.path.join(output_dir, "schema.pbtxt"), views=config.views)
    pipeline = create_pipeline(
        config, data_root=_runtime_parameter(DATA_ROOT, str, data_root),
        pipeline_root=pipeline_root, serving_root=serving_root,
        schema_file=schema_uri(pipeline_root), import_schema=True)

    image_map = {"default_image_path": image}
    epochs = _runtime_parameter(EPOCHS, int, config.epochs)
    learning_rate = _runtime_parameter(LEARNING_RATE, float, config.learning_rate)
    for node in pipeline.components:
        if node.id == "ImportExampleGen" and config.spans is None:
            # JSON of a tfx.proto.RangeConfig; empty reads the newest span.
            node.exec_properties["range_config"] = _runtime_parameter(RANGE_CONFIG, str, "")
        if isinstance(node, trainer_component.Trainer):
            node.exec_properties[trainer_component.EPOCHS] = epochs
            node.exec_properties[trainer_component.LEARNING_RATE] = learning_rate
            if training == "tfjob":
                spec = tfjob or tfjob_trainer.TFJobSpec(image=gpu_image)
                node.exec_properties[trainer_component.TFJOB] = json.dumps(
                    dataclasses.asdict(spec), sort_keys=True)
                node.executor_spec = executor_spec.ExecutorClassSpec(tfjob_trainer.Executor)
                node.with_platform_config(resource_spec(resources.default_cpu,
                                                        resources.default_memory))
            else:
                image_map[node.id] = gpu_image
                node.with_platform_config(resource_spec(
                    resources.trainer_cpu, resources.trainer_memory, resources.trainer_gpus,
                    resources.gpu_type))
        elif node.id.startswith(DATA_STAGE_PREFIXES):
            node.with_platform_config(resource_spec(*resources.for_node(node.id, "beam")))
        elif hasattr(node, "with_platform_config") and not isinstance(node, Importer):
            node.with_platform_config(resource_spec(*resources.for_node(node.id, "default")))
        if not isinstance(node, Importer):
            storage[node.id] = resources.ephemeral_storage_gb(node)
        if workers_per_cpu and isinstance(node.executor_spec, executor_spec.BeamExecutorSpec):
            # In-pod Beam: this stage's own CPU request sets its workers (no pipeline-wide count).
            cpu = node.platform_config.resource_cpu_request if node.platform_config else "1"
            node.executor_spec.beam_pipeline_args = [
                a for a in node.executor_spec.beam_pipeline_args
                if not str(a).startswith(WORKERS_FLAG)] + [f"{WORKERS_FLAG}{workers_for(cpu)}"]

    defaults = {DATA_ROOT: data_root, RANGE_CONFIG: "", EPOCHS: config.epochs,
                LEARNING_RATE: config.learning_rate}
    if config.spans is not None:   # a span range fixed at compile time: no range parameter
        del defaults[RANGE_CONFIG]
    runner = KubeflowV2DagRunner(
        config=KubeflowV2DagRunnerConfig(
            default_image=image_map, use_pipeline_spec_2_1=True),
        output_dir=output_dir, output_filename=os.path.basename(output_file))
    job = runner.run(pipeline, parameter_values=defaults, write_out=False)
    # TFX leaves the defaults out of the pipeline's own inputs; the KFP API needs them there
    # (a recurring run passes no parameters: every run takes the newest span).
    inputs = job["pipelineSpec"]["root"]["inputDefinitions"]["parameters"]
    for name, value in defaults.items():
        if name in inputs:
            inputs[name].update(defaultValue=value, isOptional=True)
    # TFX drops platform_config for FileBasedExampleGen (ImportExampleGen): add its resources.
    executors = job["pipelineSpec"]["deploymentSpec"]["executors"]
    for node in pipeline.components:
        container = executors.get(f"{node.id}_executor", {}).get("container")
        if container is not None and "resources" not in container and node.platform_config:
            container["resources"] = json_format.MessageToDict(node.platform_config)
    # The root travels with the spec: without it the KFP driver falls back to the namespace's
    # default artifact store (MinIO on a stock install), which TensorFlow cannot write.
    job["pipelineSpec"]["defaultPipelineRoot"] = pipeline_root
    _for_open_source_backend(job["pipelineSpec"])
    with open(output_file, "w") as f:
        json.dump(job, f, indent=2, sort_keys=True)
    # Kubeflow Pipelines uploads and runs the PipelineSpec itself, as YAML, with its platform
    # spec (each task's artifact volume) as a second document, as the KFP SDK writes it.
    with open(pipeline_spec_path(output_file), "w") as f:
        yaml.safe_dump_all([job["pipelineSpec"], platform_spec(
            job["pipelineSpec"], pipeline_root, storage, claims)],
            f, sort_keys=True)
    return output_file


# Where the open-source launcher keeps a task's artifacts in its pod, by the pipeline root's
# scheme (`LocalPathForURI`, backend/src/v2/component/launcher_v2.go): inputs downloaded there
# before the executor starts, outputs uploaded from there after it.
LAUNCHER_LOCAL_PATHS = {"gs": "/gcs", "minio": "/minio", "s3": "/s3"}
ARTIFACT_VOLUME = "launcher-artifacts"
# A data or serving root on a PersistentVolumeClaim (`pvc://CLAIM[/PATH]`), for clusters whose
# object store TensorFlow cannot read or write (MinIO, S3): the tasks that use the root mount the
# claim (ImportExampleGen at /data, the Pushers at /serving) and read or write the path there;
# TF Serving mounts the serving claim read-only (kubernetes/overlays/onprem).
PVC_SCHEME = "pvc://"
CLAIM_MOUNTS = {"data_root": ("/data", ("ImportExampleGen",)),
                "serving_root": ("/serving", ("Pusher.",))}


def claim_root(key: str, root: str) -> tuple[str, str] | None:
    """(claim, the path the tasks use in their pods) of a `pvc://CLAIM[/PATH]` root, else None."""
    if not root.startswith(PVC_SCHEME):
        return None
    claim, _, path = root[len(PVC_SCHEME):].partition("/")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", claim or ""):
        raise ValueError(f"{key} {root!r}: {claim!r} is not a claim name (a Kubernetes name: "
                         "lower case letters, digits and '-')")
    return claim, f"{CLAIM_MOUNTS[key][0]}/{path}".rstrip("/")


def platform_spec(pipeline_spec: dict, pipeline_root: str, storage: dict,
                  claims: dict | None = None) -> dict:
    """KFP's Kubernetes platform spec for the compiled pipeline: every container task gets a
    generic ephemeral volume at the launcher's local path for the root's scheme, sized from its
    estimate (`Resources.ephemeral_storage_gb`), so the copies the launcher makes are requested
    storage (a claim the scheduler must place) instead of the node's unrequested scratch.
    Fields: kubernetes_platform/proto/kubernetes_executor_config.proto (`GenericEphemeralVolume`);
    the driver mounts it into the task's main container, where the launcher runs
    (`extendPodSpecPatch`, backend/src/v2/driver/k8s.go); the API server takes it from an
    uploaded package's second YAML document (`IsPlatformSpecWithKubernetesConfig`,
    backend/src/apiserver/template/v2_template.go) or, from `kfp.Client`'s runs, beside the
    spec in the run's `pipeline_spec` (backend/src/apiserver/server/api_util.go). Needs a
    default StorageClass that provisions dynamically (the volume is a claim per pod).
    `claims` ({root key: claim name}, `claim_root`): the tasks that use that root also mount the
    claim (`PvcMount`; the driver's `makeVolumeMountPatch`, backend/src/v2/driver/k8s.go)."""
    mount = LAUNCHER_LOCAL_PATHS[pipeline_root.split("://", 1)[0]]
    executors = {}
    for name, task in pipeline_spec["root"]["dag"]["tasks"].items():
        label = pipeline_spec["components"][task["componentRef"]["name"]].get("executorLabel")
        executor = pipeline_spec["deploymentSpec"]["executors"].get(label, {})
        if name in storage and "container" in executor:
            executors[label] = {"genericEphemeralVolume": [{
                "volumeName": ARTIFACT_VOLUME, "mountPath": mount,
                "accessModes": ["ReadWriteOnce"], "size": f"{storage[name]}Gi",
                "defaultStorageClass": True}]}
            for key, claim in (claims or {}).items():
                claim_mount, tasks = CLAIM_MOUNTS[key]
                if name.startswith(tasks):
                    executors[label].setdefault("pvcMount", []).append({
                        "pvcNameParameter": {"runtimeValue": {"constant": claim}},
                        "mountPath": claim_mount})
    return {"platforms": {"kubernetes": {"deploymentSpec": {"executors": executors}}}}


def read_package(path: str) -> tuple[dict, dict]:
    """(pipeline spec, platform spec) of a compiled package: its YAML documents, as `kfp.Client`
    reads them (the first is the pipeline spec, later ones the platform spec)."""
    with open(path) as f:
        documents = [d for d in yaml.safe_load_all(f) if d]
    platform = {}
    for document in documents[1:]:
        platform.update(document)
    return documents[0], platform


def pipeline_spec_path(pipeline_job_file: str) -> str:
    """The PipelineSpec YAML (what `kfp.Client` and the KFP UI upload) beside the PipelineJob."""
    return os.path.splitext(pipeline_job_file)[0] + ".yaml"


# Object stores a pod reaches by URI: the schemes the KFP v2 launcher and importer accept for
# artifacts (backend/src/v2/objectstore/config.go, ParseBucketConfigForArtifactURI: gs, s3, minio;
# mem is in-memory, for tests). Which of them this stack can *write* is `check_pipeline_root`'s
# business.
OBJECT_STORE_SCHEMES = ("gs", "s3", "minio")


def _local(value: str) -> str | None:
    """Why `value` is a place on the compiling machine (None if it is an object-store URI)."""
    scheme = value.split("://", 1)[0].lower() if "://" in value else ""
    if scheme in OBJECT_STORE_SCHEMES:
        return None
    if scheme == "file":
        return "a file:// URI of the compiling machine"
    if scheme:
        return f"scheme {scheme}:// is no object store a pod reads (use gs://, s3:// or minio://)"
    return ("an absolute path on the compiling machine" if value.startswith("/")
            else "a relative path on the compiling machine")


def check_cluster_places(config: PipelineConfig, data_root: str, pipeline_root: str,
                         serving_root: str) -> None:
    """Refuses, naming every offending key and its reason, what a pod of the cluster cannot
    read: a data root, serving root, pipeline root or U-Net directory that is a local path,
    ImageNet weights from a local path, from Keras's cache (`weights` unset) or downloaded
    (`imagenet`: no egress in a pipeline pod). The U-Net must be an object-store URI: it is
    imported (tfx.dsl.Importer), and KFP's importer records only bucket URIs
    (backend/src/v2/component/importer_launcher.go: `ParseProviderFromPath`, "no provider scheme
    found in artifact URI"). Weights may also be `image` (baked into the image) or `random`.
    `compile_pipeline` does not check: tests execute compiled specs on this machine."""
    problems, checked = [], set()
    for key, value in (("data_root", data_root), ("serving_root", serving_root)):
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme in ("minio", "s3"):   # not artifacts: no launcher copies them
            what = "ImportExampleGen reads" if key == "data_root" else "the Pushers write"
            problems.append(
                f"{key} {value!r}: {what} it with TensorFlow's file systems, which have no "
                f"{scheme}:// here; put it on a claim the pods mount, --{key.replace('_', '-')} "
                "pvc://CLAIM/PATH (docs/operator-guide.md, 'On-prem object storage')")
        elif value.startswith(PVC_SCHEME):
            try:
                claim_root(key, value)
            except ValueError as error:
                problems.append(str(error))
        else:
            continue
        checked.add(key)
    for key, value in (("data_root", data_root), ("pipeline_root", pipeline_root),
                       ("serving_root", serving_root), ("segmenter_uri", config.segmenter_uri)):
        if key in checked:
            continue
        why = _local(value) if value else None
        if why:
            shipped = (" (`shipped`: the package directory of the compiling machine; upload "
                       "src/cardio/imaging/assets/unet_lungs.* to gs://BUCKET/cardio/unet)"
                       if value == SHIPPED_UNET_DIR else "")
            problems.append(f"{key} {value!r}: {why}{shipped}; a pod reads only object-store "
                            f"URIs (gs://, s3://, minio://): give --{key.replace('_', '-')}")
    weights = config.weights
    if weights is None:
        problems.append("weights unset: Keras's cache is empty in a pod; use `image` (the "
                        f"image's {IMAGE_WEIGHTS_DIR}), a gs:// URI or `random` (--weights)")
    elif weights == "imagenet":
        problems.append("weights 'imagenet': Keras would download them in the pod, which has no "
                        f"egress; use `image` (the image's {IMAGE_WEIGHTS_DIR}), a gs:// URI or "
                        "`random` (--weights)")
    elif weights not in (IMAGE_WEIGHTS, "random") and _local(weights):
        problems.append(f"weights {weights!r}: {_local(weights)}; use `image` (the image's "
                        f"{IMAGE_WEIGHTS_DIR}), a gs:// URI or `random` (--weights)")
    if problems:
        raise ValueError("cannot compile for a cluster:\n  " + "\n  ".join(problems))


def compile_profile(profile: str, output_file: str, data_root: str, pipeline_root: str,
                    serving_root: str, segmenter_uri: str, repository: str = DEFAULT_REPOSITORY,
                    tag: str = DEFAULT_TAG, weights: str = IMAGE_WEIGHTS,
                    beam_runner: str = "in-pod", beam_job_endpoint: str | None = None,
                    beam_extra: tuple = (), training: str = "in-pod", trainer_gpus: int = 1,
                    tfjob_workers: int = 2, gpu_type: str = Resources.gpu_type,
                    config: PipelineConfig | None = None, image: str | None = None,
                    gpu_image: str | None = None, resources: Resources | None = None) -> dict:
    """`cardio pipeline compile`: one profile (or a configuration file's `config`) to a
    PipelineJob JSON and a PipelineSpec YAML. `segmenter_uri` and `weights` override the
    configuration's when given. The images: `image` and `gpu_image` in full (tags or digests),
    else `repository`:`tag` and `tag`-gpu."""
    if image or gpu_image:
        cpu_image, gpu_image = image_references(image, gpu_image)
    else:
        cpu_image, gpu_image = images(repository, tag)
    config = config or profile_config(profile)
    config = dataclasses.replace(
        config, segmenter_uri=config.segmenter_uri if segmenter_uri is None else segmenter_uri,
        weights=config.weights if weights is None else weights)
    check_pipeline_root(pipeline_root)
    check_cluster_places(config, data_root, pipeline_root, serving_root)
    resources = resources or Resources(trainer_gpus=trainer_gpus, gpu_type=gpu_type)
    beam_args = beam_pipeline_args(beam_runner, cpu_image, beam_job_endpoint, tuple(beam_extra),
                                   workers=resources.beam_workers)
    # A count given with --beam-arg wins over the per-stage one.
    workers_given = any(a.startswith(WORKERS_FLAG) for a in beam_extra)
    storage = {}
    tfjob = (tfjob_trainer.TFJobSpec(image=gpu_image, workers=tfjob_workers,
                                     gpus_per_worker=trainer_gpus, gpu_resource=gpu_type)
             if training == "tfjob" else None)
    compile_pipeline(config, output_file, data_root=data_root, pipeline_root=pipeline_root,
                     serving_root=serving_root, image=cpu_image, gpu_image=gpu_image,
                     beam_args=beam_args, resources=resources,
                     training=training, tfjob=tfjob, workers_per_cpu=not workers_given,
                     storage=storage)
    return {"pipeline_job": output_file, "pipeline_spec": pipeline_spec_path(output_file),
            "schema": os.path.join(os.path.dirname(output_file), "schema.pbtxt"),
            "schema_uri": schema_uri(pipeline_root), "profile": profile,
            "grid": [cell.name for cell in config.grid], "image": cpu_image,
            "gpu_image": gpu_image, "beam_runner": beam_runner, "training": training,
            # GB per task, estimated: each task's artifact volume in the platform spec
            # (docs/operator-guide.md, "Resources").
            "ephemeral_storage_gb": storage}
