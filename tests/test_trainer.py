"""Model factory, weights resolution, operating point and the input pipeline."""
import numpy as np
import pytest
import tensorflow as tf
from conftest import shared_path

from cardio.data import convert
from cardio.trainer import data, model as model_lib, operating_point, task


def test_missing_weights_is_a_clear_error(tmp_path):
    with pytest.raises(model_lib.WeightsNotFound, match="densenet121.*weights='random'"):
        model_lib.resolve_weights("densenet121", 224, str(tmp_path))


def test_keras_cache_and_imagenet_as_users_expect_them(tmp_path, monkeypatch):
    """~/.keras/models is looked up; `imagenet` downloads when not cached, and offline the error
    names the file and where to put it."""
    monkeypatch.setenv("HOME", str(tmp_path))
    cache = tmp_path / ".keras" / "models"

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    from tf_keras.src.applications import mobilenet
    monkeypatch.setattr(mobilenet.data_utils, "get_file", offline)
    assert model_lib.resolve_weights("mobilenet_025", 128, "imagenet") == "imagenet"
    with pytest.raises(model_lib.WeightsNotFound) as error:
        model_lib.build_model("mobilenet_025", 128, "imagenet")
    assert "mobilenet_2_5_224_tf_no_top.h5" in str(error.value)
    assert str(cache) in str(error.value) and "random" in str(error.value)

    cache.mkdir(parents=True)
    (cache / "mobilenet_2_5_224_tf_no_top.h5").write_bytes(b"")
    for weights in (None, "imagenet"):
        assert model_lib.resolve_weights("mobilenet_025", 128, weights) == str(
            cache / "mobilenet_2_5_224_tf_no_top.h5")


def test_weights_from_the_image_or_a_uri_are_resolved_where_the_trainer_runs(tmp_path,
                                                                            monkeypatch):
    """What a compiled pipeline may name (pipeline/kubeflow_runner.py, check_cluster_places):
    `image`, the pipeline image's directory, looked up in the pod; or a URI read with
    TensorFlow's file systems (gs:// on a cluster; file:// here) and copied to a local file."""
    monkeypatch.setenv("HOME", str(tmp_path))
    in_image = tmp_path / "opt-cardio-weights"
    in_image.mkdir()
    (in_image / "mobilenet_2_5_224_tf_no_top.h5").write_bytes(b"in the image")
    monkeypatch.setattr(model_lib, "IMAGE_WEIGHTS_DIR", str(in_image))
    assert model_lib.resolve_weights("mobilenet_025", 128, "image") == str(
        in_image / "mobilenet_2_5_224_tf_no_top.h5")
    with pytest.raises(model_lib.WeightsNotFound, match=str(in_image)):
        model_lib.resolve_weights("xception", 224, "image")

    for uri in (f"file://{in_image}", f"file://{in_image}/mobilenet_2_5_224_tf_no_top.h5"):
        local = model_lib.resolve_weights("mobilenet_025", 128, uri)
        assert local.endswith("mobilenet_2_5_224_tf_no_top.h5") and "://" not in local
        assert open(local, "rb").read() == b"in the image"
    with pytest.raises(model_lib.WeightsNotFound, match="xception_weights.*'image'"):
        model_lib.resolve_weights("xception", 224, f"file://{in_image}")


def test_random_initialisation_only_when_asked():
    assert model_lib.resolve_weights("xception", 224, "random") is None


def test_shared_mobilenet_imagenet_weights_load():
    weights = shared_path("weights", "mobilenet_2_5_224_tf_no_top.h5")
    model = model_lib.build_model("mobilenet_025", 224, str(weights.parent))
    base = next(l for l in model.layers if l.name.startswith("mobilenet"))
    assert base.count_params() == 218544
    random = model_lib.build_model("mobilenet_025", 224, "random")
    random_base = next(l for l in random.layers if l.name.startswith("mobilenet"))
    assert not np.allclose(base.get_weights()[0], random_base.get_weights()[0])
    # 3-layer MLP head: two ReLU layers with dropout 0.3, one sigmoid output.
    dense = [l for l in model.layers if isinstance(l, tf.keras.layers.Dense)]
    assert [d.activation.__name__ for d in dense] == ["relu", "relu", "sigmoid"]
    assert [l.rate for l in model.layers if isinstance(l, tf.keras.layers.Dropout)] == [0.3, 0.3]


def test_unknown_training_option_is_rejected():
    with pytest.raises(ValueError, match="unknown training option"):
        task.TrainingConfig.from_custom_config({"epocs": 3})
    with pytest.raises(ValueError, match="weighting"):
        task.TrainingConfig.from_custom_config({"weighting": "60-40"})


def test_operating_threshold_reaches_target_sensitivity():
    rng = np.random.default_rng(0)
    labels = rng.random(500) < 0.3
    probs = np.clip(labels * 0.3 + rng.random(500) * 0.7, 0, 1)
    threshold = operating_point.choose_threshold(labels, probs, 0.9)
    sensitivity = (probs[labels] >= threshold).mean()
    assert sensitivity >= 0.9
    # The highest such threshold: any higher one misses the target.
    assert (probs[labels] >= np.nextafter(threshold, 1)).mean() < 0.9


@pytest.fixture(scope="module")
def tiny_span(tmp_path_factory):
    out = tmp_path_factory.mktemp("span")
    convert.write_synthetic(str(out), 24, seed=0, size=128, span=1, external_sites=(), workers=1)
    return out


def test_input_pipeline_augments_only_positives_and_is_deterministic(tiny_span):
    pattern = str(tiny_span / "span-1" / "*" / "*.tfrecord.gz")
    plain = data.make_dataset(pattern, 64, 64, training=False)
    augmented = data.make_dataset(pattern, 64, 64, training=True, deterministic=True, seed=3,
                                  repeat=False)
    augmented_again = data.make_dataset(pattern, 64, 64, training=True, deterministic=True,
                                        seed=3, repeat=False)
    (x0, y0), = list(plain)
    (x1, y1), = list(augmented)
    (x2, _), = list(augmented_again)
    np.testing.assert_array_equal(x1, x2)
    # Match images across the shuffle by their untouched negatives.
    originals = {x.numpy().tobytes(): y for x, y in zip(x0, y0)}
    negatives = [x for x, y in zip(x1, y1) if y == 0]
    positives = [x for x, y in zip(x1, y1) if y == 1]
    assert positives and negatives
    assert all(x.numpy().tobytes() in originals for x in negatives)
    # Each cardiomegaly image is kept, and one augmented copy of it is added.
    kept = [x for x in positives if x.numpy().tobytes() in originals]
    assert len(kept) == int(sum(y0)) and len(positives) == 2 * len(kept)
    assert x1.shape[1:] == (64, 64, 3) and float(tf.reduce_max(x1)) <= 255.0


def test_decoding_once_gives_every_epoch_the_same_batches(tiny_span):
    """The Trainer keeps a small split decoded in memory: three epochs of shuffled, augmented
    training batches and the validation batches are the ones decoding every epoch gives."""
    pattern = str(tiny_span / "span-1" / "*" / "*.tfrecord.gz")
    # 15 batches of 5 run into a third epoch of the 24 images (and their positives' copies).
    for training in (True, False):
        batches = [list(data.make_dataset(pattern, 5, 48, training=training, deterministic=True,
                                          seed=4, repeat=True, cache_decoded=cache).take(15))
                   for cache in (False, True)]
        for (x, y), (x_cached, y_cached) in zip(*batches, strict=True):
            np.testing.assert_array_equal(x, x_cached)
            np.testing.assert_array_equal(y, y_cached)


@pytest.mark.parametrize("copies", [0, 3])
def test_augmented_copies_change_the_class_ratio_per_epoch(tiny_span, copies):
    """The study's augmentation adds cardiomegaly copies: one epoch holds every original image
    and `copies` augmented copies of each positive, so the class ratio moves towards balance."""
    pattern = str(tiny_span / "span-1" / "*" / "*.tfrecord.gz")
    _, y0 = next(iter(data.make_dataset(pattern, 256, 32, training=False)))
    epoch = data.make_dataset(pattern, 256, 32, training=True, repeat=False, seed=1,
                              positive_copies=copies, augment_positives=True)
    labels = np.concatenate([y.numpy() for _, y in epoch])
    positives, negatives = int(y0.numpy().sum()), int((y0.numpy() == 0).sum())
    assert positives and negatives
    assert (int(labels.sum()), int((labels == 0).sum())) == ((1 + copies) * positives, negatives)
    assert task.count_positives(pattern) == positives


def test_every_pipeline_setting_reaches_the_trainer():
    """The pipeline's config and the trainer's agree on every option, the study's recipe first."""
    from cardio.pipeline import configs
    config = configs.PipelineConfig()
    for cell in config.grid:
        training = task.TrainingConfig.from_custom_config(config.trainer_custom_config(cell))
        assert (training.backbone, training.weighting) == (cell.backbone, cell.weighting)
    assert (training.learning_rate, training.batch_size, training.epochs) == (1e-3, 16, 30)
    assert (training.lr_factor, training.lr_patience, training.image_size) == (0.5, 5, 224)
    assert training.augment_positives and training.mixed_precision
    assert len(config.grid) == 10
    changed = configs.demo_config(None, lr_patience=2, augment_positives=False)
    training = task.TrainingConfig.from_custom_config(changed.trainer_custom_config(changed.grid[0]))
    assert (training.lr_patience, training.augment_positives) == (2, False)
