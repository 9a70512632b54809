"""The ModelComparison component's executor on real records and SavedModels that keep the
export's contract (serving_examples + assets.extra/cardio_metadata.json): probabilities come from
the models, figures from those probabilities, the explain hook gets raw images."""
import csv
import glob
import json
import os
import shutil
import sys
import types

import numpy as np
import pytest
import tensorflow as tf
from sklearn import metrics as skm
from tfx.types import standard_artifacts

from cardio import features as F
from cardio.components import model_comparison as MC
from cardio.data import convert
from cardio.imaging import decode
from cardio.pipeline import configs

CELLS = ("cardio-tiny-75-25", "cardio-tiny-50-50")
SIZE = 16


class TinyModel(tf.Module):
    """probability = sigmoid(w . (16x16 thumbnail) + b): two different w, two different models."""
    def __init__(self, seed):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.w = tf.constant(rng.normal(0, 0.02, SIZE * SIZE * 3), tf.float32)

    def probability(self, encoded):
        images = tf.map_fn(lambda e: decode.preprocess(e, SIZE), encoded,
                           fn_output_signature=tf.TensorSpec([SIZE, SIZE, 3], tf.float32))
        x = tf.reshape(images, [-1, SIZE * SIZE * 3]) / 255.0 - 0.5
        return tf.sigmoid(tf.linalg.matvec(x, self.w) * 20.0)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve_examples(self, examples):
        parsed = tf.io.parse_example(examples, {F.IMAGE: tf.io.FixedLenFeature([], tf.string)})
        p = self.probability(parsed[F.IMAGE])
        return {F.PROBABILITY: p, F.PREDICTED_LABEL: tf.cast(p >= 0.5, tf.int64)}


def _export(model, root, threshold, weighting):
    serving = os.path.join(root, "Format-Serving")
    tf.saved_model.save(model, serving, signatures={"serving_examples": model.serve_examples})
    os.makedirs(os.path.join(serving, "assets.extra"))
    with open(os.path.join(serving, "assets.extra", "cardio_metadata.json"), "w") as f:
        json.dump({"operating_threshold": threshold, "backbone": "tiny", "weighting": weighting}, f)


def _artifact(kind, uri, **int_properties):
    artifact = kind()
    artifact.uri = str(uri)
    for key, value in int_properties.items():
        artifact.set_int_custom_property(key, value)
    return artifact


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("comparison")
    convert.write_synthetic(str(root / "data"), 160, seed=2, size=128, span=1,
                            external_sites=("site-b",), workers=1)
    for split in F.SPLITS:    # the Examples artifact layout: Split-<name>/
        os.makedirs(root / "examples" / f"Split-{split}")
        for path in glob.glob(str(root / "data" / "span-1" / split / "*.tfrecord.gz")):
            shutil.copy(path, root / "examples" / f"Split-{split}")
    trained, models = {}, {}
    for i, (cell, weighting) in enumerate(zip(CELLS, ("75-25", "50-50"))):
        models[cell] = TinyModel(i)
        _export(models[cell], root / cell / "model", 0.4 + 0.1 * i, weighting)
        os.makedirs(root / cell / "run")
        with open(root / cell / "run" / "training_summary.json", "w") as f:
            json.dump({"config": {"target_sensitivity": 0.9}}, f)
        pushed = _artifact(standard_artifacts.PushedModel, root / cell / "pushed", pushed=i == 0)
        if i == 0:
            pushed.set_string_custom_property("pushed_destination", "serving/x/17")
            pushed.set_string_custom_property("pushed_version", "17")
        trained[cell] = {
            "model": [_artifact(standard_artifacts.Model, root / cell / "model")],
            "model_run": [_artifact(standard_artifacts.ModelRun, root / cell / "run")],
            # Only the first is blessed: the second may not be champion whatever its AUC.
            "blessing": [_artifact(standard_artifacts.ModelBlessing, root / cell / "b",
                                   blessed=int(i == 0))],
            "pushed_model": [pushed]}
    return root, trained, models


def _run(root, trained, out_name):
    examples = _artifact(standard_artifacts.Examples, root / "examples")
    output = _artifact(MC.ModelComparisonArtifact, root / out_name)
    input_dict = {"examples": [examples]}
    for cell, channels in trained.items():
        for role, artifacts in channels.items():
            input_dict[MC.input_key(role, cell)] = artifacts
    config = configs.PipelineConfig(deployment_prevalence=0.2, fairness_min_per_class=5)
    MC.Executor().Do(input_dict, {MC.OUTPUT_KEY: [output]}, {
        "cells": json.dumps(list(trained)),
        "settings": json.dumps({"internal_sites": ["site-a"], "external_site": "site-b",
                                "deployment_prevalence": config.deployment_prevalence,
                                "fairness_min_per_class": config.fairness_min_per_class})})
    return root / out_name


def _predictions(out):
    with open(out / MC.PREDICTIONS_CSV) as f:
        return list(csv.DictReader(f))


def test_scores_come_from_each_model_and_figures_from_the_scores(inputs, monkeypatch):
    root, trained, models = inputs
    import cardio.evaluation
    monkeypatch.delattr(cardio.evaluation, "explain", raising=False)
    monkeypatch.setitem(sys.modules, "cardio.evaluation.explain", None)    # as if the module were absent
    out = _run(root, trained, "without_explain")
    result = json.loads((out / MC.COMPARISON_JSON).read_text())
    rows = _predictions(out)
    assert {r["split"] for r in rows} == {F.VALIDATION, F.TEST, F.EXTERNAL}

    # Every probability is the model's own on that record.
    records = [raw.numpy() for split in MC.SCORED_SPLITS for raw in tf.data.TFRecordDataset(
        sorted(glob.glob(str(root / "examples" / f"Split-{split}" / "*"))), compression_type="GZIP")]
    assert len(records) == len(rows)
    for cell, model in models.items():
        expected = model.serve_examples(tf.constant(records))[F.PROBABILITY].numpy()
        np.testing.assert_allclose([float(r[cell]) for r in rows], expected, atol=1e-5)

    # AUC and metrics at the exported threshold, as scikit-learn computes them from those scores.
    for cell, threshold in zip(CELLS, (0.4, 0.5)):
        model = result["models"][cell]
        assert model["threshold"] == pytest.approx(threshold)
        assert model["target_sensitivity"] == 0.9
        ext = [r for r in rows if r["split"] == F.EXTERNAL]
        y = np.array([int(r[F.LABEL]) for r in ext])
        p = np.array([float(r[cell]) for r in ext])
        g = model["groups"][F.EXTERNAL]
        assert g["auc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-6)
        assert g["operating"]["sensitivity"] == pytest.approx(skm.recall_score(y, p >= threshold))
        assert g["study_0.5"]["specificity"] == pytest.approx(skm.recall_score(y, p >= 0.5, pos_label=0))

    assert result["models"][CELLS[0]]["blessed"] is True
    assert result["models"][CELLS[1]]["blessed"] is False
    assert result["champion"]["model_name"] == CELLS[0]
    assert result["models"][CELLS[0]]["pushed"] == {"pushed": True, "destination": "serving/x/17",
                                                    "version": "17"}
    assert len(result["delong"]) == 3 and {r["kind"] for r in result["delong"]} == {"weighting"}
    text = (out / "report.md").read_text()
    assert "cardio.evaluation.explain is not installed yet" in text
    assert os.path.getsize(out / "roc_curves.png") > 10_000
    assert "Pushed as version 17" in text


def test_explain_hook_gets_raw_images_and_each_models_export(inputs, monkeypatch):
    root, trained, _ = inputs
    calls = []

    def load(model_dir, loaded):
        assert "serving_examples" in loaded.signatures   # the export already loaded, reused
        return model_dir

    def explain(model_dir, images):
        calls.append((model_dir, [name for name, _ in images]))
        assert all(tf.io.decode_image(data).shape[0] > 0 for _, data in images)
        return [f"{model_dir}:{name}" for name, _ in images]

    def write_figures(model_dir, explanations, out_dir):
        assert explanations[0].startswith(model_dir)
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, "first.png")
        tf.io.write_file(path, tf.io.encode_png(tf.zeros([4, 4, 1], tf.uint8)))
        return [path]

    def comparison_figure(per_model, path):
        # Each model's own explanations, computed once: not explained again for this figure.
        calls.append((sorted(per_model), len(next(iter(per_model.values())))))
        assert len({e.split(":")[0] for es in per_model.values() for e in es}) == 2
        tf.io.write_file(path, tf.io.encode_png(tf.zeros([4, 4, 1], tf.uint8)))
        return path

    fake = types.ModuleType("cardio.evaluation.explain")
    fake.load, fake.explain, fake.write_figures = load, explain, write_figures
    fake.comparison_figure = comparison_figure
    import cardio.evaluation
    monkeypatch.setitem(sys.modules, "cardio.evaluation.explain", fake)
    monkeypatch.setattr(cardio.evaluation, "explain", fake, raising=False)
    out = _run(root, trained, "with_explain")
    assert sorted(os.path.normpath(d).split(os.sep)[-3] for d, _ in calls[:2]) == sorted(CELLS)
    names = calls[0][1]
    # The study's Figure 6: the backbone's two weightings side by side on the same images.
    assert len(calls) == 3 and calls[2] == (["50-50", "75-25"], len(names))
    assert (out / "overlays" / "weightings_tiny.png").exists()
    assert sum(n.startswith("test-cardiomegaly") for n in names) == MC.OVERLAY_IMAGES
    assert sum(n.startswith("external-normal") for n in names) == 1
    text = (out / "report.md").read_text()
    assert f"![first.png](overlays/{CELLS[0]}/first.png)" in text
    assert (out / "overlays" / CELLS[0] / "first.png").exists()


def test_a_record_with_a_bad_label_is_named(tmp_path):
    os.makedirs(tmp_path / "Split-validation")
    example = tf.train.Example()
    example.features.feature[F.LABEL].int64_list.value.append(3)
    example.features.feature[F.IMAGE_ID].bytes_list.value.append(b"img-7")
    with tf.io.TFRecordWriter(str(tmp_path / "Split-validation" / "d.gz"), "GZIP") as w:
        w.write(example.SerializeToString())
    with pytest.raises(ValueError, match=r"split 'validation', record 0 \(image_id img-7\): label 3"):
        MC.read_cases(str(tmp_path), splits=(F.VALIDATION,))


def test_compiles_for_kubeflow_with_every_cells_model_blessing_and_push(tmp_path):
    """The study grid's ModelComparison in a KubeflowV2DagRunner PipelineJob: one input per
    cell and role, each from that cell's own Trainer, Evaluator and Pusher."""
    import dataclasses

    from tfx import v1 as tfx

    from cardio.pipeline.pipeline import create_pipeline

    config = dataclasses.replace(configs.PipelineConfig(), segmenter_uri="gs://bucket/unet")
    pipeline = create_pipeline(config, data_root="gs://b/data", pipeline_root="gs://b/root",
                               serving_root="gs://b/serving", schema_file="gs://b/schema.pbtxt")
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image="cardio:1"),
        output_filename=str(tmp_path / "job.json"))
    runner.run(pipeline, write_out=True)
    spec = json.loads((tmp_path / "job.json").read_text())["pipelineSpec"]
    task = spec["root"]["dag"]["tasks"][MC.NODE_ID]
    producers = {key: value["taskOutputArtifact"]["producerTask"]
                 for key, value in task["inputs"]["artifacts"].items()}
    assert producers["examples"] == "LungCrop" and producers["raw_examples"] == "ImportExampleGen"
    assert producers["crop_report"] == "CropReport"   # two sites: the t-SNE by site
    assert len(config.grid) == 10
    for cell in config.grid:
        for role, node in (("model", "Trainer"), ("model_run", "Trainer"),
                           ("blessing", "Evaluator"), ("pushed_model", "Pusher")):
            assert producers[MC.input_key(role, cell.name)] == f"{node}.{cell.name}"
    assert len(producers) == 3 + 4 * len(config.grid)
    settings = json.loads(task["inputs"]["parameters"]["settings"]["runtimeValue"]
                          ["constantValue"]["stringValue"])
    assert settings["deployment_prevalence"] == config.deployment_prevalence
    executor = spec["deploymentSpec"]["executors"][f"{MC.NODE_ID}_executor"]["container"]
    assert "cardio.components.model_comparison.Executor" in executor["args"]
