"""Model factory: an ImageNet backbone with the study's 3-layer MLP head.

ImageNet weights come from a local file, or from a cache directory holding the file under the
name Keras itself uses (the given directory, then Keras's own cache `~/.keras/models`).
`weights="imagenet"` looks in Keras's cache and, when the file is not there, lets Keras download it
(where a network exists). With none of these, `WeightsNotFound` says where it looked and where to
put the file; random initialisation happens only when asked for with `weights="random"`.
`weights="image"` is the directory the pipeline image keeps them in (`IMAGE_WEIGHTS_DIR`, the
Dockerfile's `weights` build context), resolved where the Trainer runs, and a URI (`gs://...`, a
file or a directory) is read with TensorFlow's file systems and copied to a local file first.
"""
from __future__ import annotations

import dataclasses
import os

import tf_keras as keras


class WeightsNotFound(FileNotFoundError):
    pass


# `weights: image`: the ImageNet weights baked into the pipeline image (Dockerfile: the optional
# `weights` build context lands here), looked up in the pod that trains, never on the machine
# that compiles the pipeline.
IMAGE_WEIGHTS = "image"
IMAGE_WEIGHTS_DIR = "/opt/cardio/weights"


@dataclasses.dataclass(frozen=True)
class Backbone:
    constructor: str          # attribute of keras.applications
    weights_file: str         # the file name keras.applications downloads for include_top=False
    scaling: str              # how the backbone expects its 0-255 input scaled
    kwargs: tuple = ()


BACKBONES = {
    "efficientnetb2": Backbone("EfficientNetB2", "efficientnetb2_notop.h5", "none"),
    "densenet121": Backbone("DenseNet121", "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
                            "torch"),
    "xception": Backbone("Xception", "xception_weights_tf_dim_ordering_tf_kernels_notop.h5", "tf"),
    "inceptionv3": Backbone("InceptionV3", "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
                            "tf"),
    "mobilenet": Backbone("MobileNet", "mobilenet_1_0_{size}_tf_no_top.h5", "tf", (("alpha", 1.0),)),
    # The small MobileNet whose ImageNet weights ship in ../shared/weights (used by the demo).
    "mobilenet_025": Backbone("MobileNet", "mobilenet_2_5_{size}_tf_no_top.h5", "tf", (("alpha", 0.25),)),
}


def resolve_weights(backbone: str, image_size: int, weights: str | None) -> str | None:
    """Returns the weights file to load, None for explicit random initialisation."""
    if weights == "random":
        return None
    if weights == "imagenet":
        try:
            return resolve_weights(backbone, image_size, None)
        except WeightsNotFound:
            return "imagenet"   # not cached: keras.applications downloads it
    if weights == IMAGE_WEIGHTS:
        weights = IMAGE_WEIGHTS_DIR
    spec = BACKBONES[backbone]
    # MobileNet's files are per input size; its convolutions fit any size, so 224 is a fallback.
    names = dict.fromkeys(spec.weights_file.format(size=s) for s in (image_size, 224))
    if weights and "://" in weights:
        return _fetch_weights(weights, list(names))
    directories = [os.path.expanduser("~/.keras/models")]
    candidates = []
    if weights and not os.path.isdir(weights):
        candidates.append(weights)
    elif weights:
        directories.insert(0, weights)
    candidates += [os.path.join(d, name) for d in directories for name in names]
    file_name = next(iter(names))
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise WeightsNotFound(
        f"ImageNet weights for {backbone} not found (looked for {', '.join(candidates)}). "
        f"Put {file_name} in a directory and pass it as the weights path, or pass "
        f"weights='random' to train from random initialisation.")


def _fetch_weights(uri: str, names: list[str]) -> str:
    """A weights file named by URI (the file, or a directory holding one of `names`), copied to
    a local file: Keras loads HDF5 from local paths only."""
    import tempfile

    import tensorflow as tf

    uri = uri.rstrip("/")
    candidates = ([f"{uri}/{name}" for name in names] if tf.io.gfile.isdir(uri) else [uri])
    for remote in candidates:
        if tf.io.gfile.exists(remote):
            local_dir = tempfile.mkdtemp(prefix="cardio-weights-")
            local = os.path.join(local_dir, os.path.basename(remote))
            tf.io.gfile.copy(remote, local, overwrite=True)
            return local
    raise WeightsNotFound(f"ImageNet weights not found at {', '.join(candidates)}: upload "
                          f"{names[0]} there, or use weights 'image' (baked into the image) or "
                          "'random'.")


def _scaling_layers(scaling: str):
    if scaling == "tf":      # [-1, 1]
        return [keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="scale_to_unit_range")]
    if scaling == "torch":   # [0, 1], then ImageNet mean/std
        return [keras.layers.Rescaling(1 / 255.0, name="scale_to_0_1"),
                keras.layers.Normalization(mean=[0.485, 0.456, 0.406],
                                           variance=[0.229**2, 0.224**2, 0.225**2],
                                           name="imagenet_normalisation")]
    return []                 # EfficientNet scales inside the network


def build_model(backbone: str, image_size: int = 224, weights: str | None = None,
                dropout: float = 0.3, head_units=(256, 128), bn_momentum: float = 0.9) -> keras.Model:
    """Backbone (global-average pooled) -> Dense-ReLU -> Dropout -> Dense-ReLU -> Dropout -> sigmoid.

    The model takes float images [N, size, size, 3] with values 0-255 (see cardio.imaging.decode).
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose from {sorted(BACKBONES)}")
    spec = BACKBONES[backbone]
    weights_path = resolve_weights(backbone, image_size, weights)
    constructor = getattr(keras.applications, spec.constructor)
    base_kwargs = dict(include_top=False, input_shape=(image_size, image_size, 3), pooling="avg",
                       **dict(spec.kwargs))
    if weights_path == "imagenet":
        try:
            base = constructor(weights="imagenet", **base_kwargs)
        except Exception as error:   # keras.utils.get_file raises a bare Exception offline
            cache = os.path.expanduser("~/.keras/models")
            raise WeightsNotFound(
                f"ImageNet weights for {backbone} could not be downloaded ({error}). Offline, put "
                f"{spec.weights_file.format(size=224)} in {cache} (or a directory passed as the "
                f"weights path), or use weights 'random'.") from None
        weights_path = None
    else:
        base = constructor(weights=None, **base_kwargs)
    if weights_path:
        base.load_weights(weights_path)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = inputs
    for layer in _scaling_layers(spec.scaling):
        x = layer(x)
    # Batch-norm moving averages must follow the fine-tuned weights within a few hundred steps
    # of batch 16; with Keras's default momentum (0.99) they lag, and a model whose training loss
    # falls can score a constant at inference.
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = bn_momentum
    x = base(x)
    for units in head_units:
        x = keras.layers.Dense(units, activation="relu")(x)
        x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="cardiomegaly", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=f"cardio_{backbone}")
