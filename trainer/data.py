"""tf.data input pipeline over the radiograph TFRecords.

Parallel read and decode, shuffle, prefetch; augmentation runs on the CPU inside the pipeline and
only on cardiomegaly images: each one is kept and `positive_copies` augmented copies of it are
added, every epoch (the study augmented cardiomegaly images "to reduce the training set
imbalance", which only adding copies does).

`deterministic` (the pipeline's default) makes an epoch a function of the examples and the seed:
records in an order fixed by their content (not by Beam's order, nor by the bytes a writer
happened to produce), seeded shuffles, stateless augmentation seeds, and tf.data's deterministic
element order.
"""
from __future__ import annotations

import hashlib
import math

import tensorflow as tf

from cardio import features as F
from cardio.imaging import decode

FEATURE_SPEC = {
    F.IMAGE: tf.io.FixedLenFeature([], tf.string),
    F.LABEL: tf.io.FixedLenFeature([], tf.int64),
}


def list_files(file_patterns) -> list:
    if isinstance(file_patterns, str):
        file_patterns = [file_patterns]
    files = sorted(f for pattern in file_patterns for f in tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {list(file_patterns)}")
    return files


def content_key(record: bytes) -> bytes:
    """The SHA-256 of a serialized tf.Example's content. Not of its bytes: an Example's features
    are a protobuf map, whose entries a writer may serialize in any order (Python's protobuf
    orders them differently in every process), so the same example written by two runs differs in
    bytes. Re-serialized deterministically (map keys sorted), it does not."""
    return hashlib.sha256(
        tf.train.Example.FromString(record).SerializeToString(deterministic=True)).digest()


def ordered_records(files) -> tf.data.Dataset:
    """Every record of `files` in an order fixed by its content (`content_key`): the same
    examples give the same order however Beam sharded, ordered and serialized them, so a seeded
    shuffle of them is the same shuffle. Holds the split's serialized records in memory (about
    the size of its TFRecord files)."""
    records = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    records.sort(key=content_key)
    return tf.data.Dataset.from_generator(lambda: iter(records),
                                          output_signature=tf.TensorSpec([], tf.string))


def random_affine(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Rotation (±10°), shift (±10%), shear (±0.1), scale (0.9-1.1) and horizontal flip."""
    size = tf.cast(tf.shape(image)[0], tf.float32)
    r = tf.random.stateless_uniform([6], seed=seed, minval=-1.0, maxval=1.0)
    angle, shear = r[0] * math.radians(10), r[1] * 0.1
    scale = 1.0 + r[2] * 0.1
    tx, ty = r[3] * 0.1 * size, r[4] * 0.1 * size
    flip = tf.where(r[5] > 0, -1.0, 1.0)
    cos, sin = tf.cos(angle), tf.sin(angle)
    # Output -> input mapping about the image centre.
    a0, a1 = flip * cos / scale, (sin + shear) / scale
    b0, b1 = -flip * sin / scale, cos / scale
    c = size / 2
    transform = tf.stack([a0, a1, c - a0 * c - a1 * c + tx,
                          b0, b1, c - b0 * c - b1 * c + ty, 0.0, 0.0])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis], transforms=transform[tf.newaxis],
        output_shape=tf.shape(image)[:2], fill_value=0.0, interpolation="BILINEAR",
        fill_mode="REFLECT")
    return out[0]


def decoded_bytes(examples: int, image_size: int) -> int:
    """The memory a split of `examples` takes decoded (float32, three channels)."""
    return examples * image_size * image_size * 3 * 4


def make_dataset(file_patterns, batch_size: int, image_size: int, training: bool,
                 deterministic: bool = False, seed: int = 0, augment_positives: bool = True,
                 repeat: bool | None = None, drop_remainder: bool = False,
                 workers: int = 1, positive_copies: int = 1,
                 cache_decoded: bool = False) -> tf.data.Dataset:
    """Yields (images [N, size, size, 3] in 0-255, labels [N] float32).

    `cache_decoded`: decode each image once and hold the decoded split in memory (about
    `decoded_bytes`), for splits read every epoch that fit; the batches are the same either way.

    `workers`: training processes sharing the data (MultiWorkerMirroredStrategy). Each reads its
    own files when there are enough of them, else every example and keeps its share."""
    files = list_files(file_patterns)
    if deterministic:
        ds = ordered_records(files)
    else:
        ds = tf.data.TFRecordDataset(files, compression_type="GZIP",
                                     num_parallel_reads=min(len(files), tf.data.AUTOTUNE))

    def parse_and_decode(serialized):
        parsed = tf.io.parse_single_example(serialized, FEATURE_SPEC)
        return decode.preprocess(parsed[F.IMAGE], image_size), tf.cast(parsed[F.LABEL], tf.float32)

    def decoded(ds):
        return ds.map(parse_and_decode, num_parallel_calls=tf.data.AUTOTUNE,
                      deterministic=deterministic or not training)

    repeated = repeat if repeat is not None else training
    if cache_decoded:
        # Decoded once, kept in memory: the shuffle sees the same elements in the same order,
        # so each epoch is the one the uncached path gives, without decoding every image again.
        ds = decoded(ds).cache()
    if training:
        ds = ds.shuffle(1024, seed=seed, reshuffle_each_iteration=True)
    if repeated:
        ds = ds.repeat()
    if not cache_decoded:
        # Records are shuffled before they are decoded: a buffer of PNGs, not of decoded images.
        ds = decoded(ds)
    if training and augment_positives and positive_copies > 0:
        # Every cardiomegaly image is followed by its augmented copies. Stateless seeds from a
        # counter keep a deterministic run reproducible.
        def with_copies(i, image, label):
            copies = tf.where(label > 0.5, positive_copies, 0)
            return tf.data.Dataset.range(tf.cast(copies, tf.int64) + 1).map(
                lambda j: (tf.cond(j > 0, lambda: random_affine(
                    image, tf.stack([tf.cast(seed, tf.int64), i * (positive_copies + 1) + j])),
                    lambda: image), label))

        # One input at a time (cycle_length 1, no parallel calls): in order by construction.
        ds = ds.enumerate().interleave(lambda i, xy: with_copies(i, *xy), cycle_length=1)
        # Spread an image's copies over several batches (a small buffer: decoded images).
        ds = ds.shuffle(64, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    options = tf.data.Options()
    options.deterministic = deterministic
    if len(files) < workers:
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)
