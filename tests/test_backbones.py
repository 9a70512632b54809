"""Every backbone of the study trains a few steps and exports a model whose raw-image signature
returns what the in-memory model computes on the same image.

Random initialisation at a small input size (75 px, InceptionV3's minimum) keeps this fast; the
ImageNet loading path is tested with the MobileNet weights in ../shared (tests/test_trainer.py)."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from cardio import features as F
from cardio.data import synth
from cardio.imaging import decode, files
from cardio.pipeline.configs import STUDY_BACKBONES
from cardio.trainer import export, model as model_lib

SIZE = 75


@pytest.fixture(scope="module")
def radiographs():
    """Four small synthetic radiographs of both sites (8- and 16-bit PNGs), and their labels."""
    encoded, labels = [], []
    for index, site, patient in synth.cohort(seed=11, n=4):
        radiograph = synth.sample(11, index, site, patient, size=160)
        encoded.append(files.encode_png(radiograph.image))
        labels.append(float(radiograph.label))
    labels[0] = 1.0 - labels[1]   # both classes in the batch, whatever the draw
    return encoded, np.array(labels, np.float32)


@pytest.mark.parametrize("backbone", STUDY_BACKBONES)
def test_backbone_trains_and_its_export_serves_the_same_probability(backbone, radiographs, tmp_path):
    encoded, labels = radiographs
    images = tf.stack([decode.preprocess(tf.constant(e), SIZE) for e in encoded])
    keras.utils.set_random_seed(0)
    model = model_lib.build_model(backbone, SIZE, "random")
    model.compile(optimizer=keras.optimizers.RMSprop(1e-3), loss="binary_crossentropy")
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(images, labels, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))

    export.export(model, str(tmp_path / "export"), SIZE, threshold=0.5)
    served = tf.saved_model.load(str(tmp_path / "export")).signatures[F.SERVING_DEFAULT]
    result = served(image_bytes=tf.constant(encoded))
    expected = model(images, training=False).numpy().reshape(-1)
    np.testing.assert_allclose(result["probability"].numpy(), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(result["predicted_label"].numpy(), (expected >= 0.5).astype(int))
