"""Explainability: guided-backprop gradients, the exported `explain` signature and its sanity
checks (Adebayo et al. 2018 model-parameter randomisation; Grad-CAM on the heart of synthetic
radiographs), `cardio explain` on PNG, DICOM and broken files.

One mobilenet_025 (the ImageNet weights in ../shared) is fine-tuned for a few seconds at 128 px
on synthetic radiographs whose label is the heart's size, and shared by the tests below.
"""
import io
import json
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from click.testing import CliRunner
from conftest import shared_path
from PIL import Image
from scipy import stats

from cardio.cli import main
from cardio.data import convert, synth
from cardio.evaluation import explain
from cardio.imaging import decode, files, saliency, unet
from cardio.trainer import export, model as model_lib

SIZE = 128
SITE = synth.SITES["site-a"]


def radiograph(seed: int, index: int):
    """A small synthetic radiograph, alternately normal (CTR 0.36-0.45) and cardiomegaly (CTR
    0.55-0.66), as (uint16 image, heart mask, label)."""
    rng = synth._rng(seed, "explain", index)
    label = index % 2
    ctr = rng.uniform(0.55, 0.66) if label else rng.uniform(0.36, 0.45)
    image, _, heart = synth.draw(rng, ctr, SITE, 160)
    return synth.acquire(image, SITE, rng), heart, label


def model_input(image: np.ndarray) -> np.ndarray:
    scaled = tf.constant(image / 65535.0, tf.float32)[..., None]
    return decode.resize_for_model(scaled, SIZE).numpy()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(Keras model, its export without a crop stage, held-out radiographs)."""
    weights = shared_path("weights", "mobilenet_2_5_224_tf_no_top.h5")
    train = [radiograph(0, i) for i in range(256)]
    x = np.stack([model_input(image) for image, _, _ in train])
    y = np.array([label for _, _, label in train], np.float32)
    keras.utils.set_random_seed(0)
    model = model_lib.build_model("mobilenet_025", SIZE, str(weights.parent))
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.BinaryCrossentropy())
    model.fit(x, y, batch_size=16, epochs=5, verbose=0)
    model_dir = tmp_path_factory.mktemp("explain") / "cardio" / "1"
    export.export(model, str(model_dir), SIZE, 0.5, metadata={"backbone": "mobilenet_025",
                                                              "weighting": "50-50"})
    return model, model_dir, [radiograph(1, i) for i in range(16)]


def test_guided_activation_passes_only_positive_gradients_where_active():
    x = tf.constant([-2.0, -0.5, 0.5, 3.0, 7.0])
    dy = tf.constant([1.0, 1.0, -1.0, 1.0, 1.0])
    relu6 = keras.layers.ReLU(6.0)
    for fn, local in [(tf.nn.relu, [0, 0, 1, 1, 1]), (relu6, [0, 0, 1, 1, 0])]:
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = saliency.guided(fn)(x)
        np.testing.assert_allclose(y, fn(x))                    # the forward pass is unchanged
        # Springenberg's rule: active input and positive incoming gradient; ReLU6 off above 6.
        np.testing.assert_allclose(tape.gradient(y, x, output_gradients=dy),
                                   np.array(local) * np.maximum(dy, 0))
    # Swish (EfficientNet): its own derivative times the positive part of the gradient.
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        plain, y = tf.nn.silu(x), saliency.guided(tf.nn.silu)(x)
    np.testing.assert_allclose(tape.gradient(y, x, output_gradients=dy),
                               tape.gradient(plain, x) * np.maximum(dy, 0), rtol=1e-6)


def test_mass_ratio_is_one_for_a_flat_map_and_follows_the_crop_box():
    region = np.zeros((200, 100), bool)
    region[100:150, 50:100] = True            # the lower right quarter of the crop box below
    box = np.array([0.5, 0.0, 1.0, 1.0])      # the image's lower half, as the crop
    flat = np.ones((32, 32), np.float32)
    e = explain.Explanation("x", np.zeros((200, 100)), flat * 0, 0.5, 1, 0.0, box, [], flat, flat)
    assert explain.mass_ratio(e, region) == pytest.approx(1.0, rel=1e-3)
    focused = np.zeros((32, 32), np.float32)
    focused[:16, 16:] = 1.0                   # all the mass on the region, a quarter of the crop
    e.gradcam = focused
    assert explain.mass_ratio(e, region) == pytest.approx(4.0, rel=1e-3)
    e.gradcam = flat * 0
    assert np.isnan(explain.mass_ratio(e, region))


def test_a_classifier_of_another_shape_is_refused_by_name():
    inputs = keras.Input((16, 16, 3))
    flat = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(inputs)), name="flat")
    with pytest.raises(saliency.NotExplainable, match="flat: expected one nested backbone"):
        saliency.Saliency(flat)


def test_saliency_reproduces_the_model_and_guides_every_rectifier(trained):
    model, _, held_out = trained
    explainer = saliency.Saliency(model)
    assert explainer.feature_layer == "conv_pw_13_relu"      # MobileNet's last convolution
    x = tf.constant(np.stack([model_input(image) for image, _, _ in held_out[:4]]))
    logit, cam, guided_backprop = explainer.explain(x)
    np.testing.assert_allclose(tf.sigmoid(logit), model(x, training=False)[:, 0], atol=1e-5)
    assert cam.shape == guided_backprop.shape == (4, SIZE, SIZE) and float(tf.reduce_min(cam)) >= 0
    # Every ReLU6 of the backbone (14 convolution blocks: 27 activations) runs guided, and the
    # guided copy shares the served weights rather than holding a second set.
    wrapped = [l for l in explainer.guided_features.layers if isinstance(l, saliency._GuidedLayer)]
    assert len(wrapped) == 27
    assert {id(w) for w in explainer.guided_features.weights} <= {id(w) for w in model.weights}
    # Guided backprop differs from the plain input gradient.
    with tf.GradientTape() as tape:
        tape.watch(x)
        plain_logit = explainer.logit(x)
    plain = tf.reduce_sum(tape.gradient(plain_logit, x), axis=-1).numpy()
    assert abs(np.corrcoef(plain.ravel(), guided_backprop.numpy().ravel())[0, 1]) < 0.9


def test_gradcam_mass_falls_on_the_heart(trained):
    _, model_dir, held_out = trained
    results = explain.explain(str(model_dir), [(f"synthetic-{i}", files.encode_png(image))
                                               for i, (image, _, _) in enumerate(held_out)])
    labels = np.array([label for _, _, label in held_out])
    probabilities = np.array([e.probability for e in results])
    # The model has learned the task, so its maps are worth checking.
    assert probabilities[labels == 1].min() > probabilities[labels == 0].max()
    ratios = []
    for e, (_, heart, label) in zip(results, held_out):
        assert e.gradcam.shape == (SIZE, SIZE) and np.allclose(e.box, [0, 0, 1, 1])
        if label == 1:    # the evidence for cardiomegaly; a normal heart has none to show
            ratios.append(explain.mass_ratio(e, heart))
    print(f"Grad-CAM heart mass / heart area: mean {np.mean(ratios):.2f}, min {min(ratios):.2f}")
    # Measured: mean 1.53, every image above 1.4 (MobileNet's 4x4 cells at 128 px are coarse).
    assert np.mean(ratios) > 1.25 and min(ratios) > 1.0


def test_heart_check_on_synthetic_records(trained, tmp_path):
    _, model_dir, _ = trained
    convert.write_synthetic(str(tmp_path), 40, seed=4, size=160, span=1, external_sites=(),
                            workers=1)
    pattern = str(tmp_path / "span-1" / "*" / "*.tfrecord.gz")
    positives = sum(tf.train.Example.FromString(raw.numpy()).features.feature["label"]
                    .int64_list.value[0] for raw in tf.data.TFRecordDataset(
                        tf.io.gfile.glob(pattern), compression_type="GZIP"))
    result = explain.heart_mass_ratios(str(model_dir), pattern, limit=8)
    print(f"heart check on synthetic records: {result}")
    assert result["images"] == min(positives, 8) > 0
    assert result["mean"] > 1.0
    with pytest.raises(explain.ExplainError, match="no files"):
        explain.heart_mass_ratios(str(model_dir), str(tmp_path / "none-*.gz"))


def test_maps_change_when_the_weights_are_randomised(trained):
    """Adebayo et al. 2018: maps that survive re-initialising the weights explain nothing."""
    model, _, held_out = trained
    positives = [image for image, _, label in held_out if label == 1]
    x = tf.constant(np.stack([model_input(image) for image in positives]))
    keras.utils.set_random_seed(1)
    randomised = model_lib.build_model("mobilenet_025", SIZE, "random")
    _, cam, guided_backprop = saliency.Saliency(model).explain(x)
    _, random_cam, random_guided = saliency.Saliency(randomised).explain(x)
    _, cam_again, guided_again = saliency.Saliency(model).explain(x)

    def rank_correlation(a, b):   # Spearman of absolute values, as in the paper
        return np.nanmean([stats.spearmanr(np.abs(p).ravel(), np.abs(q).ravel())[0]
                           for p, q in zip(a.numpy(), b.numpy())])

    # The same weights give the same maps: what follows measures the weights, not noise.
    assert rank_correlation(cam, cam_again) > 0.99
    assert rank_correlation(guided_backprop, guided_again) > 0.99
    cam_rho = rank_correlation(cam, random_cam)
    guided_rho = rank_correlation(guided_backprop, random_guided)
    print(f"rank correlation trained vs randomised: Grad-CAM {cam_rho:.2f}, "
          f"guided backprop {guided_rho:.2f}")
    assert cam_rho < 0.6 and guided_rho < 0.6

    # Cascading randomisation, first step: only the MLP head re-initialised. Grad-CAM follows
    # the head; guided backprop hardly moves (the paper's finding, and why the README says to
    # read it as edges, not evidence). Measured: 0.23 and 0.98.
    head_only = keras.models.clone_model(model)
    head_only.set_weights(model.get_weights())
    for layer, fresh in zip(*[[l for l in m.layers if isinstance(l, keras.layers.Dense)]
                              for m in (head_only, randomised)]):
        layer.set_weights(fresh.get_weights())
    _, head_cam, head_guided = saliency.Saliency(head_only).explain(x)
    head_cam_rho = rank_correlation(cam, head_cam)
    head_guided_rho = rank_correlation(guided_backprop, head_guided)
    print(f"head re-initialised only: Grad-CAM {head_cam_rho:.2f}, guided backprop "
          f"{head_guided_rho:.2f}")
    assert head_cam_rho < 0.6 and head_guided_rho > head_cam_rho


@pytest.fixture(scope="module")
def cropping_export(tmp_path_factory):
    """A random-initialised classifier behind the shipped lung U-Net and crop: the plumbing."""
    keras.utils.set_random_seed(2)
    model = model_lib.build_model("mobilenet_025", 96, "random")
    model_dir = tmp_path_factory.mktemp("explain-crop") / "cardio" / "3"
    export.export(model, str(model_dir), 96, 0.4, unet.load(), 128,
                  {"backbone": "mobilenet_025", "weighting": "75-25"})
    shutil.copytree(model_dir, model_dir.parent / "2")   # an older version
    (model_dir.parent / ".incomplete-4").mkdir()          # a push in progress
    return model_dir


def test_explain_matches_serving_default_and_writes_overlays(cropping_export, tmp_path):
    files = tmp_path / "files"
    synth.export_files(str(files), 3, seed=5, size=256)    # 16-bit PNGs and MONOCHROME1 DICOM
    png = sorted((files / "images").glob("*.png"))[0]
    jpeg = io.BytesIO()
    Image.fromarray((np.asarray(Image.open(png)) >> 8).astype(np.uint8)).save(jpeg, "JPEG")
    images = [("a/scan.png", png.read_bytes()), ("b/scan.png", png.read_bytes()),
              ("scan.jpg", jpeg.getvalue())]
    paths = explain.write_overlays(str(cropping_export), images, str(tmp_path / "out"))
    assert [p.rsplit("/", 1)[1] for p in paths] == ["scan.png", "scan-2.png", "scan-3.png"]
    for path in paths:
        assert tf.io.decode_png(tf.io.read_file(path)).shape[1] > 900   # four panels

    model = explain.load(str(cropping_export))
    served = model.loaded.signatures["serving_default"](image_bytes=tf.constant([png.read_bytes()]))
    e, = explain.explain(model, images[:1])
    np.testing.assert_allclose(e.probability, served["probability"].numpy()[0], atol=1e-6)
    np.testing.assert_allclose(e.box, served["crop_box"].numpy()[0])
    assert e.label == served["predicted_label"].numpy()[0]
    assert e.model_input.shape == e.gradcam.shape == e.guided_backprop.shape == (96, 96)
    assert e.image.shape == tf.io.decode_png(png.read_bytes()).shape[:2]


def test_cli_explains_png_and_dicom_and_names_broken_files(cropping_export, tmp_path):
    files = tmp_path / "files"
    synth.export_files(str(files), 4, seed=3, size=200)
    images = sorted(str(p) for p in (files / "images").iterdir())
    assert any(p.endswith(".dcm") for p in images) and any(p.endswith(".png") for p in images)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out"
    # The model's base path: the newest version is explained, as TF Serving would serve it.
    result = CliRunner().invoke(main, ["explain", "--model", str(cropping_export.parent), *images,
                                       str(broken), "--out", str(out)])
    assert result.exit_code == 1, result.output          # a failed image fails the command
    lines = result.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["model"] == str(cropping_export)
    assert summary["explained"] == len(images) and summary["operating_threshold"] == 0.4
    assert [f["file"] for f in summary["failed"]] == [str(broken)]
    assert "broken.png" in summary["failed"][0]["error"]
    for image, row in zip(images, summary["images"]):
        assert row["file"] == image and 0 <= row["probability"] <= 1
        assert tf.io.gfile.exists(row["overlay"])
        assert any(line.startswith(f"{image}: P(cardiomegaly)=") for line in lines)
    assert len(list(out.glob("*.png"))) == len(images)


def test_cli_rejects_a_directory_that_is_not_a_cardio_export(tmp_path):
    plain = tmp_path / "plain"
    tf.saved_model.save(tf.Module(), str(plain))
    older = tmp_path / "older"             # a cardio export from before the explain signature
    tf.saved_model.save(tf.Module(), str(older))
    (older / "assets.extra").mkdir()
    (older / "assets.extra" / "cardio_metadata.json").write_text('{"image_size": 224}')
    image = tmp_path / "x.png"
    image.write_bytes(files.encode_png(np.zeros((8, 8), np.uint8)))
    for directory, reason in [(tmp_path, "not a SavedModel"), (plain, "not a cardio export"),
                              (older, "exported without the 'explain' signature")]:
        result = CliRunner().invoke(main, ["explain", "--model", str(directory), str(image)])
        assert result.exit_code == 1
        assert str(directory) in result.output and reason in result.output
