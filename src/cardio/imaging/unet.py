"""Lung segmentation U-Net (after the classic lung-segmentation-2d design), sized for CPU.

Input: a grayscale radiograph resized to 256x256, values in [0, 1]. Output: the per-pixel lung
probability. Four down-sampling levels of two 3x3 conv + batch-norm + ReLU blocks (16-128
filters), a 128-filter bottleneck and a mirrored decoder with skip connections: about 0.6 M
parameters, a 2.5 MB weights file.

Training (`cardio unet train`) is a one-off, resumable command: a checkpoint after every epoch,
and a rerun continues from it. Held-out images are chosen by a hash of the file name (one image
per patient in the Montgomery and Shenzhen sets), so the split is patient-level and stable.

The heart U-Net (`--target heart`) is the same recipe (architecture, loss, augmentation,
resumable training) at half the filters (8-64: about 0.15 M parameters, a quarter of the lung
U-Net's convolution work per request), trained on the Wingspan heart masks (143 radiographs, one
per patient as far as the source says) with 25% held out by the same file-name hash. Its
weights (`unet_heart.weights.h5`) and card (`unet_heart.json`, `MODEL_CARD_heart.md`) ship
beside the lung U-Net's; `cardio.imaging.ctr` turns both masks into the cardiothoracic ratio.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import tf_keras as keras

from cardio.imaging import (HEART_UNET_WEIGHTS_FILE, SHIPPED_UNET_DIR, UNET_INPUT_SIZE,
                            UNET_WEIGHTS_FILE)

FILTERS = (16, 32, 64, 128)
DEFAULT_WEIGHTS = os.path.join(SHIPPED_UNET_DIR, UNET_WEIGHTS_FILE)


@dataclass(frozen=True)
class Target:
    """What a U-Net segments: its size, its shipped weights file and its held-out fraction."""
    name: str                  # the model's and the output layer's name: unet_<name>
    filters: tuple
    weights_file: str
    held_out_fraction: float   # of the file names, by hash (`held_out`): never trained on
    epochs: int                # `cardio unet train`'s default


TARGETS = {
    "lungs": Target("lungs", FILTERS, UNET_WEIGHTS_FILE, 0.15, 60),
    "heart": Target("heart", (8, 16, 32, 64), HEART_UNET_WEIGHTS_FILE, 0.25, 60),
}
HEART_WEIGHTS = os.path.join(SHIPPED_UNET_DIR, HEART_UNET_WEIGHTS_FILE)


def build(input_size: int = UNET_INPUT_SIZE, filters=FILTERS, target: str = "lungs") -> keras.Model:
    def block(x, n):
        for _ in range(2):
            x = keras.layers.Conv2D(n, 3, padding="same", use_bias=False)(x)
            x = keras.layers.BatchNormalization()(x)
            x = keras.layers.ReLU()(x)
        return x

    inputs = keras.Input((input_size, input_size, 1), name="image")
    x, skips = inputs, []
    for n in filters:
        x = block(x, n)
        skips.append(x)
        x = keras.layers.MaxPool2D()(x)
    x = block(x, filters[-1])
    for n, skip in zip(reversed(filters), reversed(skips)):
        x = keras.layers.Conv2DTranspose(n, 2, strides=2, padding="same")(x)
        x = block(keras.layers.Concatenate()([x, skip]), n)
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid", name=target, dtype="float32")(x)
    return keras.Model(inputs, outputs, name=f"unet_{target}")


def build_target(target: str = "lungs") -> keras.Model:
    return build(UNET_INPUT_SIZE, TARGETS[target].filters, target)


LICENCE = ("CC BY-NC-SA 4.0 (non-commercial): trained on the Shenzhen lung masks, released "
           "under CC BY-NC-SA 4.0; models embedding these weights inherit the restriction")


def write_card(weights: str, held_out: dict, synthetic: dict | None = None) -> str:
    """Writes unet_lungs.json and MODEL_CARD.md beside the weights."""
    directory = os.path.dirname(os.path.abspath(weights))
    card = {
        "name": "unet_lungs", "input": f"{UNET_INPUT_SIZE}x{UNET_INPUT_SIZE} grayscale in [0, 1]",
        "training_data": "604 PA radiographs with lung masks (118 Montgomery County, 486 Shenzhen; "
                         "NLM; Jaeger et al. 2014), 512x512; 15% held out by file-name hash",
        "licence": LICENCE, "held_out": held_out, "synthetic": synthetic,
        "intended_use": "locating the lungs to crop PA chest radiographs to the chest cavity "
                        "before classification; not a diagnostic segmentation",
    }
    with open(os.path.join(directory, "unet_lungs.json"), "w") as f:
        json.dump(card, f, indent=2)
    subsets = "\n".join(f"| held-out {k} | {v['n']} | {v['dice']:.4f} |"
                         for k, v in held_out.get("subsets", {}).items())
    synthetic_row = (f"| synthetic radiographs (never trained on) | {synthetic['n']} | "
                     f"{synthetic['dice']:.4f} |" if synthetic else "")
    with open(os.path.join(directory, "MODEL_CARD.md"), "w") as f:
        f.write(f"""# Model card: lung-segmentation U-Net (`unet_lungs.weights.h5`)

- **Architecture**: U-Net, 4 levels (16-128 filters), batch norm, {UNET_INPUT_SIZE}x{UNET_INPUT_SIZE} input
  (`src/cardio/imaging/unet.py`). Weights sha256 `{card_metadata(weights)['weights_sha256']}`.
- **Training data**: {card['training_data']}. Augmented for other hospitals' acquisition:
  contrast, gamma, brightness, noise, rotation, scale and shift.
- **Licence**: {LICENCE}. The project's code is Apache-2.0; these weights are not.
- **Intended use**: {card['intended_use']}.
- **Limitations**: trained on adult PA radiographs from two collections; masks exclude the
  heart; implausible masks are flagged by the crop's QC and fall back to a centre crop.

## Metrics (mean Dice at the masks' resolution)

| set | images | Dice |
|---|---|---|
| held-out (all) | {held_out['n']} | {held_out['dice']:.4f} |
{subsets}
{synthetic_row}

Reproduce: `./cardio unet evaluate --images ../shared/data/lung-masks/images --masks
../shared/data/lung-masks/masks --held-out-only`.
""")
    return directory


HEART_LICENCE = ("MIT (c) 2020 Nanqing Dong: trained on the Wingspan heart masks "
                 "(eveningdong/cardiothoracic_ratio_estimation_dataset); served beside the lung "
                 "U-Net, whose non-commercial licence binds every model embedding both")


def write_heart_card(weights: str, held_out: dict, train_n: int, epochs: int) -> str:
    """Writes unet_heart.json and MODEL_CARD_heart.md beside the heart U-Net's weights."""
    directory = os.path.dirname(os.path.abspath(weights))
    spec = TARGETS["heart"]
    card = {
        "name": "unet_heart", "input": f"{UNET_INPUT_SIZE}x{UNET_INPUT_SIZE} grayscale in [0, 1]",
        "filters": list(spec.filters), "epochs": epochs,
        "training_data": f"Wingspan (Dong et al., MICCAI 2018): {train_n} frontal radiographs "
                         f"with heart masks, 512x512; {spec.held_out_fraction:.0%} of the 143 "
                         "held out by file-name hash (cardio.imaging.unet.held_out)",
        "licence": HEART_LICENCE, "held_out": held_out,
        "intended_use": "the heart's maximal horizontal width for the cardiothoracic ratio "
                        "(cardio.imaging.ctr) beside the classifier's score; research only",
    }
    with open(os.path.join(directory, "unet_heart.json"), "w") as f:
        json.dump(card, f, indent=2)
    with open(os.path.join(directory, "MODEL_CARD_heart.md"), "w") as f:
        f.write(f"""# Model card: heart-segmentation U-Net (`unet_heart.weights.h5`)

- **Architecture**: the lung U-Net's (`src/cardio/imaging/unet.py`) at half the filters (8-64),
  {UNET_INPUT_SIZE}x{UNET_INPUT_SIZE} input, sigmoid output. Weights sha256
  `{card_metadata(weights)['weights_sha256']}`.
- **Training data**: {card['training_data']}; the lung U-Net's augmentation (contrast, gamma,
  brightness, noise, rotation, scale, shift), {epochs} epochs, BCE + Dice loss; plain inputs, as
  the lung U-Net's (the CTR stretches the grey window for the lung U-Net only).
- **Licence**: {HEART_LICENCE}.
- **Intended use**: {card['intended_use']}.
- **Limitations**: one hospital's frontal radiographs (view unrecorded), {train_n} of them;
  squashed to square. Its masks outline the cardiac silhouette as Wingspan's annotators drew it.

## Metrics (mean Dice at the masks' resolution)

| set | images | Dice |
|---|---|---|
| held-out Wingspan | {held_out['n']} | {held_out['dice']:.4f} |

Reproduce: `./cardio unet train --target heart --images ../shared/data/wingspan-ctr-512/images
--masks ../shared/data/wingspan-ctr-512/masks/heart --out src/cardio/imaging/assets/unet_heart.weights.h5`;
`./cardio unet evaluate --target heart ... --held-out-only`; the CTR figures:
`./cardio exec python -m benchmarks ctr`.
""")
    return directory


def card_name(weights: str) -> str:
    """The card beside a weights file: `unet_heart.weights.h5` -> `unet_heart.json`; any other
    name (a user's own lung U-Net) -> `unet_lungs.json`, as before."""
    base = os.path.basename(weights)
    if base.endswith(".weights.h5") and base.startswith("unet_heart"):
        return base[:-len(".weights.h5")] + ".json"
    return "unet_lungs.json"


def card_metadata(weights: str) -> dict:
    """The weights' sha256 and, when a `unet_lungs.json` (`unet_heart.json`) card sits beside them, its contents
    (training data, licence, metrics); models that embed these weights carry this along."""
    digest = hashlib.sha256(tf.io.gfile.GFile(weights, "rb").read()).hexdigest()
    name = card_name(weights)
    card = os.path.join(os.path.dirname(weights), name)
    metadata = json.loads(tf.io.gfile.GFile(card).read()) if tf.io.gfile.exists(card) else {
        "licence": f"unknown: no {name} beside the weights"}
    return {"weights_sha256": digest, **metadata}


def local_copy(path: str) -> str:
    """Keras reads HDF5 weights from local files only; on Kubeflow the U-Net is an artifact in
    object storage (gs://, s3://), so a remote file is copied to a temporary one first."""
    if os.path.isfile(path) or not tf.io.gfile.exists(path):
        return path
    local = os.path.join(tempfile.mkdtemp(prefix="cardio-unet-"), os.path.basename(path))
    tf.io.gfile.copy(path, local)
    return local


def load(weights: str | None = None, target: str = "lungs") -> keras.Model:
    default = DEFAULT_WEIGHTS if target == "lungs" else os.path.join(
        SHIPPED_UNET_DIR, TARGETS[target].weights_file)
    weights = local_copy(weights or default)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"U-Net weights not found at {weights}; train them with "
                                f"`cardio unet train --target {target}` or pass --weights")
    model = build_target(target)
    model.load_weights(weights)
    return model


# --- data ------------------------------------------------------------------------------------

def held_out(name: str, fraction: float = 0.15) -> bool:
    """Whether training holds this file out: a hash of its base name, so the split is fixed."""
    digest = hashlib.sha256(os.path.basename(name).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


def mask_path(masks_dir: str, image_path: str) -> str | None:
    """The mask of an image: the same file name, or `<stem>_lungs.png` (synthetic exports)."""
    name = os.path.basename(image_path)
    stem = os.path.splitext(name)[0]
    for candidate in (os.path.join(masks_dir, name), os.path.join(masks_dir, f"{stem}_lungs.png")):
        if os.path.isfile(candidate):
            return candidate
    return None


def pairs(images_dir: str, masks_dir: str) -> list[tuple[str, str]]:
    result = []
    for image in sorted(glob.glob(os.path.join(images_dir, "*"))):
        mask = mask_path(masks_dir, image)
        if mask:
            result.append((image, mask))
    if not result:
        raise FileNotFoundError(f"no (image, mask) pairs in {images_dir} and {masks_dir}")
    return result


def read_image(path: str) -> np.ndarray:
    """Any supported radiograph file -> float32 [H, W] in [0, 1], MONOCHROME2."""
    from cardio.imaging.files import normalised_pixels
    pixels = normalised_pixels(path)
    return pixels.astype(np.float32) / np.iinfo(pixels.dtype).max


def read_mask(path: str) -> np.ndarray:
    return np.asarray(tf.io.decode_png(tf.io.read_file(path), channels=1))[..., 0] >= 128


def _resize(array: np.ndarray, size: int) -> np.ndarray:
    return tf.image.resize(array[..., None], [size, size], method="area").numpy()[..., 0]


def augment(image, mask, seed):
    """Acquisition and positioning changes another hospital brings: contrast, gamma,
    brightness, noise, blur; rotation, scale and shift."""
    s = tf.random.stateless_uniform([10], seed=seed)
    image = tf.clip_by_value((image - 0.5) * (0.7 + 0.6 * s[0]) + 0.5 + 0.2 * (s[1] - 0.5), 0, 1)
    image = image ** (0.6 + 0.8 * s[2])
    image += tf.random.stateless_normal(tf.shape(image), seed=seed + 1) * 0.03 * s[3]
    angle, scale = (s[4] - 0.5) * 0.35, 0.85 + 0.3 * s[5]
    tx, ty = (s[6] - 0.5) * 0.16 * UNET_INPUT_SIZE, (s[7] - 0.5) * 0.16 * UNET_INPUT_SIZE
    c = UNET_INPUT_SIZE / 2
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    transform = tf.stack([cos, -sin, c - cos * c + sin * c + tx,
                          sin, cos, c - sin * c - cos * c + ty, 0.0, 0.0])[tf.newaxis]
    stacked = tf.concat([image, mask], axis=-1)[tf.newaxis]
    moved = tf.raw_ops.ImageProjectiveTransformV3(
        images=stacked, transforms=transform, output_shape=[UNET_INPUT_SIZE, UNET_INPUT_SIZE],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")[0]
    return tf.clip_by_value(moved[..., :1], 0, 1), tf.cast(moved[..., 1:] > 0.5, tf.float32)


def arrays(pair_list) -> tuple[np.ndarray, np.ndarray]:
    images = np.stack([_resize(read_image(i), UNET_INPUT_SIZE) for i, _ in pair_list])[..., None]
    masks = np.stack([_resize(read_mask(m).astype(np.float32), UNET_INPUT_SIZE) > 0.5
                      for _, m in pair_list])[..., None].astype(np.float32)
    return images, masks


# --- training and evaluation -----------------------------------------------------------------

def dice_loss(y_true, y_pred):
    intersection = tf.reduce_sum(y_true * y_pred, axis=[1, 2, 3])
    total = tf.reduce_sum(y_true + y_pred, axis=[1, 2, 3])
    return 1.0 - (2.0 * intersection + 1.0) / (total + 1.0)


def bce_dice_loss(y_true, y_pred):
    bce = tf.reduce_mean(keras.losses.binary_crossentropy(y_true, y_pred), axis=[1, 2])
    return bce + dice_loss(y_true, y_pred)


def train(images_dir: str, masks_dir: str, out: str, epochs: int | None = None,
          batch_size: int = 8, checkpoint_dir: str | None = None, log=print,
          target: str = "lungs") -> dict:
    """Trains on the non-held-out pairs; resumes from `checkpoint_dir` when a run was cut short."""
    spec = TARGETS[target]
    epochs = epochs or spec.epochs
    all_pairs = pairs(images_dir, masks_dir)
    train_pairs = [p for p in all_pairs if not held_out(p[0], spec.held_out_fraction)]
    x, y = arrays(train_pairs)
    log(f"training on {len(train_pairs)} images, holding out {len(all_pairs) - len(train_pairs)}")
    ds = (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=0).repeat()
          .enumerate().map(lambda i, xy: augment(xy[0], xy[1], tf.stack([i, i * 7 + 1])),
                           num_parallel_calls=tf.data.AUTOTUNE)
          .batch(batch_size).prefetch(tf.data.AUTOTUNE))
    model = build_target(target)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=bce_dice_loss)
    checkpoint_dir = checkpoint_dir or out + ".checkpoints"
    callbacks = [keras.callbacks.BackupAndRestore(checkpoint_dir),
                 keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=6)]
    model.fit(ds, epochs=epochs, steps_per_epoch=max(1, len(x) // batch_size),
              callbacks=callbacks, verbose=2)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    # Ship the layers' weights only: a fresh model carries no optimizer state (half the size).
    inference = build_target(target)
    inference.set_weights(model.get_weights())
    inference.save_weights(out)
    scores = evaluate(images_dir, masks_dir, out, held_out_only=True, target=target)
    if target == "lungs":
        write_card(out, scores)
    else:
        write_heart_card(out, scores, train_n=len(train_pairs), epochs=epochs)
    return scores


def predict_masks(model, images: list[np.ndarray], batch_size: int = 16) -> list[np.ndarray]:
    """Probability maps at each image's own resolution."""
    result = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        batch = np.stack([_resize(i, UNET_INPUT_SIZE) for i in chunk])[..., None]
        probabilities = model(batch, training=False).numpy()[..., 0]
        for image, p in zip(chunk, probabilities):
            result.append(tf.image.resize(p[..., None], image.shape, method="bilinear").numpy()[..., 0])
    return result


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def subset_of(path: str) -> str:
    """Subset from the file name: MCUCXR_ -> montgomery, CHNCXR_ -> shenzhen, synth-..."""
    name = os.path.basename(path).lower()
    for prefix, subset in (("mcucxr", "montgomery"), ("chncxr", "shenzhen"), ("synth", "synthetic")):
        if name.startswith(prefix):
            return subset
    return "other"


def evaluate(images_dir: str, masks_dir: str, weights: str | None = None,
             held_out_only: bool = False, target: str = "lungs") -> dict:
    """Mean Dice against the masks, overall and per subset of the file names."""
    model = load(weights, target)
    pair_list = pairs(images_dir, masks_dir)
    if held_out_only:
        pair_list = [p for p in pair_list if held_out(p[0], TARGETS[target].held_out_fraction)]
    scores = {}
    for start in range(0, len(pair_list), 32):
        chunk = pair_list[start:start + 32]
        images = [read_image(i) for i, _ in chunk]
        for (image_path, mask_file), probability in zip(chunk, predict_masks(model, images)):
            truth = read_mask(mask_file)
            if truth.shape != probability.shape:
                probability = tf.image.resize(probability[..., None], truth.shape).numpy()[..., 0]
            scores[image_path] = dice(probability >= 0.5, truth)
    by_subset = {}
    for path, score in scores.items():
        by_subset.setdefault(subset_of(path), []).append(score)
    return {"dice": float(np.mean(list(scores.values()))), "n": len(scores),
            "subsets": {k: {"dice": float(np.mean(v)), "n": len(v)} for k, v in sorted(by_subset.items())}}
