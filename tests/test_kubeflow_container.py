"""A compiled Trainer task runs as Kubeflow Pipelines runs it in its pod: the container's command
and arguments from the compiled spec, with `{{$}}` replaced by the ExecutorInput KFP's launcher
passes (the task's constants, the run's runtime parameters, input and output artifacts). This
checks the image contract (entrypoint, executor class path, parameter types) and that a run's
`epochs` and `learning_rate` reach the run_fn."""
import dataclasses
import json
import os
import subprocess
from pathlib import Path

import tensorflow as tf

from cardio import schemas
from cardio.data import convert
from cardio.pipeline import configs, kubeflow_runner

REPO = Path(__file__).resolve().parents[1]
CELL = configs.GridCell("mobilenet_025", "75-25")


def _artifact(kind: str, uri: Path, **metadata) -> dict:
    return {"artifacts": [{"name": f"artifacts/{uri.name}", "type": {"schemaTitle": f"tfx.{kind}"},
                           "uri": str(uri), "metadata": metadata}]}


def test_compiled_trainer_task_runs_with_the_runs_parameters(tmp_path):
    # A demo-sized configuration that trains here: random initialisation, 64 px, two steps, no
    # crop stage (the U-Net in the export is the crop tests' business).
    config = dataclasses.replace(
        kubeflow_runner.profile_config("demo"), grid=(CELL,), weights="random", image_size=64,
        batch_size=4, steps_per_epoch=2, segmenter_uri=None)
    path = kubeflow_runner.compile_pipeline(
        config, str(tmp_path / "cardio.json"), data_root=str(tmp_path / "data"),
        pipeline_root=str(tmp_path / "root"), serving_root=str(tmp_path / "serving"),
        image="registry.example/cardio:1")
    spec = json.loads(Path(path).read_text())["pipelineSpec"]
    task = spec["root"]["dag"]["tasks"][f"Trainer.{CELL.name}"]
    container = spec["deploymentSpec"]["executors"][f"Trainer.{CELL.name}_executor"]["container"]

    convert.write_synthetic(str(tmp_path / "data"), 24, seed=7, size=96, span=1,
                            external_sites=(), workers=1)
    examples = tmp_path / "examples"
    os.makedirs(examples)
    for split in ("train", "validation"):
        os.symlink(tmp_path / "data" / "span-1" / split, examples / f"Split-{split}")
    schema = tmp_path / "schema"
    schemas.render(config.sites, str(schema / "schema.pbtxt"))

    run_parameters = {"epochs": 1, "learning_rate": 0.002}   # this run's, not the defaults
    parameters = {}
    for name, value in task["inputs"]["parameters"].items():
        parameters[name] = (run_parameters[value["componentInputParameter"]]
                            if "componentInputParameter" in value
                            else value["runtimeValue"]["constant"])
    executor_input = {
        "inputs": {"parameterValues": parameters, "artifacts": {
            "examples": _artifact("Examples", examples, split_names='["train", "validation"]'),
            "schema": _artifact("Schema", schema)}},
        "outputs": {"artifacts": {"model": _artifact("Model", tmp_path / "model"),
                                  "model_run": _artifact("ModelRun", tmp_path / "model_run")},
                    "outputFile": str(tmp_path / "task" / "executor_output.json")}}
    args = [json.dumps(executor_input) if a == "{{$}}" else a for a in container["args"]]
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(container["command"] + args, env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]

    summary = json.loads((tmp_path / "model_run" / "training_summary.json").read_text())
    assert summary["epochs_run"] == [0]
    assert summary["config"]["learning_rate"] == 0.002
    assert (summary["config"]["backbone"], summary["config"]["weighting"]) == \
        (CELL.backbone, CELL.weighting)
    served = tf.saved_model.load(str(tmp_path / "model" / "Format-Serving"))
    assert "serving_default" in served.signatures
    # KFP reads the task's outputs back from the executor output file.
    output = json.loads((tmp_path / "task" / "executor_output.json").read_text())
    assert set(output["artifacts"]) == {"model", "model_run"}
