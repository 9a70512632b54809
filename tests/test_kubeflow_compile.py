"""Every profile compiles, with KubeflowV2DagRunner, to a PipelineJob whose structure is checked
against the pipeline definition: components, edges, images, resources, parameters, Beam args.

Expectations come from the profile's configuration (its grid and gate) and from
`create_pipeline` itself, so components added to the pipeline are covered without editing
this file; what each grid cell must have is asserted concretely.
"""
import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from cardio.components import tfjob_trainer, trainer_component as trainer_component
from cardio.pipeline import configs, kubeflow_runner
from cardio.pipeline.pipeline import create_pipeline

REPO, TAG = "registry.example/cardio", "1.2.3"
CPU, GPU = f"{REPO}:{TAG}", f"{REPO}:{TAG}-gpu"
ROOTS = dict(data_root="gs://bucket/data", pipeline_root="gs://bucket/root",
             serving_root="gs://bucket/serving", segmenter_uri="gs://bucket/unet")
# Components that run Beam (TFX's Beam executors and ours): they get the Beam runner's args and
# Beam's memory.
BEAM_EXECUTORS = ("example_gen", "statistics_gen", "lung_crop", "crop_report", "evaluator")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """(profile, training) -> (PipelineJob dict, compile summary, output dir); compiled once."""
    cache = {}

    def get(profile, training):
        if (profile, training) not in cache:
            out = tmp_path_factory.mktemp(f"{profile}-{training}")
            summary = kubeflow_runner.compile_profile(
                profile, str(out / "cardio.json"), repository=REPO, tag=TAG, training=training,
                beam_runner="portable", beam_job_endpoint="flink-jobserver.flink:8099",
                tfjob_workers=3, trainer_gpus=2, **ROOTS)
            cache[profile, training] = json.loads((out / "cardio.json").read_text()), summary, out
        return cache[profile, training]
    return get


def _config(profile):
    return dataclasses.replace(kubeflow_runner.profile_config(profile),
                               segmenter_uri=ROOTS["segmenter_uri"])


def _producer(task, key):
    return task["inputs"]["artifacts"][key]["taskOutputArtifact"]["producerTask"]


def _param(task, name):
    """A task parameter: ('input', root parameter name) or ('constant', value)."""
    spec = task["inputs"]["parameters"][name]
    if "componentInputParameter" in spec:
        return "input", spec["componentInputParameter"]
    return "constant", spec["runtimeValue"]["constant"]


def _executor(job, task_name):
    return job["pipelineSpec"]["deploymentSpec"]["executors"][f"{task_name}_executor"]


def _executor_class(container):
    args = container["args"]
    return args[args.index("--executor_class_path") + 1]


@pytest.mark.parametrize("profile", kubeflow_runner.PROFILES)
@pytest.mark.parametrize("training", kubeflow_runner.TRAINING_MODES)
def test_profile_compiles_with_the_pipelines_structure(compiled, profile, training):
    job, summary, out = compiled(profile, training)
    config = _config(profile)
    spec = job["pipelineSpec"]
    tasks = spec["root"]["dag"]["tasks"]
    # The pipeline root travels with the spec KFP uploads, and with the Vertex PipelineJob.
    assert spec["defaultPipelineRoot"] == ROOTS["pipeline_root"]
    assert job["runtimeConfig"]["gcsOutputDirectory"] == ROOTS["pipeline_root"]
    uploaded = kubeflow_runner.read_package(summary["pipeline_spec"])[0]
    assert uploaded["defaultPipelineRoot"] == ROOTS["pipeline_root"]

    # Every node of the pipeline definition is a task, and nothing else.
    nodes = create_pipeline(config, data_root="d", pipeline_root="r", serving_root="s",
                            schema_file="f").components
    assert set(tasks) == {node.id for node in nodes}
    core = {"ImportExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator",
            "AnomalyGate", "LungSegmenter", "LungCrop", "CropReport"}
    assert core <= set(tasks)
    assert summary["grid"] == [cell.name for cell in config.grid]
    assert len(config.grid) == len({cell.name for cell in config.grid}) >= 1
    if profile == "study":
        assert len(config.grid) == 10   # the study's 5 backbones x 2 class weightings

    # Data edges up to the crop stage; nothing is cropped before the anomaly gate passes.
    assert _producer(tasks["StatisticsGen"], "examples") == "ImportExampleGen"
    assert _producer(tasks["ExampleValidator"], "statistics") == "StatisticsGen"
    assert _producer(tasks["ExampleValidator"], "schema") == "ImportSchemaGen"
    assert _producer(tasks["AnomalyGate"], "anomalies") == "ExampleValidator"
    assert _producer(tasks["LungCrop"], "examples") == "ImportExampleGen"
    assert _producer(tasks["LungCrop"], "segmenter") == "LungSegmenter"
    assert "AnomalyGate" in tasks["LungCrop"]["dependentTasks"]

    executors = spec["deploymentSpec"]["executors"]
    beam_args = kubeflow_runner.beam_pipeline_args(
        "portable", CPU, "flink-jobserver.flink:8099")
    for cell in config.grid:
        trainer, evaluator, pusher = (tasks[f"{kind}.{cell.name}"]
                                      for kind in ("Trainer", "Evaluator", "Pusher"))
        # Cropped examples -> Trainer -> Evaluator -> Pusher, this cell's own chain.
        assert _producer(trainer, "examples") == "LungCrop"
        assert _producer(trainer, "schema") == "ImportSchemaGen"
        assert "AnomalyGate" in trainer["dependentTasks"]
        assert _producer(evaluator, "model") == f"Trainer.{cell.name}"
        assert _producer(evaluator, "examples") == "LungCrop"
        assert _producer(pusher, "model") == f"Trainer.{cell.name}"
        assert _producer(pusher, "model_blessing") == f"Evaluator.{cell.name}"

        # The cell's training configuration, with epochs and learning rate as runtime parameters.
        custom = json.loads(_param(trainer, "custom_config")[1])
        assert (custom["backbone"], custom["weighting"]) == (cell.backbone, cell.weighting)
        assert custom["image_size"] == config.image_size
        assert custom["weights"] == kubeflow_runner.IMAGE_WEIGHTS == "image"
        assert custom["segmenter_weights"] == "gs://bucket/unet/unet_lungs.weights.h5"
        assert _param(trainer, "run_fn") == ("constant", "cardio.trainer.task.run_fn")
        assert _param(trainer, "epochs") == ("input", "epochs")
        assert _param(trainer, "learning_rate") == ("input", "learning_rate")

        # The profile's gate: the external site's AUC bound in this cell's Evaluator, and on
        # every site no regression against the cell's last blessed model (its BaselineLookup),
        # so a scheduled run never pushes a worse model.
        eval_config = json.loads(_param(evaluator, "eval_config")[1])
        auc = {slice_spec["feature_values"]["site"]: t["threshold"]
               for spec_ in eval_config["metrics_specs"] for metric in spec_["metrics"]
               if metric["class_name"] == "AUC"
               for t in metric.get("per_slice_thresholds", [])
               for slice_spec in t["slicing_specs"]}
        assert auc[config.external_site]["value_threshold"]["lower_bound"] == \
            config.gate.external_auc_min
        assert set(auc) == set(config.sites)
        assert all(t["change_threshold"]["direction"] == "HIGHER_IS_BETTER" for t in auc.values())
        baseline = _producer(evaluator, "baseline_model")
        assert baseline == f"BaselineLookup.{cell.name}"
        assert _producer(tasks[baseline], "model") == f"Trainer.{cell.name}"

        # Pushes into <serving root>/<model name>, the layout TF Serving reads.
        assert f"gs://bucket/serving/{cell.name}" in json.dumps(pusher["inputs"]["parameters"])

        container = _executor(job, f"Trainer.{cell.name}")["container"]
        if training == "in-pod":
            # The GPU image, GPUs and memory for training in the Trainer's pod.
            assert container["image"] == GPU
            assert _executor_class(container) == "cardio.components.trainer_component.Executor"
            assert container["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert container["resources"]["accelerator"]["resourceCount"] == "2"
            assert "tfjob" not in trainer["inputs"]["parameters"]
        else:
            # A small launcher pod; the TFJob's replicas get the GPU image and the GPUs.
            assert container["image"] == CPU
            assert _executor_class(container) == "cardio.components.tfjob_trainer.Executor"
            assert "accelerator" not in container["resources"]
            tfjob = tfjob_trainer.TFJobSpec(**json.loads(_param(trainer, "tfjob")[1]))
            assert (tfjob.image, tfjob.workers, tfjob.gpus_per_worker) == (GPU, 3, 2)

    # Images: every container runs the CPU image except in-pod Trainers; importers run none.
    for name, executor in executors.items():
        if name == "LungSegmenter_executor":
            assert executor["importer"]["artifactUri"]["constant"] == "gs://bucket/unet"
            continue
        if name == "ImportSchemaGen_executor":   # imported: see test_compiles_pipeline_job
            assert "importer" in executor
            continue
        container = executor["container"]
        is_trainer = name.startswith("Trainer.")
        assert container["image"] == (GPU if is_trainer and training == "in-pod" else CPU), name
        resources = container["resources"]
        assert resources["resourceMemoryRequest"] and resources["resourceCpuRequest"], name
        if any(b in _executor_class(container) for b in BEAM_EXECUTORS):
            # Beam stages: the distributed runner's args and Beam's memory.
            assert container["args"][-len(beam_args):] == beam_args, name
            assert resources["resourceMemoryRequest"] == kubeflow_runner.Resources().beam_memory

    # Runtime parameters, with defaults: a run with no arguments reads the newest span.
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert set(inputs) == set(kubeflow_runner.RUNTIME_PARAMETERS)
    assert inputs["data_root"]["defaultValue"] == "gs://bucket/data"
    assert inputs["range_config"]["defaultValue"] == ""
    assert inputs["epochs"] == {"defaultValue": config.epochs, "isOptional": True,
                                "parameterType": "NUMBER_INTEGER"}
    assert inputs["learning_rate"]["defaultValue"] == config.learning_rate
    example_gen = tasks["ImportExampleGen"]
    assert _param(example_gen, "input_base") == ("input", "data_root")
    assert _param(example_gen, "range_config") == ("input", "range_config")
    assert "span-{SPAN}/train/*" in _param(example_gen, "input_config")[1]
    assert job["runtimeConfig"]["gcsOutputDirectory"] == "gs://bucket/root"

    # The PipelineSpec YAML (what KFP uploads) is the job's spec, and both parse strictly as
    # kfp-pipeline-spec's protos; the schema is written beside.
    assert kubeflow_runner.read_package(str(out / "cardio.yaml"))[0] == spec
    json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
    json_format.ParseDict(job, pipeline_spec_pb2.PipelineJob())
    assert spec["pipelineInfo"]["name"] == config.pipeline_name
    schema = (out / "schema.pbtxt").read_text()
    assert all(site in schema for site in config.sites)
    # Imported as an artifact (its directory), so that the launcher downloads it like any input.
    importer = spec["deploymentSpec"]["executors"]["ImportSchemaGen_executor"]["importer"]
    assert importer["artifactUri"]["constant"] + "/schema.pbtxt" == \
        kubeflow_runner.schema_uri("gs://bucket/root")


def test_runtime_overrides_reach_the_run_fn_config():
    merged = trainer_component.merged_exec_properties(
        {"custom_config": json.dumps({"backbone": "xception", "epochs": 30}), "epochs": 2,
         "learning_rate": 0.01, "tfjob": "{}", "run_fn": "cardio.trainer.task.run_fn"})
    assert json.loads(merged["custom_config"]) == {"backbone": "xception", "epochs": 2,
                                                   "learning_rate": 0.01}
    assert set(merged) == {"custom_config", "run_fn"}


@pytest.mark.parametrize("runner,extra,expected", [
    ("in-pod", (), ["--direct_running_mode=multi_processing", "--direct_num_workers=4"]),
    ("portable", (), ["--runner=PortableRunner", "--job_endpoint=js:8099",
                      "--environment_type=EXTERNAL", "--environment_config=localhost:50000"]),
    ("dataflow", ("--project=p", "--region=europe-west4", "--temp_location=gs://b/tmp"),
     ["--runner=DataflowRunner", f"--sdk_container_image={CPU}", "--project=p"]),
])
def test_beam_runner_presets(runner, extra, expected):
    args = kubeflow_runner.beam_pipeline_args(runner, CPU, "js:8099", extra)
    assert set(expected) <= set(args)
    assert len({a.split("=", 1)[0] for a in args}) == len(args)   # no flag given twice


@pytest.mark.parametrize("runner", ["local", "in-pod"])
def test_beams_local_runners_make_tfx_build_no_sdist(runner):
    """TFX builds and stages an sdist of itself unless a dependency flag is set: seconds per Beam
    stage and 52 MB of temporary files never removed, for workers that run in this environment."""
    from tfx.utils import dependency_utils

    args = (list(configs.PipelineConfig().beam_pipeline_args) if runner == "local"
            else kubeflow_runner.beam_pipeline_args(runner, CPU))
    assert dependency_utils.make_beam_dependency_flags(list(args)) == args


def test_in_pod_beam_runs_one_worker_per_core_each_stage_requests(tmp_path):
    """Beam's default (0) would start one worker per core of the node, each loading TensorFlow
    and the U-Net; a pipeline-wide count would give a small stage as many as the largest. Each
    Beam stage's count is its own CPU request (here LungCrop sized apart), tasks that run no Beam
    get none, and a count given with --beam-arg wins."""
    resources = kubeflow_runner.Resources(stages=(("LungCrop", "6", "24G"),))
    summary = kubeflow_runner.compile_profile(
        "demo", str(tmp_path / "c.json"), repository=REPO, tag=TAG, beam_runner="in-pod",
        resources=resources, **ROOTS)
    spec = kubeflow_runner.read_package(str(tmp_path / "c.yaml"))[0]
    counts = {}
    for name, executor in spec["deploymentSpec"]["executors"].items():
        container = executor.get("container")
        if container is None:
            continue
        workers = [a for a in container["args"] if a.startswith("--direct_num_workers=")]
        if workers:
            (flag,) = workers
            counts[name] = int(flag.split("=")[1])
            assert counts[name] == int(float(container["resources"]["resourceCpuRequest"])), name
    assert counts["LungCrop_executor"] == 6
    assert counts["ImportExampleGen_executor"] == counts["StatisticsGen_executor"] == 4
    beam_stages = {"ImportExampleGen", "StatisticsGen", "LungCrop"} | {
        f"Evaluator.{cell}" for cell in summary["grid"]}
    assert set(counts) == {f"{stage}_executor" for stage in beam_stages}

    kubeflow_runner.compile_profile(
        "demo", str(tmp_path / "given.json"), repository=REPO, tag=TAG, beam_runner="in-pod",
        beam_extra=("--direct_num_workers=3",), resources=resources, **ROOTS)
    spec = kubeflow_runner.read_package(str(tmp_path / "given.yaml"))[0]
    assert "--direct_num_workers=3" in _executor(
        {"pipelineSpec": spec}, "LungCrop")["container"]["args"]


def test_each_tasks_ephemeral_storage_is_estimated_from_what_the_launcher_copies(tmp_path):
    """KFP's launcher copies every input artifact into the pod (and, written locally, every
    output): the estimate adds them up by type, with scratch; the summary reports it per task."""
    resources = kubeflow_runner.Resources(examples_gb=30, model_gb=2, small_gb=0.5,
                                          scratch_gb=1)
    summary = kubeflow_runner.compile_profile("demo", str(tmp_path / "c.json"), repository=REPO,
                                              tag=TAG, resources=resources, **ROOTS)
    storage = summary["ephemeral_storage_gb"]
    cell = summary["grid"][0]
    assert storage["ImportExampleGen"] == 1 + 30              # writes one span's examples
    assert storage["LungCrop"] == 1 + 30 + 2 + 30             # examples, U-Net; cropped examples
    # Evaluator: cropped examples, the model, the baseline model; evaluation and blessing out.
    assert storage[f"Evaluator.{cell}"] == 1 + 30 + 2 + 2 + 1
    assert storage[f"Pusher.{cell}"] == 1 + 2 + 1             # model, blessing in; pushed out
    assert "LungSegmenter" not in storage                     # an importer runs no pod
    assert json.loads(json.dumps(summary)) == summary
    # Each estimate is requested: a generic ephemeral volume per task where the launcher keeps
    # its copies for this root's scheme (LocalPathForURI: gs:// -> /gcs), as kfp.Client reads
    # the package (its own parser) and sends it to the API server.
    from kfp.client import client as kfp_client

    package = kfp_client._extract_pipeline_yaml(summary["pipeline_spec"])
    platform = json_format.MessageToDict(package.platform_spec)
    spec = json_format.MessageToDict(package.pipeline_spec)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for task, gb in storage.items():
        label = spec["components"][spec["root"]["dag"]["tasks"][task]["componentRef"]["name"]][
            "executorLabel"]
        (volume,) = executors[label]["genericEphemeralVolume"]
        assert volume == {"volumeName": "launcher-artifacts", "mountPath": "/gcs",
                          "accessModes": ["ReadWriteOnce"], "size": f"{gb}Gi",
                          "defaultStorageClass": True}, task
    assert len(executors) == len(storage)                     # none for the importer


@pytest.mark.parametrize("given,expected", [
    (dict(image="r.example/cardio:0.1.0@sha256:" + "a" * 64,
          gpu_image="r.example/cardio:0.1.0-gpu@sha256:" + "b" * 64), None),
    (dict(image="r.example:5000/team/cardio@sha256:" + "a" * 64,
          gpu_image="r.example:5000/team/cardio-gpu:0.1.0"), None),
    (dict(tag="0.1.0@sha256:" + "a" * 64), "a tag may not carry a digest"),
    (dict(image="r.example/cardio:0.1.0"), "give both images"),
    (dict(image="r.example/cardio:latest", gpu_image="r.example/cardio:1-gpu"),
     "--image 'r.example/cardio:latest': give an explicit tag"),
    (dict(image="r.example/cardio:1", gpu_image="r.example/cardio"),
     "--gpu-image 'r.example/cardio': give an explicit tag"),
    (dict(image="r.example/cardio:1", gpu_image="r.example/Cardio:1@sha256:12"),
     "--gpu-image 'r.example/Cardio:1@sha256:12': not an image reference"),
])
def test_both_images_are_full_references_that_may_carry_digests(tmp_path, given, expected):
    """`--image-tag 0.1.0@sha256:...` once compiled `...@sha256:...-gpu` for the Trainers."""
    kwargs = {"repository": REPO, **given}
    if expected:
        with pytest.raises(ValueError, match=re.escape(expected)):
            kubeflow_runner.compile_profile("demo", str(tmp_path / "c.json"), **kwargs, **ROOTS)
        assert not (tmp_path / "c.json").exists()
        return
    summary = kubeflow_runner.compile_profile("demo", str(tmp_path / "c.json"), **kwargs,
                                              **ROOTS)
    assert (summary["image"], summary["gpu_image"]) == (given["image"], given["gpu_image"])
    images = {name: executor["container"]["image"] for name, executor in kubeflow_runner.read_package(
        str(tmp_path / "c.yaml"))[0]["deploymentSpec"]["executors"].items()
        if "container" in executor}
    assert {images[n] for n in images if n.startswith("Trainer.")} == {given["gpu_image"]}
    assert {images[n] for n in images if not n.startswith("Trainer.")} == {given["image"]}


def test_the_cli_takes_the_images_in_full_or_by_tag_not_both(tmp_path):
    from click.testing import CliRunner

    from cardio.cli import main
    result = CliRunner().invoke(main, [
        "pipeline", "compile", "--output", str(tmp_path / "c.json"),
        "--image", f"{CPU}@sha256:" + "a" * 64, "--gpu-image", GPU, "--image-tag", "1.0"])
    assert result.exit_code == 2 and "not both" in result.output
    result = CliRunner().invoke(main, [
        "pipeline", "compile", "--output", str(tmp_path / "c.json"),
        "--image-tag", "0.1.0@sha256:" + "a" * 64])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "a tag may not carry a digest" in text
    assert "--image REGISTRY/cardio@sha256:... --gpu-image" in text
    assert not (tmp_path / "c.json").exists()


@pytest.mark.parametrize("root", ["hdfs://namenode/root", "pipeline-root"])
def test_compile_refuses_a_pipeline_root_this_stack_cannot_write(root, tmp_path):
    with pytest.raises(ValueError, match=r"cannot be written.*On-prem object storage") as error:
        kubeflow_runner.compile_profile("demo", str(tmp_path / "c.json"),
                                        **{**ROOTS, "pipeline_root": root})
    scheme = root.split("://")[0] + "://" if "://" in root else "a relative path"
    assert scheme in str(error.value)
    assert not (tmp_path / "c.json").exists()


@pytest.mark.parametrize("root", ["minio://mlpipeline/v2/artifacts", "s3://bucket/root"])
def test_a_minio_or_s3_root_compiles_for_the_launchers_local_copies(root, tmp_path):
    """MinIO/S3 roots work through the open-source launcher's local copies (every TFX task runs
    pipeline/kfp_entrypoint.py); tests/test_kubeflow_executed.py runs one."""
    kubeflow_runner.compile_profile("demo", str(tmp_path / "c.json"),
                                    **{**ROOTS, "pipeline_root": root})
    spec = kubeflow_runner.read_package(str(tmp_path / "c.yaml"))[0]
    assert spec["defaultPipelineRoot"] == root
    commands = {e["container"]["command"][-1] for e in spec["deploymentSpec"]["executors"].values()
                if "container" in e}
    assert commands == {kubeflow_runner.ENTRYPOINT}


def test_compile_for_a_cluster_refuses_every_place_of_the_compiling_machine(tmp_path):
    """`cardio pipeline compile --config nih` as shipped: its data root, the shipped U-Net's
    package directory and the weights directory are paths of this machine, which no pod has;
    every offending key is named with its reason, exit 2, no traceback, nothing written."""
    from click.testing import CliRunner

    from cardio.cli import main
    output = tmp_path / "c.json"
    result = CliRunner().invoke(main, ["pipeline", "compile", "--config", "nih", "--output",
                                       str(output), "--pipeline-root", "gs://b/root"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not output.exists()
    text = " ".join(result.output.split())
    assert "data_root '/" in text and "an absolute path on the compiling machine" in text
    assert "segmenter_uri '/" in text and "`shipped`" in text
    assert "weights '/" in text and "use `image`" in text
    assert "serving_root" not in text and "pipeline_root" not in text   # gs:// both

    # The study's file: `weights: imagenet` is a download in a pod without egress.
    result = CliRunner().invoke(main, ["pipeline", "compile", "--config", "study", "--output",
                                       str(output), "--data-root", "gs://b/data"])
    assert result.exit_code == 2
    assert "weights 'imagenet': Keras would download them in the pod" in \
        " ".join(result.output.split())

    for key, value, reason in [("data_root", "cardio-nih/data", "a relative path"),
                               ("pipeline_root", "/srv/root", "an absolute path"),
                               ("serving_root", "file:///srv/serving", "a file:// URI"),
                               ("segmenter_uri", "unet", "a relative path"),
                               ("weights", "/home/me/weights", "an absolute path")]:
        with pytest.raises(ValueError, match=f"{key} '{value}': {reason}"):
            kubeflow_runner.compile_profile("demo", str(output), **{**ROOTS, key: value})
    assert not output.exists()
    # Object-store URIs of every kind a KFP pod reads pass this check (artifacts through the
    # launcher; data and serving roots on gs:// or on a claim).
    config = dataclasses.replace(_config("demo"), weights="gs://b/weights",
                                 segmenter_uri="minio://b/unet")
    kubeflow_runner.check_cluster_places(config, "gs://b/data", "s3://b/root", "gs://b/serving")
    kubeflow_runner.check_cluster_places(config, "pvc://data", "minio://b/root", "pvc://models")


def test_compile_refuses_what_cannot_run():
    with pytest.raises(ValueError, match="--project, --region, --temp_location"):
        kubeflow_runner.beam_pipeline_args("dataflow", CPU)
    with pytest.raises(ValueError, match="job server"):
        kubeflow_runner.beam_pipeline_args("portable", CPU)
    with pytest.raises(ValueError, match="explicit tag"):
        kubeflow_runner.images(REPO, "latest")
    with pytest.raises(ValueError, match="unknown profile"):
        kubeflow_runner.profile_config("nightly")


def test_the_cli_offers_exactly_the_library_choices():
    from cardio.cli import main
    params = {p.name: p for p in main.commands["pipeline"].commands["compile"].params}
    assert tuple(params["profile"].type.choices) == kubeflow_runner.PROFILES
    assert tuple(params["beam_runner"].type.choices) == kubeflow_runner.BEAM_RUNNERS
    assert tuple(params["training"].type.choices) == kubeflow_runner.TRAINING_MODES
    assert params["weights"].default == kubeflow_runner.IMAGE_WEIGHTS
    assert params["image_repository"].default == kubeflow_runner.DEFAULT_REPOSITORY


def test_a_span_range_fixed_at_compile_time_has_no_range_parameter(tmp_path):
    config = dataclasses.replace(_config("demo"), spans=(2, 3))
    path = kubeflow_runner.compile_pipeline(
        config, str(tmp_path / "cardio.json"), data_root="gs://bucket/data",
        pipeline_root="gs://bucket/root", serving_root="gs://bucket/serving", image=CPU)
    job = json.loads(Path(path).read_text())
    assert set(job["pipelineSpec"]["root"]["inputDefinitions"]["parameters"]) == {
        "data_root", "epochs", "learning_rate"}
    assert set(job["runtimeConfig"]["parameterValues"]) == {"data_root", "epochs", "learning_rate"}
    range_config = _param(job["pipelineSpec"]["root"]["dag"]["tasks"]["ImportExampleGen"],
                          "range_config")
    assert range_config[0] == "constant"
    assert json.loads(range_config[1])["static_range"] == {"start_span_number": 2,
                                                           "end_span_number": 3}


def test_every_artifact_type_resolves_to_its_class_in_the_kubeflow_entrypoint(compiled):
    """TFX's Kubeflow V2 entrypoint rebuilds each artifact from its schema title alone (custom
    types: the title is imported as a class path), in every task's pod."""
    from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_entrypoint_utils as entry
    from tfx.types.artifact import Artifact
    from tfx.utils import import_utils

    job, _, _ = compiled("study", "in-pod")
    titles = set()
    for component in job["pipelineSpec"]["components"].values():
        for kind in ("inputDefinitions", "outputDefinitions"):
            for spec in component.get(kind, {}).get("artifacts", {}).values():
                schema = json_format.ParseDict(spec["artifactType"],
                                               pipeline_spec_pb2.ArtifactTypeSchema())
                cls = import_utils.import_class_by_path(entry._retrieve_class_path(schema))
                title = yaml.safe_load(schema.instance_schema)["title"]
                assert issubclass(cls, Artifact) and cls.TYPE_NAME in (title, title[4:]), title
                titles.add(title)
    assert {"cardio.DatasetReport", "cardio.ModelCard", "cardio.ModelComparison"} <= titles


def test_data_and_serving_roots_on_claims_for_an_object_store_tensorflow_cannot_reach(tmp_path):
    """On MinIO/S3 (the open-source backend's default store) artifacts travel through the
    launcher, but ImportExampleGen reads the data root and the Pushers write the serving root
    with TensorFlow's own file systems: those roots go on claims (`pvc://CLAIM/PATH`) that only
    the tasks using them mount, as the driver mounts a PvcMount; a minio:// or s3:// data or
    serving root is refused, naming the key and the way out."""
    from kfp.client import client as kfp_client

    roots = dict(data_root="pvc://cardio-data/spans", pipeline_root="minio://cardio/root",
                 serving_root="pvc://cardio-models", segmenter_uri="minio://cardio/unet")
    summary = kubeflow_runner.compile_profile("demo", str(tmp_path / "c.json"), repository=REPO,
                                              tag=TAG, **roots)
    package = kfp_client._extract_pipeline_yaml(summary["pipeline_spec"])
    spec = json_format.MessageToDict(package.pipeline_spec)
    executors = json_format.MessageToDict(package.platform_spec)[
        "platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    mounts = {}
    for task_name, task in spec["root"]["dag"]["tasks"].items():
        label = spec["components"][task["componentRef"]["name"]].get("executorLabel")
        config = executors.get(label, {})
        mounts[task_name] = [(m["pvcNameParameter"]["runtimeValue"]["constant"], m["mountPath"])
                             for m in config.get("pvcMount", [])]
        if config:
            assert config["genericEphemeralVolume"][0]["mountPath"] == "/minio", task_name
    cells = summary["grid"]
    assert mounts["ImportExampleGen"] == [("cardio-data", "/data")]
    for cell in cells:
        assert mounts[f"Pusher.{cell}"] == [("cardio-models", "/serving")]
        destination = json.loads(spec["root"]["dag"]["tasks"][f"Pusher.{cell}"]["inputs"][
            "parameters"]["push_destination"]["runtimeValue"]["constant"])
        assert destination["filesystem"]["base_directory"] == f"/serving/{cell}"
    assert sum(bool(m) for m in mounts.values()) == 1 + len(cells)   # no other task mounts them
    data_root = spec["root"]["inputDefinitions"]["parameters"]["data_root"]["defaultValue"]
    assert data_root == "/data/spans"

    for key, value, message in (
            ("serving_root", "minio://cardio/serving", "serving_root 'minio://cardio/serving': "
             "the Pushers write it with TensorFlow's file systems, which have no minio://"),
            ("data_root", "s3://cardio/data", "data_root 's3://cardio/data': ImportExampleGen "
             "reads it"),
            ("serving_root", "pvc://Models_1", "'Models_1' is not a claim name")):
        with pytest.raises(ValueError, match=re.escape(message)):
            kubeflow_runner.compile_profile("demo", str(tmp_path / "x.json"), repository=REPO,
                                            tag=TAG, **{**roots, key: value})
