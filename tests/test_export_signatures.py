"""The exported signatures of one tiny model (MobileNet-0.25 at 64 px, the shipped lung and heart
U-Nets, 128 px crops, Platt scaling): the served probability is the calibrated one, a radiograph
gives the same answer whatever its resolution and bit depth, the served CTR is the one
cardio.imaging.ctr computes in process, and every signature runs in TensorFlow's own
saved_model_cli (TF1's session loader, as tensorflow_model_server's) with the answers `cardio
serve` gives. The pipeline's Pusher copies such an export as it is."""
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import shared_path
from PIL import Image

from cardio import features as F
from cardio.imaging import crop, ctr, files, saliency, unet
from cardio.trainer import calibration, export, model as model_lib

PLATT = calibration.Platt(a=0.3, b=-2.0)
THRESHOLD = 0.12
MODEL_NAME = "cardio-tiny"


@pytest.fixture(scope="module")
def exported_dir(tmp_path_factory):
    """(the Keras model, its export as a numbered version under a model base path)."""
    # ImageNet features (from ../shared) give a head whose output depends on the image; a random
    # backbone at 64 px feeds the head all-zero ReLUs, and a constant probability proves nothing.
    weights = shared_path("weights", "mobilenet_2_5_224_tf_no_top.h5")
    tf.keras.utils.set_random_seed(0)
    model = model_lib.build_model("mobilenet_025", 64, str(weights))
    directory = tmp_path_factory.mktemp("export") / MODEL_NAME / "1"
    export.export(model, str(directory), 64, threshold=THRESHOLD, unet=unet.load(),
                  crop_size=128, platt=PLATT, heart_unet=unet.load(target="heart"))
    return model, directory


@pytest.fixture(scope="module")
def exported(exported_dir):
    model, directory = exported_dir
    return model, tf.saved_model.load(str(directory))


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_the_export_serves_the_calibrated_probability_and_thresholds_it(exported):
    model, loaded = exported
    rng = np.random.default_rng(1)
    pngs = [files.encode_png(rng.integers(0, 255, (48, 48), dtype=np.uint8)) for _ in range(4)]
    examples = [tf.train.Example(features=tf.train.Features(feature={F.IMAGE: tf.train.Feature(
        bytes_list=tf.train.BytesList(value=[png]))})).SerializeToString() for png in pngs]
    served = loaded.signatures[F.SERVING_EXAMPLES](examples=tf.constant(examples))
    images = tf.stack([export.decode.preprocess(png, 64) for png in pngs])
    logits = export.logit_function(model)(images).numpy()
    np.testing.assert_allclose(_sigmoid(logits), model(images).numpy().ravel(), rtol=1e-5)
    np.testing.assert_allclose(served[F.PROBABILITY].numpy(), PLATT(logits), rtol=1e-5)
    np.testing.assert_array_equal(served[F.PREDICTED_LABEL].numpy(), PLATT(logits) >= THRESHOLD)


def _at(pixels: np.ndarray, size: int, bits: int) -> bytes:
    image = Image.fromarray(pixels).resize((size, size), Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.float64)
    if bits == 16:
        return files.encode_png((array * 257).round().clip(0, 65535).astype(np.uint16))
    return files.encode_png(array.round().clip(0, 255).astype(np.uint8))


# Against the 512 px original, measured: crop box within 0.0001 at 1024 and 3000 px (16-bit) and
# 0.017 at 128 px; mean model-input gap 0.06 / 0.15 grey levels at 1024 / 3000 px, 4.7 at 128 px
# (upsampling a 128 px image cannot restore its detail). Tolerances: about twice those.
BOX_TOLERANCE = 0.03
INPUT_TOLERANCE = {"128 px 8-bit": 10.0, "1024 px 16-bit": 1.0, "3000 px 16-bit": 1.0}
PROBABILITY_TOLERANCE = 0.02


def test_a_radiograph_gets_the_same_answer_at_any_resolution(exported):
    """Serving decodes (8 or 16 bit), segments the lungs at the U-Net's own size, crops the box in
    normalised coordinates and resizes the crop to the model's input: what the classifier sees
    does not depend on the radiograph's resolution."""
    _, loaded = exported
    path = shared_path("data", "lung-masks", "images", "CHNCXR_0002_0.png")
    pixels = np.asarray(Image.open(path).convert("L"))
    versions = {"512 px 8-bit": _at(pixels, 512, 8), "128 px 8-bit": _at(pixels, 128, 8),
                "1024 px 16-bit": _at(pixels, 1024, 16), "3000 px 16-bit": _at(pixels, 3000, 16)}
    explain = loaded.signatures[saliency.EXPLAIN]
    served = {name: {k: v.numpy()[0] for k, v in explain(
        image_bytes=tf.constant([png])).items()} for name, png in versions.items()}
    reference = served["512 px 8-bit"]
    for name, result in served.items():
        assert np.abs(result[F.CROP_BOX] - reference[F.CROP_BOX]).max() < BOX_TOLERANCE, name
        gap = np.abs(result[saliency.MODEL_INPUT] - reference[saliency.MODEL_INPUT]).mean()
        assert gap <= INPUT_TOLERANCE.get(name, 0.0), (name, gap)
        assert abs(result[F.PROBABILITY] - reference[F.PROBABILITY]) < PROBABILITY_TOLERANCE, name
        print(name, "box", np.round(result[F.CROP_BOX], 4), "input gap", round(float(gap), 3),
              "p", float(result[F.PROBABILITY]), "logit", float(result[saliency.LOGIT]))
    default = loaded.signatures[F.SERVING_DEFAULT](**{F.IMAGE_BYTES: tf.constant(
        list(versions.values()))})
    np.testing.assert_allclose(default[F.PROBABILITY].numpy(),
                               [served[n][F.PROBABILITY] for n in versions], atol=1e-5)
    # Not vacuous: another image (the same one inverted) moves the logit far more than going to
    # full resolution (1024, 3000 px, 16-bit) does. (The 128 px version's input differs more,
    # 4.7 grey levels, and this untrained head is no judge of whether that matters.)
    other = explain(image_bytes=tf.constant([_at(255 - pixels, 512, 8)]))[saliency.LOGIT].numpy()[0]
    resolution_gap = max(abs(r[saliency.LOGIT] - reference[saliency.LOGIT])
                         for name, r in served.items() if not name.startswith("128"))
    print("logit gap: resolution", resolution_gap, "other image", abs(other - reference[saliency.LOGIT]))
    assert resolution_gap < 0.2 * abs(other - reference[saliency.LOGIT])


def test_the_served_ctr_is_the_in_process_one(exported):
    """serving_default's `ctr`, boxes and `ctr_qc` are cardio.imaging.ctr's on the same images,
    and its crop is still the LungCrop stage's (crop.crop_encoded, on the plain radiograph)."""
    _, loaded = exported
    pngs = [shared_path("data", "lung-masks", "images", "CHNCXR_0002_0.png").read_bytes()]
    wingspan = shared_path("data", "wingspan-ctr-512", "images")
    pngs += [(wingspan / name).read_bytes() for name in sorted(p.name for p in wingspan.iterdir())[:2]]
    served = loaded.signatures[F.SERVING_DEFAULT](**{F.IMAGE_BYTES: tf.constant(pngs)})
    lungs, heart = unet.load(), unet.load(target="heart")
    value, heart_box, thorax_box, flags = ctr.batch_measure(lungs, heart)(tf.constant(pngs))
    np.testing.assert_allclose(served[F.CTR].numpy(), value.numpy(), atol=1e-6)
    np.testing.assert_allclose(served[F.HEART_BOX].numpy(), heart_box.numpy(), atol=1e-6)
    np.testing.assert_allclose(served[F.THORAX_BOX].numpy(), thorax_box.numpy(), atol=1e-6)
    np.testing.assert_array_equal(served[F.CTR_QC].numpy(), flags.numpy().astype(np.int64))
    assert served[F.CTR_QC].shape == (3, len(ctr.CTR_QC_FLAGS))
    assert ((served[F.CTR].numpy() > 0.3) & (served[F.CTR].numpy() < 0.85)).all()
    boxes = crop.batch_crop(lungs, 128)(tf.constant(pngs))[1].numpy()
    np.testing.assert_allclose(served[F.CROP_BOX].numpy(), boxes, atol=1e-6)


# saved_model_cli (tensorflow/python/tools/saved_model_cli.py) in a process that imports nothing
# of this project: `-I` drops PYTHONPATH (and with it this project's start-up module), and the
# process reports at exit every module of this project it loaded. Its `run` loads the SavedModel
# with TF1's session loader (`saver.restore` into a `tf.compat.v1.Session`), the path
# tensorflow_model_server's SavedModelBundle takes, not the TF2 object loader cardio serve uses.
SAVED_MODEL_CLI = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('PROJECT_MODULES=' + ','.join(sorted(\n"
    "    m for m in sys.modules if m.split('.')[0] == 'cardio')), file=sys.stderr))\n"
    "from tensorflow.python.tools import saved_model_cli\n"
    "sys.argv = ['saved_model_cli', *sys.argv[1:]]\n"
    "saved_model_cli.main()\n")


def _saved_model_cli_run(version_dir, signature, inputs: dict, workdir) -> dict:
    import subprocess
    import sys

    workdir.mkdir(parents=True)
    arguments = []
    for key, values in inputs.items():
        path = workdir / f"{key}.npy"
        np.save(path, np.array(values, dtype=object), allow_pickle=True)
        arguments.append(f"{key}={path}")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-I", "-c", SAVED_MODEL_CLI, "run", "--dir", str(version_dir),
         "--tag_set", "serve", "--signature_def", signature, "--inputs", ";".join(arguments),
         "--outdir", str(workdir / "out")], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "PROJECT_MODULES=\n" in result.stderr, \
        f"saved_model_cli imported this project: {result.stderr.splitlines()[-1]}"
    return {name[:-len(".npy")]: np.load(workdir / "out" / name, allow_pickle=True)
            for name in os.listdir(workdir / "out")}


def test_every_signature_runs_in_tensorflows_own_cli(exported_dir, tmp_path):
    """The export (with both U-Nets and Platt scaling, as the pipeline pushes it) loads and runs,
    every signature, in TensorFlow's own saved_model_cli (a session-based loader, as
    tensorflow_model_server's) in a process that imports nothing of this project, and answers
    what `cardio serve` answers a plain TF Serving client."""
    import grpc
    from serving_helpers import start_cardio
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow_serving.apis import classification_pb2, predict_pb2
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    version_dir = exported_dir[1]
    images = [open(path, "rb").read() for path in sorted(
        shared_path("data", "lung-masks", "images").glob("*.png"))[:4]]
    example = lambda image: tf.train.Example(features=tf.train.Features(feature={   # noqa: E731
        F.IMAGE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))}))
    # What each signature's input is, as a client sends it; a new signature fails here first.
    inputs = {F.SERVING_DEFAULT: {F.IMAGE_BYTES: images},
              "explain": {F.IMAGE_BYTES: images},
              F.SERVING_EXAMPLES: {"examples": [example(i).SerializeToString() for i in images]},
              F.SERVING_CLASSIFY: {"inputs": [example(i).SerializeToString() for i in images]}}
    saved_model = saved_model_pb2.SavedModel.FromString(
        open(os.path.join(version_dir, "saved_model.pb"), "rb").read())
    signatures = {key for meta_graph in saved_model.meta_graphs
                  for key in meta_graph.signature_def if not key.startswith("__")}
    assert signatures == set(inputs), f"signatures without a check: {signatures ^ set(inputs)}"

    running = start_cardio([f"--model_name={MODEL_NAME}",
                            f"--model_base_path={os.path.dirname(version_dir)}"])
    channel = grpc.insecure_channel(running.target)
    try:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for signature in sorted(inputs):
            by_cli = _saved_model_cli_run(version_dir, signature, inputs[signature],
                                          tmp_path / signature)
            if signature == F.SERVING_CLASSIFY:
                request = classification_pb2.ClassificationRequest()
                request.model_spec.name, request.model_spec.signature_name = MODEL_NAME, signature
                for image in inputs[signature]["inputs"]:
                    request.input.example_list.examples.add().CopyFrom(
                        tf.train.Example.FromString(image))
                answer = stub.Classify(request, timeout=120).result.classifications
                np.testing.assert_allclose(
                    by_cli["scores"], [[c.score for c in row.classes] for row in answer],
                    atol=1e-5)
                assert by_cli["classes"].tolist() == [[c.label.encode() for c in row.classes]
                                                      for row in answer]
                continue
            request = predict_pb2.PredictRequest()
            request.model_spec.name, request.model_spec.signature_name = MODEL_NAME, signature
            for key, values in inputs[signature].items():
                request.inputs[key].CopyFrom(tf.make_tensor_proto(values))
            answer = stub.Predict(request, timeout=120).outputs
            assert set(by_cli) == set(answer), signature
            for key, value in by_cli.items():
                served = tf.make_ndarray(answer[key])
                if served.dtype.kind in "fc":   # saliency maps: to 1e-5 of their largest value
                    np.testing.assert_allclose(value, served, rtol=1e-4, err_msg=key,
                                               atol=1e-5 * max(1.0, np.abs(served).max()))
                else:
                    np.testing.assert_array_equal(value, served, err_msg=key)
    finally:
        channel.close()
        running.stop()
