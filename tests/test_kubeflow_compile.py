"""The same pipeline definition compiles for Kubeflow Pipelines 2.x with KubeflowV2DagRunner."""
import dataclasses
import json

import pytest

from pipeline import configs, kubeflow_runner


@pytest.mark.parametrize("profile", ["demo", "study"])
def test_pipeline_compiles_to_a_pipeline_job(tmp_path, profile):
    config = configs.demo_config(None) if profile == "demo" else configs.PipelineConfig()
    config = dataclasses.replace(config, segmenter_uri="gs://bucket/unet")
    path = kubeflow_runner.compile_pipeline(
        config, str(tmp_path / "job.json"), data_root="gs://bucket/data",
        pipeline_root="gs://bucket/root", serving_root="gs://bucket/serving", image="registry/cardio:1.2.3")
    job = json.loads(open(path).read())
    spec = job["pipelineSpec"]
    tasks = spec["root"]["dag"]["tasks"]
    expected = {"ImportExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator",
                "AnomalyGate", "LungSegmenter", "LungCrop", "CropReport"}
    for cell in config.grid:
        expected |= {f"Trainer.{cell.name}", f"Evaluator.{cell.name}", f"Pusher.{cell.name}"}
    assert expected == set(tasks)
    assert len(config.grid) == (1 if profile == "demo" else 10)
    # Data flows ExampleGen -> LungCrop -> Trainer -> Evaluator -> Pusher; cropping and training
    # wait for the anomaly gate.
    assert "AnomalyGate" in tasks["LungCrop"].get("dependentTasks", [])
    assert tasks["LungCrop"]["inputs"]["artifacts"]["segmenter"]["taskOutputArtifact"][
        "producerTask"] == "LungSegmenter"
    assert tasks["AnomalyGate"]["inputs"]["artifacts"]["anomalies"]["taskOutputArtifact"][
        "producerTask"] == "ExampleValidator"
    for cell in config.grid:
        trainer = tasks[f"Trainer.{cell.name}"]
        assert "AnomalyGate" in trainer.get("dependentTasks", [])
        assert trainer["inputs"]["artifacts"]["examples"]["taskOutputArtifact"]["producerTask"] == \
            "LungCrop"
        pusher = tasks[f"Pusher.{cell.name}"]["inputs"]["artifacts"]
        assert pusher["model_blessing"]["taskOutputArtifact"]["producerTask"] == f"Evaluator.{cell.name}"
    # The schema with the configured sites is written beside the job, for upload.
    assert "site-a" in (tmp_path / "schema.pbtxt").read_text()
    assert kubeflow_runner.schema_uri("gs://bucket/root") in open(path).read()
    executors = spec["deploymentSpec"]["executors"]
    containers = [e["container"] for e in executors.values() if "container" in e]
    assert len(containers) == len(executors) - 1    # all but the U-Net importer run a container
    assert {c["image"] for c in containers} == {"registry/cardio:1.2.3"}
    importer = next(e["importer"] for e in executors.values() if "importer" in e)
    assert "gs://bucket/unet" in json.dumps(importer)
