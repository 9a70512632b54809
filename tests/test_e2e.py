"""The walking skeleton, end to end: data in, validated, trained, evaluated per site, pushed."""
import glob
import os
import subprocess

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma

from conftest import REPO
from cxr import features as F
from pipeline import configs, local_runner, outputs, report
from trainer import export, task

CELL = configs.demo_config(None).grid[0]
PIPELINE = configs.demo_config(None).pipeline_name


def _store(e2e):
    return outputs.open_store(local_runner.metadata_path(str(e2e.pipeline_root)))


def _pushed_version_dir(e2e):
    versions = glob.glob(str(e2e.workdir / "serving" / CELL.name / "*"))
    if not versions and "--random-init" in e2e.command:
        pytest.skip("no model was pushed: ../shared/weights is absent, so the demo trained from "
                    "random initialisation, which the demo gate rejects")
    assert versions, f"no model was pushed; the run printed:\n{e2e.stdout}"
    return max(versions, key=lambda p: int(os.path.basename(p)))


def _test_images(e2e, count=6):
    files = glob.glob(str(e2e.workdir / "data" / "span-1" / F.TEST / "*.tfrecord.gz"))
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP").take(count)
    parsed = [tf.io.parse_single_example(x, {F.IMAGE: tf.io.FixedLenFeature([], tf.string)})
              for x in ds]
    return [p[F.IMAGE].numpy() for p in parsed]


def test_run_had_no_network(e2e):
    if e2e.network_interfaces is None:
        pytest.skip("cannot create a network namespace here (needs root or user namespaces)")
    assert e2e.network_interfaces == ["lo"]


def test_every_component_ran(e2e):
    store = _store(e2e)
    nodes = ["ImportExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator",
             f"Trainer.{CELL.name}", f"Evaluator.{CELL.name}", f"Pusher.{CELL.name}"]
    for node in nodes:
        executions = outputs.node_executions(store, PIPELINE, node)
        assert executions, node
        assert executions[-1].last_known_state == executions[-1].COMPLETE, node


def test_evaluation_is_per_site_and_never_pools_sites(e2e):
    evaluation = outputs.latest_output(_store(e2e), PIPELINE, f"Evaluator.{CELL.name}", "evaluation")
    result = tfma.load_eval_result(evaluation.uri)
    slices = report.slice_metrics(result)
    assert {"site=site-a", "site=site-b"} <= set(slices)
    assert all("site=" in name for name in slices), "a slice mixes internal and external data"
    for site in ("site=site-a", "site=site-b"):
        assert 0.0 <= slices[site]["auc"] <= 1.0
        assert slices[site]["example_count"] > 0
    # The demo prints the same table.
    assert "site=site-b" in e2e.stdout and "Gate profile 'demo'" in e2e.stdout


def test_blessed_model_is_pushed_in_tf_serving_layout(e2e):
    version_dir = _pushed_version_dir(e2e)
    assert os.path.basename(version_dir).isdigit()
    assert os.path.isfile(os.path.join(version_dir, "saved_model.pb"))
    assert e2e.summary["models"][CELL.name]["blessed"] is True
    assert e2e.summary["models"][CELL.name]["pushed_to"].rstrip("/") == version_dir.rstrip("/")
    assert f"pushed to {e2e.summary['models'][CELL.name]['pushed_to']}" in e2e.stdout


def test_pushed_model_matches_the_trained_keras_model_on_raw_images(e2e):
    version_dir = _pushed_version_dir(e2e)
    images = _test_images(e2e)
    served = tf.saved_model.load(version_dir)
    outputs_ = served.signatures[export.SERVING_DEFAULT](**{export.IMAGE_BYTES: tf.constant(images)})
    probabilities = outputs_[F.PROBABILITY].numpy()

    model_run = outputs.latest_output(_store(e2e), PIPELINE, f"Trainer.{CELL.name}", "model_run")
    keras_model = tf.keras.models.load_model(os.path.join(model_run.uri, task.KERAS_MODEL_DIR))
    from cxr import imaging
    size = keras_model.input_shape[1]
    batch = tf.stack([imaging.preprocess(tf.constant(b), size) for b in images])
    expected = keras_model(batch, training=False).numpy().reshape(-1)

    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert np.ptp(probabilities) > 1e-4, "different images must give different outputs"
    threshold = served.threshold.numpy()
    np.testing.assert_array_equal(outputs_[F.PREDICTED_LABEL].numpy(), probabilities >= threshold)


def test_examples_signature_agrees_with_raw_image_signature(e2e):
    version_dir = _pushed_version_dir(e2e)
    images = _test_images(e2e, 3)
    served = tf.saved_model.load(version_dir)
    examples = [tf.train.Example(features=tf.train.Features(feature={
        F.IMAGE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[b]))})).SerializeToString()
        for b in images]
    by_example = served.signatures[export.SERVING_EXAMPLES](examples=tf.constant(examples))
    by_image = served.signatures[export.SERVING_DEFAULT](**{export.IMAGE_BYTES: tf.constant(images)})
    np.testing.assert_allclose(by_example[F.PROBABILITY], by_image[F.PROBABILITY], atol=1e-6)


def test_second_run_reuses_cached_outputs(e2e):
    before = {node: len(outputs.node_executions(_store(e2e), PIPELINE, node))
              for node in ("StatisticsGen", f"Trainer.{CELL.name}", f"Evaluator.{CELL.name}")}
    from conftest import run_demo
    run_demo(e2e.workdir, cut_network=False)
    store = _store(e2e)
    for node, count in before.items():
        executions = outputs.node_executions(store, PIPELINE, node)
        assert len(executions) == count + 1, node
        assert executions[-1].last_known_state == executions[-1].CACHED, node
