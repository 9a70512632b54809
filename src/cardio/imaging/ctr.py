"""The cardiothoracic ratio (CTR), in TensorFlow ops: one implementation for the serving graph
(trainer/export.py), the `ctr` benchmark and the tests.

CTR = the heart's maximal horizontal width / the maximal inner thoracic width, read from masks:
  heart width   the horizontal extent of the heart mask (leftmost to rightmost heart pixel, over
                all rows: the sum of the right and left maximal widths from the midline);
  thorax width  the horizontal extent of the two lung fields together (the right lung's outer
                edge to the left lung's), the inner edge of the ribs as the lung masks draw it.
That is Wingspan's definition (its `ctr` where its table has none is heart width / lung-field
width from its masks; `labels.csv` agrees with this module's `ctr_numpy` on its own masks to
5e-5 there, and to 0.005 where the source's table gave it), and the common U-Net CTR of the
literature. Both widths are horizontal, so the ratio does not change when a radiograph is
squashed to square.

The masks are the U-Nets' probability maps at their 256x256 input (for the lungs, the
radiograph's grey window stretched first, `stretch`: the crop's own lung map, on the plain
radiograph, misses the lungs of low-contrast films), thresholded at 0.5 and kept
to their largest components on the crop's 64x64 grid (`cardio.imaging.crop.largest_components`:
two for the lungs, one for the heart), so a speck of noise cannot widen either extent; the
extents themselves are read at 256 px. Boxes are [y0, x0, y1, x1] fractions of the radiograph,
as the crop box is (x1, y1 exclusive).

QC flags (CTR_QC_FLAGS, one int64 column each in the served `ctr_qc`, as `crop_qc`):
  empty_heart            no heart component: no CTR (`ctr` is -1)
  empty_lungs            no lung component: no CTR (`ctr` is -1)
  one_lung               one lung field: the thoracic width is a lung's, the CTR too high
  heart_outside_thorax   the heart's extent leaves the lungs' on either side
  ctr_out_of_range       the ratio is outside CTR_RANGE (implausible for an adult frontal film)
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from cardio.imaging import crop

CTR_QC_FLAGS = ("empty_heart", "empty_lungs", "one_lung", "heart_outside_thorax",
                "ctr_out_of_range")
CTR_RANGE = (0.3, 0.85)
NOT_MEASURED = -1.0     # `ctr` when a mask is empty
CARDIOMEGALY = 0.5      # CTR above it: cardiomegaly on a PA film


def _kept_mask(probability: tf.Tensor, k: int):
    """[S, S] probability -> (its 0.5 mask restricted to the k largest grid components, count)."""
    size = probability.shape[0]
    kept, count = crop.largest_components(probability, k)
    pool = size // crop.GRID
    upsampled = tf.repeat(tf.repeat(kept, pool, axis=0), pool, axis=1)
    return tf.logical_and(probability >= 0.5, upsampled), count


def _box(mask: tf.Tensor) -> tf.Tensor:
    """[S, S] bool -> [y0, x0, y1, x1] fractions (x1, y1 exclusive); [0, 0, 0, 0] when empty."""
    size = tf.cast(tf.shape(mask)[0], tf.float32)
    rows = tf.where(tf.reduce_any(mask, axis=1))[:, 0]
    cols = tf.where(tf.reduce_any(mask, axis=0))[:, 0]
    empty = tf.equal(tf.size(cols), 0)

    def extent():
        return tf.stack([tf.cast(tf.reduce_min(rows), tf.float32),
                         tf.cast(tf.reduce_min(cols), tf.float32),
                         tf.cast(tf.reduce_max(rows) + 1, tf.float32),
                         tf.cast(tf.reduce_max(cols) + 1, tf.float32)]) / size

    return tf.cond(empty, lambda: tf.zeros([4]), extent)


def measure(lung_probability: tf.Tensor, heart_probability: tf.Tensor):
    """[S, S] lung and heart probability maps (S a static multiple of 64) ->
    (ctr scalar, heart box [4], thorax box [4], QC flags [len(CTR_QC_FLAGS)] bool)."""
    lungs, lung_count = _kept_mask(lung_probability, 2)
    heart, heart_count = _kept_mask(heart_probability, 1)
    heart_box, thorax_box = _box(heart), _box(lungs)
    return ratio(heart_box, thorax_box, heart_count, lung_count)


def ratio(heart_box, thorax_box, heart_count, lung_count):
    """The CTR and its QC flags from the two boxes and the component counts."""
    empty_heart = tf.equal(heart_count, 0)
    empty_lungs = tf.equal(lung_count, 0)
    heart_width = heart_box[3] - heart_box[1]
    thorax_width = thorax_box[3] - thorax_box[1]
    measured = tf.logical_not(tf.logical_or(empty_heart, empty_lungs))
    value = tf.where(measured, heart_width / tf.maximum(thorax_width, 1e-6), NOT_MEASURED)
    flags = tf.stack([
        empty_heart,
        empty_lungs,
        tf.equal(lung_count, 1),
        tf.logical_and(measured, tf.logical_or(heart_box[1] < thorax_box[1],
                                               heart_box[3] > thorax_box[3])),
        tf.logical_and(measured, tf.logical_or(value < CTR_RANGE[0], value > CTR_RANGE[1])),
    ])
    return value, heart_box, thorax_box, flags


STRETCH_PERCENTILES = (0.01, 0.99)


def stretch(image: tf.Tensor) -> tf.Tensor:
    """[S, S, 1] in [0, 1] -> its 1st-99th percentile window stretched to [0, 1].

    Some sites' films use a fraction of the grey range (15 of Wingspan's 143, all from one
    vendor, sit between about 0.25 and 0.45): there the lung U-Net, trained on full-range
    Shenzhen and Montgomery films, finds no lungs at all (mean lung Dice on Wingspan 0.83, 15
    radiographs with fewer than two lung fields), and with the window stretched it finds them
    all (Dice 0.95, none missing). The CTR's lung map reads the stretched image; the heart
    U-Net, trained on Wingspan's own films, reads the plain one as it was trained."""
    flat = tf.sort(tf.reshape(image, [-1]))
    last = tf.cast(tf.size(flat) - 1, tf.float32)
    lo = tf.gather(flat, tf.cast(tf.round(STRETCH_PERCENTILES[0] * last), tf.int32))
    hi = tf.gather(flat, tf.cast(tf.round(STRETCH_PERCENTILES[1] * last), tf.int32))
    return tf.clip_by_value((image - lo) / tf.maximum(hi - lo, 1e-3), 0.0, 1.0)


def probabilities(unet, heart_unet, image: tf.Tensor):
    """[H, W, 1] radiograph in [0, 1] -> the lung map (of the window-stretched radiograph,
    `stretch`) and the heart map (of the plain one), both at 256 px."""
    plain = crop.unet_input(image)
    return (unet(stretch(plain)[tf.newaxis], training=False)[0, :, :, 0],
            heart_unet(plain[tf.newaxis], training=False)[0, :, :, 0])


def batch_measure(unet, heart_unet):
    """A compiled function, encoded radiographs [N] -> (ctr [N], heart boxes [N, 4], thorax boxes
    [N, 4], QC flags [N, 5]): decode, both U-Nets, `measure`; serving's ops, for the benchmark."""
    from cardio.imaging import decode

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def measure_batch(encoded):
        def one(image_bytes):
            image = decode.decode_radiograph(image_bytes)
            return measure(*probabilities(unet, heart_unet, image))
        return tf.map_fn(one, encoded, fn_output_signature=(
            tf.TensorSpec([], tf.float32), tf.TensorSpec([4], tf.float32),
            tf.TensorSpec([4], tf.float32), tf.TensorSpec([len(CTR_QC_FLAGS)], tf.bool)))
    return measure_batch


def ctr_numpy(heart: np.ndarray, lungs: np.ndarray) -> float:
    """The CTR of ground-truth masks (boolean [H, W]; lungs: both fields), as Wingspan's
    `labels.csv` computes it: heart extent / lung-field extent, in pixels, ends included."""
    heart_cols = np.flatnonzero(heart.any(axis=0))
    lung_cols = np.flatnonzero(lungs.any(axis=0))
    if not len(heart_cols) or not len(lung_cols):
        return NOT_MEASURED
    return float((heart_cols[-1] - heart_cols[0] + 1) / (lung_cols[-1] - lung_cols[0] + 1))


def flag_names(flags) -> list:
    """The names of the raised flags of one image."""
    return [name for name, raised in zip(CTR_QC_FLAGS, flags) if raised]
