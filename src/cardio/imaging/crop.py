"""The chest-cavity crop, in TensorFlow ops: one implementation for the Beam stage and the serving
graph, so the box the batch stage stores is the box serving computes.

From the U-Net's lung probability map (at the U-Net's 256x256 input):
  1. threshold at 0.5 and work on a 64x64 grid (a 4x4 max-pool, cheap in every request);
  2. connected components without a components op: every foreground cell starts with its own
     label (its index + 1) and repeatedly takes the maximum label of its 8 neighbours that are
     also foreground, until nothing changes (a tf.while_loop, at most 64*64 rounds, in practice
     about the longest path through a lung);
  3. keep the two largest components; drop components under MIN_COMPONENT of the grid;
  4. the bounding box of what is left (the extreme points of the lungs), plus a margin,
     clamped to the image.
QC flags name what is implausible: an empty mask, a single lung, a lung area outside
AREA_RANGE or a box aspect outside ASPECT_RANGE. A flagged image falls back to a centre crop
(FALLBACK_FRACTION of each side), and the flag travels with the example and the prediction, so
the fallback is counted, never hidden.
"""
from __future__ import annotations

import tensorflow as tf

from cardio.imaging import UNET_INPUT_SIZE, decode

GRID = 64
MIN_COMPONENT = 0.005          # of the grid: smaller components are noise
AREA_RANGE = (0.08, 0.65)      # lung fraction of the image
ASPECT_RANGE = (0.6, 2.0)      # box width / height
MARGIN = 0.05                  # of the box's size, on every side
FALLBACK_FRACTION = 0.8        # centre crop side, as a fraction of the image

QC_FLAGS = ("empty_mask", "one_lung", "area_out_of_range", "aspect_out_of_range")


def label_components(mask: tf.Tensor) -> tf.Tensor:
    """8-connected component labels of a boolean [H, W] mask (0 = background)."""
    h, w = tf.shape(mask)[0], tf.shape(mask)[1]
    foreground = tf.cast(mask, tf.int32)
    labels = tf.reshape(tf.range(1, h * w + 1), [h, w]) * foreground

    def grow(labels, _):
        # The 3x3 maximum as shifted slices: TensorFlow's CPU max_pool2d on int32 measured 10
        # times slower on these 64x64 grids, and this loop runs three times per image served.
        padded = tf.pad(labels, [[1, 1], [1, 1]])
        rows = tf.maximum(tf.maximum(padded[:-2], padded[1:-1]), padded[2:])
        pooled = tf.maximum(tf.maximum(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])
        grown = pooled * foreground
        return [grown, tf.reduce_any(tf.not_equal(grown, labels))]

    labels, _ = tf.while_loop(lambda _, changed: changed, grow, [labels, tf.constant(True)],
                              maximum_iterations=h * w)
    return labels


def largest_components(probability: tf.Tensor, k: int):
    """[S, S] probability -> (the `k` largest components of its 0.5 mask on the GRID x GRID grid,
    boolean [GRID, GRID]; how many there are, at most `k`). Components under MIN_COMPONENT of
    the grid are noise and never kept. The crop keeps two (the lungs), the CTR one heart."""
    size = probability.shape[0]
    if size is None or size % GRID:
        raise ValueError(f"probability maps must be a static multiple of {GRID} px, got {size}")
    pool = size // GRID
    grid = tf.nn.max_pool2d(probability[tf.newaxis, :, :, tf.newaxis], pool, pool, "VALID")[0, :, :, 0]
    labels = label_components(grid >= 0.5)
    flat = tf.reshape(labels, [-1])
    sizes = tf.math.bincount(flat, minlength=GRID * GRID + 1)[1:]      # label k -> sizes[k-1]
    sizes = tf.where(tf.cast(sizes, tf.float32) >= MIN_COMPONENT * GRID * GRID, sizes, 0)
    top_sizes, top_index = tf.math.top_k(sizes, k=k)
    kept_labels = tf.boolean_mask(top_index + 1, top_sizes > 0)
    kept = tf.reduce_any(tf.equal(labels[..., tf.newaxis], kept_labels), axis=-1)
    return kept, tf.size(kept_labels)


def lung_box(probability: tf.Tensor):
    """[S, S] lung probability -> (box [y0, x0, y1, x1] in [0, 1], qc flags [4] bool).

    The box is in fractions of the image, so it applies to the original radiograph at any size.
    """
    kept, components = largest_components(probability, 2)

    rows = tf.where(tf.reduce_any(kept, axis=1))[:, 0]
    cols = tf.where(tf.reduce_any(kept, axis=0))[:, 0]
    empty = tf.equal(components, 0)
    g = tf.cast(GRID, tf.float32)
    y0 = tf.cond(empty, lambda: 0.0, lambda: tf.cast(tf.reduce_min(rows), tf.float32) / g)
    y1 = tf.cond(empty, lambda: 1.0, lambda: tf.cast(tf.reduce_max(rows) + 1, tf.float32) / g)
    x0 = tf.cond(empty, lambda: 0.0, lambda: tf.cast(tf.reduce_min(cols), tf.float32) / g)
    x1 = tf.cond(empty, lambda: 1.0, lambda: tf.cast(tf.reduce_max(cols) + 1, tf.float32) / g)

    area = tf.reduce_mean(tf.cast(kept, tf.float32))
    aspect = (x1 - x0) / tf.maximum(y1 - y0, 1e-6)
    flags = tf.stack([
        empty,
        tf.equal(components, 1),
        tf.logical_and(~empty, tf.logical_or(area < AREA_RANGE[0], area > AREA_RANGE[1])),
        tf.logical_and(~empty, tf.logical_or(aspect < ASPECT_RANGE[0], aspect > ASPECT_RANGE[1])),
    ])
    my, mx = MARGIN * (y1 - y0), MARGIN * (x1 - x0)
    box = tf.clip_by_value(tf.stack([y0 - my, x0 - mx, y1 + my, x1 + mx]), 0.0, 1.0)
    lo, hi = (1 - FALLBACK_FRACTION) / 2, (1 + FALLBACK_FRACTION) / 2
    box = tf.where(tf.reduce_any(flags), tf.constant([lo, lo, hi, hi]), box)
    return box, flags


def crop_and_resize(image: tf.Tensor, box: tf.Tensor, size: int) -> tf.Tensor:
    """Crops [H, W, C] to a fractional box and resizes to [size, size, C] (area averaging)."""
    h = tf.cast(tf.shape(image)[0], tf.float32)
    w = tf.cast(tf.shape(image)[1], tf.float32)
    y0 = tf.cast(tf.floor(box[0] * h), tf.int32)
    x0 = tf.cast(tf.floor(box[1] * w), tf.int32)
    y1 = tf.maximum(tf.cast(tf.math.ceil(box[2] * h), tf.int32), y0 + 1)
    x1 = tf.maximum(tf.cast(tf.math.ceil(box[3] * w), tf.int32), x0 + 1)
    cropped = image[y0:y1, x0:x1]
    return tf.image.resize(cropped, [size, size], method="area", antialias=True)


def unet_input(image: tf.Tensor) -> tf.Tensor:
    """[H, W, 1] in [0, 1] -> the U-Net's [256, 256, 1] input."""
    return tf.image.resize(image, [UNET_INPUT_SIZE, UNET_INPUT_SIZE], method="area", antialias=True)


def crop_from_probability(image: tf.Tensor, probability: tf.Tensor, output_size: int):
    """The cropped radiograph as uint16 [S, S, 1] (what the batch stage stores as a 16-bit PNG
    and what serving feeds the classifier), the box and the QC flags."""
    box, flags = lung_box(probability)
    cropped = crop_and_resize(image, box, output_size)
    cropped = tf.cast(tf.round(tf.clip_by_value(cropped, 0.0, 1.0) * 65535.0), tf.uint16)
    return cropped, box, flags


def crop_encoded(unet, encoded: tf.Tensor, output_size: int, max_pixels: int | None = None):
    """One encoded radiograph -> (crop as uint16 [S, S, 1], box, QC flags): decode, the U-Net at
    its own input size, the crop. Serving maps it over a request (trainer/export.py); the batch
    stage runs it through `batch_crop` (components/lung_crop.py)."""
    image = decode.decode_radiograph(encoded, max_pixels)
    probability = unet(unet_input(image)[tf.newaxis], training=False)[0, :, :, 0]
    return crop_from_probability(image, probability, output_size)


def batch_crop(unet, output_size: int):
    """A compiled function, encoded radiographs [N] -> (16-bit PNG crops [N], boxes [N, 4], QC
    flags [N, 4]): `crop_encoded` mapped over the batch in one graph, as serving runs it."""
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def crop_batch(encoded):
        def one(image_bytes):
            cropped, box, flags = crop_encoded(unet, image_bytes, output_size)
            return tf.io.encode_png(cropped), box, flags
        return tf.map_fn(one, encoded, fn_output_signature=(
            tf.TensorSpec([], tf.string), tf.TensorSpec([4], tf.float32),
            tf.TensorSpec([len(QC_FLAGS)], tf.bool)))
    return crop_batch
