"""Every backbone of the study goes through the Trainer's run_fn, as the pipeline calls it: the
distribution strategy, a few training steps, the operating threshold and calibration, and the
export with the shipped lung U-Net. The raw-image signature must answer on radiographs, and its
probability must be the trained Keras model's on the lung crop, through the Platt scaling baked
into the export.

Random initialisation at a small input size (75 px, InceptionV3's minimum) keeps this fast; the
ImageNet loading path is tested with the MobileNet weights in ../shared (tests/test_trainer.py).
The suite runs the demo's backbone (MobileNet); the other four repeat the same run_fn and export
path at 1-2 minutes each, so they are slow checks (`python -m benchmarks checks`)."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tfx.components.trainer.fn_args_utils import FnArgs

from cardio import features as F, imaging
from cardio.data import convert
from cardio.imaging import crop, decode, unet as unet_lib
from cardio.pipeline.configs import STUDY_BACKBONES
from cardio.trainer import export, task

SIZE = 75


@pytest.fixture(scope="module")
def span(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    convert.write_synthetic(str(root), 24, seed=5, size=160, span=1, external_sites=(), workers=1)
    return root / "span-1"


def _raw_images(span, count=4) -> list:
    files = tf.io.gfile.glob(str(span / F.TEST / "*"))
    records = tf.data.TFRecordDataset(files, compression_type="GZIP").take(count)
    return [tf.train.Example.FromString(r.numpy()).features.feature[F.IMAGE].bytes_list.value[0]
            for r in records]


@pytest.mark.parametrize("backbone", [b if b == "mobilenet" else pytest.param(b, marks=pytest.mark.slow)
                                      for b in STUDY_BACKBONES])
def test_backbone_through_run_fn_serves_raw_radiographs(backbone, span, tmp_path):
    config = {"backbone": backbone, "weights": "random", "image_size": SIZE, "epochs": 1,
              "steps_per_epoch": 2, "batch_size": 2, "seed": 1,
              "segmenter_weights": os.path.join(imaging.SHIPPED_UNET_DIR,
                                                imaging.UNET_WEIGHTS_FILE),
              "crop_size": 128}
    serving_dir, run_dir = tmp_path / "model" / "Format-Serving", tmp_path / "model_run"
    # run_fn's body, which also hands back the trained Keras model.
    keras_model = task.train_and_export(FnArgs(
        train_files=[str(span / F.TRAIN / "*")], eval_files=[str(span / F.VALIDATION / "*")],
        serving_model_dir=str(serving_dir), model_run_dir=str(run_dir), custom_config=config))

    summary = json.loads((run_dir / "training_summary.json").read_text())
    assert summary["config"]["backbone"] == backbone and summary["epochs_run"] == [0]
    assert summary["strategy"], "run_fn records the distribution strategy it trained under"

    served = tf.saved_model.load(str(serving_dir))
    images = _raw_images(span)
    answer = served.signatures[F.SERVING_DEFAULT](**{F.IMAGE_BYTES: tf.constant(images)})
    probability = answer[F.PROBABILITY].numpy()
    assert probability.shape == (len(images),) and np.all((probability >= 0) & (probability <= 1))
    assert answer[F.CROP_BOX].numpy().shape == (len(images), 4)
    # The crop serving makes (the shared crop function, as the batch stage stored it), through
    # the trained model and the calibration baked into the export.
    unet = unet_lib.load(config["segmenter_weights"])
    model_input = tf.stack([decode.resize_for_model(
        tf.cast(crop.crop_encoded(unet, image, config["crop_size"])[0], tf.float32) / 65535.0,
        SIZE) for image in images])
    logits = export.logit_function(keras_model)(model_input).numpy()
    expected = 1 / (1 + np.exp(-(served.platt_a.numpy() * logits + served.platt_b.numpy())))
    np.testing.assert_allclose(probability, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(answer[F.PREDICTED_LABEL].numpy(),
                                  probability >= served.threshold.numpy())
