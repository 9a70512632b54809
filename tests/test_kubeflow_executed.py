"""The compiled pipeline, executed: the PipelineSpec that `cardio pipeline compile` writes runs
here task by task, each through its own container command and a launcher-style ExecutorInput
(tests/kfp_harness.py), with the run's parameters, the importer, artifact passing and the spec's
own pipeline root: every task runs, the gate blesses and the pushed model serves. That its blessing
and pushed model are the LocalDagRunner run's on the same data and configuration (the same
pipeline, orchestrated two ways) is a slow check (`python -m benchmarks checks`): it repeats the
whole run in process."""
import dataclasses
import glob
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import kfp_harness
from conftest import SHARED
from cardio import features as F
from cardio.components import evaluator
from cardio.components.gate import GateProfile
from cardio.data import convert
from cardio.pipeline import configs, kubeflow_runner, local_runner, outputs, report
from cardio.serving import demo as serving_demo
from cardio.trainer import task

CELL = configs.GridCell("mobilenet_025", "75-25")
# Every model passes the floors: what is compared here is the orchestration, not the model's
# quality (the demo's gate is the e2e run's business). The gate still runs and writes its
# blessing, and the Trainer's calibration refusal still applies: the MobileNet starts from the
# shared ImageNet weights (from random initialisation it ranked validation backwards, and the
# gate rightly refused it).
WEIGHTS = str(SHARED / "weights") if (SHARED / "weights").exists() else "random"
PLUMBING_GATE = GateProfile("plumbing", external_auc_min=0.0, internal_auc_min=0.0,
                            sensitivity_min=0.0, auc_regression_tolerance=1.0)
# Given at run time; the compiled defaults are the configuration's (5 epochs, 1e-3).
RUN_EPOCHS, RUN_LEARNING_RATE = 2, 0.002


# KFP's default artifact store on a stock open-source install: MinIO, bucket `mlpipeline`.
ROOT = "minio://mlpipeline/cardio"
IMAGE = "registry.example/cardio:1"


def _config(grid=(CELL,)):
    return dataclasses.replace(
        configs.demo_config(WEIGHTS), pipeline_name="cardio-executed", grid=grid,
        gate=PLUMBING_GATE, image_size=64, crop_size=128, epochs=5, batch_size=8,
        deterministic=True, confidence_intervals=False,
        # Plumbing on 96 images: 3 validation and 5 test cases of cardiomegaly.
        min_validation_positives=3, min_split_positives=3)


def compile_and_run(tmp: Path, config, runs_arguments=({},), new_span_each_run=False) -> dict:
    """Compiles `config` for a MinIO pipeline root with the in-pod Beam runner's arguments (one
    worker: a pod of one core's limit), uploads the schema, and executes the PipelineSpec once
    per entry of `runs_arguments` on one cluster, as the open-source backend would; with
    `new_span_each_run`, each later run finds the site's next span (span 1 exported again)."""
    data = tmp / "data"
    convert.write_synthetic(str(data), 96, seed=17, size=128, span=1,
                            external_sites=(config.external_site,), workers=1)
    compiled = kubeflow_runner.compile_pipeline(
        config, str(tmp / "compiled" / "cardio.json"), data_root="/compile-time/data",
        pipeline_root=ROOT, serving_root=str(tmp / "kfp-serving"), image=IMAGE,
        beam_args=kubeflow_runner.beam_pipeline_args("in-pod", IMAGE, workers=1),
        workers_per_cpu=False)   # one worker as given, not one per requested core
    cluster = kfp_harness.Cluster(tmp / "cluster")
    # The operator's upload step (`compile` prints it): the schema to where the spec reads it.
    schema = cluster.object_path(kubeflow_runner.schema_uri(ROOT))
    schema.parent.mkdir(parents=True)
    shutil.copy(tmp / "compiled" / "schema.pbtxt", schema)
    executed = []
    for i, extra in enumerate(runs_arguments):
        if new_span_each_run and i:
            shutil.copytree(data / "span-1", data / f"span-{i + 1}")
        executed.append(kfp_harness.run(
            kubeflow_runner.pipeline_spec_path(compiled),
            {kubeflow_runner.DATA_ROOT: str(data), kubeflow_runner.EPOCHS: RUN_EPOCHS,
             kubeflow_runner.LEARNING_RATE: RUN_LEARNING_RATE, **extra},
            str(tmp / f"pods-{i}"), cluster=cluster))
    local_config = dataclasses.replace(config, epochs=RUN_EPOCHS, learning_rate=RUN_LEARNING_RATE)
    return dict(tmp=tmp, config=local_config, executed=executed[0], runs=executed, data=data,
                cluster=cluster)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return compile_and_run(tmp_path_factory.mktemp("executed"), _config())


def _stored(runs, uri: str) -> str:
    """An artifact's files in the object store (the MinIO bucket, here a directory)."""
    path = runs["cluster"].object_path(uri)
    assert path is not None and path.exists(), uri
    return str(path)


@pytest.fixture(scope="module")
def local(runs):
    """The same configuration and data, run in process by LocalDagRunner (slow checks only)."""
    tmp = runs["tmp"]
    local_runner.run(runs["config"], str(runs["data"]), str(tmp / "local-root"),
                     str(tmp / "local-serving"))
    return runs


def _blessed(artifact: dict) -> bool:
    return int(artifact["metadata"].get("blessed", 0)) == 1


def _local_store(runs):
    return outputs.open_store(local_runner.metadata_path(str(runs["tmp"] / "local-root")))


def test_every_task_ran_under_the_specs_pipeline_root(runs):
    """Open-source semantics with a MinIO root: every output is in the object store under the
    spec's root, uploaded from the pod's local copy; inputs were downloaded into the pods."""
    executed = runs["executed"]
    spec = kfp_harness.load_spec(str(runs["tmp"] / "compiled" / "cardio.yaml"))
    assert set(executed.tasks) == set(spec["root"]["dag"]["tasks"])
    assert executed.backend == "open-source" and executed.pipeline_root == ROOT
    for task in executed.tasks.values():
        if task.kind == "container":
            for artifacts in task.outputs.values():
                assert artifacts[0]["uri"].startswith(f"{ROOT}/cardio-executed/"), task.name
    assert executed.tasks["LungSegmenter"].kind == "importer"
    assert executed.tasks["ImportSchemaGen"].kind == "importer"   # the schema, downloaded
    trainer = executed.tasks[f"Trainer.{CELL.name}"]
    model = executed.artifact(f"Trainer.{CELL.name}", "model")["uri"]
    assert os.path.isdir(os.path.join(_stored(runs, model), "Format-Serving"))
    # The Trainer's pod got its examples as local files, at the launcher's /minio/... path.
    examples = trainer.executor_input["inputs"]["artifacts"]["examples"]["artifacts"][0]["uri"]
    local = kfp_harness.launcher_local_path(examples, runs["tmp"] / "pods-0" / "pods" /
                                            trainer.name / "fs")
    assert examples.startswith("minio://") and (local / "Split-train").is_dir()
    # The Beam arguments ran as compiled: the in-pod multi-process runner.
    args = spec["deploymentSpec"]["executors"]["LungCrop_executor"]["container"]["args"]
    assert "--direct_running_mode=multi_processing" in args and "--direct_num_workers=1" in args


def test_span_resolved_without_the_lifecycle_hook(runs):
    """The open-source driver runs no `preCacheCheck` hook: ExampleGen's container got its
    pattern unresolved and resolved the span itself, with TFX's driver, stamping span, version
    and fingerprint on its output as TFX's driver does."""
    executed = runs["executed"]
    spec = kfp_harness.load_spec(str(runs["tmp"] / "compiled" / "cardio.yaml"))
    container = spec["deploymentSpec"]["executors"]["ImportExampleGen_executor"]["container"]
    assert "preCacheCheck" in container["lifecycle"]     # kept, for Vertex
    assert container["command"][-1] == kubeflow_runner.ENTRYPOINT
    given = executed.tasks["ImportExampleGen"].executor_input["inputs"]["parameterValues"]
    assert "{SPAN}" in given["input_config"]
    examples = executed.artifact("ImportExampleGen", "examples")
    # TFX's V2 entrypoint carries custom properties as `custom:<name>` metadata.
    assert int(examples["metadata"]["custom:span"]) == 1
    assert examples["metadata"]["input_fingerprint"].startswith("split:")
    assert set(os.listdir(_stored(runs, examples["uri"]))) >= {"Split-train", "Split-test"}
    # A task that resolves the newest span at run time is never served from KFP's cache, whose
    # key (its inputs as compiled) would stay the same when a new span lands.
    caching = spec["root"]["dag"]["tasks"]["ImportExampleGen"]["cachingOptions"]
    assert not caching.get("enableCache", False)


def test_runtime_parameters_reach_the_tasks(runs):
    executed = runs["executed"]
    example_gen = executed.tasks["ImportExampleGen"].executor_input["inputs"]["parameterValues"]
    assert example_gen["input_base"] == str(runs["data"])
    model_run = executed.artifact(f"Trainer.{CELL.name}", "model_run")["uri"]
    summary = json.loads(Path(_stored(runs, model_run), "training_summary.json").read_text())
    assert len(summary["epochs_run"]) == RUN_EPOCHS
    assert summary["config"]["learning_rate"] == RUN_LEARNING_RATE


def test_the_gate_blesses_per_site_and_the_pushed_model_serves(runs):
    executed = runs["executed"]
    if WEIGHTS == "random" and not _blessed(executed.artifact(f"Evaluator.{CELL.name}", "blessing")):
        pytest.skip("../shared/weights is absent: the model trained from random initialisation, "
                    "and the gate refused it (its logits ranked validation backwards)")
    assert _blessed(executed.artifact(f"Evaluator.{CELL.name}", "blessing"))
    slices = report.slice_metrics(evaluator.load(_stored(
        runs, executed.artifact(f"Evaluator.{CELL.name}", "evaluation")["uri"])))
    assert {"site=site-a", "site=site-b"} <= set(slices)
    pushed = executed.artifact(f"Pusher.{CELL.name}", "pushed_model")
    assert int(pushed["metadata"]["pushed"]) == 1
    destination = pushed["metadata"]["pushed_destination"]
    assert destination.startswith(str(runs["tmp"] / "kfp-serving" / CELL.name))
    images = [i["image"] for i in serving_demo.sample_images(str(runs["data"]), per_site=2)]
    served = tf.saved_model.load(destination)
    probability = served.signatures[F.SERVING_DEFAULT](
        **{F.IMAGE_BYTES: tf.constant(images)})[F.PROBABILITY].numpy()
    assert probability.shape == (len(images),) and np.all((probability >= 0) & (probability <= 1))


@pytest.mark.slow
def test_blessing_matches_the_local_run(local):
    runs = local
    executed = runs["executed"]
    blessing = executed.artifact(f"Evaluator.{CELL.name}", "blessing")
    local = outputs.latest_output(_local_store(runs), runs["config"].pipeline_name,
                                  f"Evaluator.{CELL.name}", "blessing")
    assert _blessed(blessing) is True
    assert local.custom_properties["blessed"].int_value == 1
    # The same evaluation: per-site AUCs of the two Evaluators agree.
    ours = report.slice_metrics(evaluator.load(_stored(
        runs, executed.artifact(f"Evaluator.{CELL.name}", "evaluation")["uri"])))
    local_eval = outputs.latest_output(_local_store(runs), runs["config"].pipeline_name,
                                       f"Evaluator.{CELL.name}", "evaluation")
    theirs = report.slice_metrics(evaluator.load(local_eval.uri))
    assert set(ours) == set(theirs) and {"site=site-a", "site=site-b"} <= set(ours)
    for name in ours:
        assert ours[name]["example_count"] == theirs[name]["example_count"], name
        assert ("auc" in ours[name]) == ("auc" in theirs[name]), name   # none without a class
        if "auc" in ours[name]:
            assert ours[name]["auc"] == pytest.approx(theirs[name]["auc"], abs=1e-3), name


@pytest.mark.slow
def test_pushed_model_matches_the_local_run(local):
    """The same weights, trained in a pod from the compiled spec and in process by
    LocalDagRunner (deterministic training on the same data), and the same served answers."""
    runs = local
    executed = runs["executed"]
    pushed = executed.artifact(f"Pusher.{CELL.name}", "pushed_model")
    assert int(pushed["metadata"]["pushed"]) == 1
    ours = pushed["metadata"]["pushed_destination"]
    theirs = glob.glob(str(runs["tmp"] / "local-serving" / CELL.name / "*"))
    assert ours.startswith(str(runs["tmp"] / "kfp-serving" / CELL.name)) and len(theirs) == 1
    assert os.path.isfile(os.path.join(ours, "saved_model.pb"))

    local_run = outputs.latest_output(_local_store(runs), runs["config"].pipeline_name,
                                      f"Trainer.{CELL.name}", "model_run").uri
    trained = [tf.keras.models.load_model(os.path.join(uri, task.KERAS_MODEL_FILE)).get_weights()
               for uri in (_stored(runs, executed.artifact(f"Trainer.{CELL.name}", "model_run")["uri"]),
                           local_run)]
    assert len(trained[0]) == len(trained[1]) > 100
    for ours_w, theirs_w in zip(*trained):
        np.testing.assert_allclose(ours_w, theirs_w, atol=1e-6)

    images = [i["image"] for i in serving_demo.sample_images(str(runs["data"]), per_site=4)]
    answers = []
    for version_dir in (ours, theirs[0]):
        served = tf.saved_model.load(version_dir)
        answers.append(served.signatures[F.SERVING_DEFAULT](
            **{F.IMAGE_BYTES: tf.constant(images)})[F.PROBABILITY].numpy())
        answers.append([served.platt_a.numpy(), served.platt_b.numpy(), served.threshold.numpy()])
    np.testing.assert_allclose(answers[0], answers[2], atol=1e-6)
    np.testing.assert_allclose(answers[1], answers[3], atol=1e-6)


def test_a_spec_without_its_pipeline_root_is_refused(runs, tmp_path):
    spec = kfp_harness.load_spec(str(runs["tmp"] / "compiled" / "cardio.yaml"))
    del spec["defaultPipelineRoot"]
    path = tmp_path / "lost-root.yaml"
    path.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="defaultPipelineRoot"):
        kfp_harness.run(str(path), {}, str(tmp_path / "pods"))


def test_the_open_source_launcher_refuses_a_root_it_cannot_map(runs, tmp_path):
    """launcher_v2.go (prepareOutputFolders) has no local path for a plain directory root."""
    spec = kfp_harness.load_spec(str(runs["tmp"] / "compiled" / "cardio.yaml"))
    spec["defaultPipelineRoot"] = str(tmp_path / "root")
    path = tmp_path / "local-root.yaml"
    path.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="LocalPathForURI"):
        kfp_harness.run(str(path), {}, str(tmp_path / "pods"))


@pytest.fixture(scope="module")
def grid_runs(tmp_path_factory):
    """The shortened configuration's whole grid (both class weightings), run twice on one
    cluster, the second time on the site's next span (slow checks only)."""
    grid = (CELL, configs.GridCell(CELL.backbone, "50-50"))
    return compile_and_run(tmp_path_factory.mktemp("executed-grid"), _config(grid),
                           runs_arguments=({}, {}), new_span_each_run=True)


@pytest.mark.slow
def test_the_whole_grid_runs_and_a_second_run_finds_the_first_runs_blessed_models(grid_runs):
    first, second = grid_runs["runs"]
    cells = [c.name for c in grid_runs["config"].grid]
    assert len(cells) == 2
    for run in (first, second):
        assert run.executed() == {n for n, t in run.tasks.items() if t.kind == "container"}
        comparison = run.artifact("ModelComparison", "comparison")["uri"]
        assert os.listdir(_stored(grid_runs, comparison))
    # ExampleGen's caching is off (its task's inputs do not change when a span arrives, so KFP's
    # cache would have served the old span): it ran again, resolved the new span without the
    # lifecycle hook, and every task after it ran on its new artifact.
    assert second.tasks["ImportExampleGen"].fingerprint == ""
    spans = [int(run.artifact("ImportExampleGen", "examples")["metadata"]["custom:span"])
             for run in (first, second)]
    assert spans == [1, 2]
    # DriftGate compared span 2 with span 1: the lookup found span 1's statistics in ML Metadata
    # and, with the MinIO root, stands for them by URI, so the gate's launcher downloaded them.
    first_statistics = first.artifact("StatisticsGen", "statistics")["uri"]
    assert int(first.artifact("PreviousStatisticsLookup", "previous")["metadata"][
        "current_span"]) == 1
    assert "previous_span" not in first.artifact("DriftGate", "drift")["metadata"]
    previous = second.artifact("PreviousStatisticsLookup", "previous")
    assert previous["uri"] == previous["metadata"]["previous_statistics_uri"] == first_statistics
    given = second.tasks["DriftGate"].executor_input["inputs"]["artifacts"][
        "previous_statistics"]["artifacts"][0]
    assert given["uri"] == first_statistics
    drift = second.artifact("DriftGate", "drift")
    # (ExampleAnomalies has a `span` property of its own: the gate's stamp is `custom:span`.)
    assert int(drift["metadata"]["custom:span"]) == 2
    assert int(drift["metadata"]["previous_span"]) == 1
    assert os.listdir(_stored(grid_runs, drift["uri"]))   # span 1 re-exported: no drift
    for cell in cells:
        assert _blessed(first.artifact(f"Evaluator.{cell}", "blessing"))
        assert int(first.artifact(f"BaselineLookup.{cell}", "baseline")["metadata"][
            "baseline_found"]) == 0
        # The second run's lookup found this cell's blessed model of the first run in ML
        # Metadata; with the MinIO root it stands for that model by URI, so the Evaluator's
        # launcher downloaded it, and the blessing names it as the baseline.
        first_model = first.artifact(f"Trainer.{cell}", "model")["uri"]
        baseline = second.artifact(f"BaselineLookup.{cell}", "baseline")
        assert int(baseline["metadata"]["baseline_found"]) == 1
        assert baseline["uri"] == baseline["metadata"]["baseline_model_uri"] == first_model
        evaluator = second.tasks[f"Evaluator.{cell}"]
        given = evaluator.executor_input["inputs"]["artifacts"]["baseline_model"]["artifacts"][0]
        assert given["uri"] == first_model
        blessing = second.artifact(f"Evaluator.{cell}", "blessing")
        assert blessing["metadata"]["baseline_model"] == first_model
        # TFX's entrypoint names the baseline by the input that brought it (ids are hashes of
        # runtime names there: kubeflow_v2_entrypoint_utils.refactor_model_blessing).
        assert blessing["metadata"]["baseline_model_id"] == given["name"]
        assert _blessed(blessing)   # the plumbing gate tolerates any change
