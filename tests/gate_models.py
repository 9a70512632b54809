"""Models whose predictions the gate tests control, and examples they score.

Each example's image is three vertical bands of grey: band 0 carries the label on the internal
site, band 1 on the external site, band 2 is noise everywhere (the uninformative band of a site
is flat grey). The model is the project's classifier shape (scaling, a nested backbone ending in
global average pooling, a one-unit Dense head) whose fixed weights read each band's mean, so
`weights` over the bands set the AUC per site: (1, 0, 0) is blind on the external site, (0, 1, 0)
on the internal one, (1, 1, c) gets worse as c grows. It is exported through trainer.export like
every pipeline model.
"""

import json
import os

import numpy as np
import tensorflow as tf
import tf_keras as keras
from tfx.dsl.component.experimental.annotations import OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types.standard_artifacts import Model, ModelRun

from cardio import features as F
from cardio.data import records
from cardio.imaging import files
from cardio.trainer import export

SIZE = 12
BAND = SIZE // 3
SITES = {F.TEST: "site-a", F.EXTERNAL: "site-b"}
GOOD = (1.0, 1.0, 0.0)            # AUC about 0.99 on both sites
EXTERNAL_BLIND = (1.0, 0.0, 0.0)  # external-site AUC 0.5
INTERNAL_BLIND = (0.0, 1.0, 0.0)  # internal AUC 0.5


def band_scores(split: str, n: int, seed: int = 0):
    """(labels, scores [n, 3]) of one split: its site's band informative, the other flat."""
    rng = np.random.default_rng([seed, list(SITES).index(split)])
    labels = np.arange(n) % 2
    scores = np.full((n, 3), 0.5)
    scores[:, 2] = rng.uniform(0, 1, n)
    scores[:, 0 if split == F.TEST else 1] = 0.45 * labels + rng.uniform(0, 0.55, n)
    return labels, scores


def image(scores) -> bytes:
    pixels = np.zeros((SIZE, SIZE), np.uint8)
    for band, score in enumerate(scores):
        pixels[:, band * BAND:(band + 1) * BAND] = round(float(score) * 255)
    return files.encode_png(pixels)


def write_examples(uri: str, n: int = 40, seed: int = 0) -> dict:
    """An Examples directory with `test` (site-a) and `external` (site-b) splits; returns the
    encoded images and labels per split."""
    written = {}
    for split, site in SITES.items():
        labels, scores = band_scores(split, n, seed)
        os.makedirs(os.path.join(uri, f"Split-{split}"), exist_ok=True)
        path = os.path.join(uri, f"Split-{split}", "data.tfrecord.gz")
        images = [image(s) for s in scores]
        with tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
            for i, (png, label) in enumerate(zip(images, labels)):
                record = records.Record(image_png=png, label=int(label), image_id=f"{split}-{i}",
                                        patient_id=f"p{split}{i}", site=site,
                                        sex=("F", "M")[i % 2], age=30 + 7 * (i % 9))
                writer.write(records.to_example(record).SerializeToString())
        written[split] = (images, labels)
    return written


def build(weights, gain: float = 8.0, offset: float = 0.0) -> keras.Model:
    """The classifier shape trainer.model builds, with fixed weights reading the band means;
    `offset` shifts every logit (a large negative one saturates the probabilities)."""
    inputs = keras.Input((SIZE, SIZE, 3))
    scaled = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    backbone_input = keras.Input((SIZE, SIZE, 3))
    conv = keras.layers.Conv2D(3, SIZE, use_bias=False)
    backbone = keras.Model(backbone_input,
                           keras.layers.GlobalAveragePooling2D()(conv(backbone_input)), name="bands")
    head = keras.layers.Dense(1, activation="sigmoid")
    model = keras.Model(inputs, head(backbone(scaled)))
    kernel = np.zeros((SIZE, SIZE, 3, 3), np.float32)
    for band in range(3):
        kernel[:, band * BAND:(band + 1) * BAND, 0, band] = 1.0 / (SIZE * BAND)
    conv.set_weights([kernel])
    w = np.asarray(weights, np.float32)
    head.set_weights([(gain * w).reshape(3, 1), np.array([offset - gain * w.sum() / 2], np.float32)])
    return model


def probabilities(model, images) -> np.ndarray:
    from cardio.imaging import decode
    batch = tf.stack([decode.preprocess(tf.constant(png), SIZE) for png in images])
    return model(batch, training=False).numpy().reshape(-1)


def threshold_for(model, written: dict, sensitivity: str) -> float:
    """"full": every positive is called positive; "low": only the top quarter of them."""
    positives = np.concatenate([probabilities(model, images)[labels == 1]
                                for images, labels in written.values()])
    return float(positives.min() if sensitivity == "full" else np.quantile(positives, 0.75))


def export_model(model_uri: str, weights, written: dict, sensitivity: str = "full") -> str:
    model = build(weights)
    export.export(model, os.path.join(model_uri, "Format-Serving"), SIZE,
                  threshold_for(model, written, sensitivity),
                  metadata={"backbone": "bands", "weighting": "75-25"})
    return model_uri


@component
def ControlledTrainer(model: OutputArtifact[Model], model_run: OutputArtifact[ModelRun],
                      weights: Parameter[str], examples_dir: Parameter[str]):
    """A Trainer stand-in for pipeline tests: exports `build(weights)`."""
    written = {}
    for split in SITES:
        files = tf.io.gfile.glob(os.path.join(examples_dir, f"Split-{split}", "*"))
        parsed = [tf.train.Example.FromString(r.numpy()) for r in
                  tf.data.TFRecordDataset(files, compression_type="GZIP")]
        written[split] = ([e.features.feature[F.IMAGE].bytes_list.value[0] for e in parsed],
                          np.array([e.features.feature[F.LABEL].int64_list.value[0] for e in parsed]))
    export_model(model.uri, json.loads(weights), written)
    tf.io.gfile.makedirs(model_run.uri)
    with tf.io.gfile.GFile(os.path.join(model_run.uri, "training_summary.json"), "w") as f:
        json.dump({"config": {"backbone": "bands", "weights": None, "epochs": 0, "batch_size": 1,
                              "learning_rate": 0.0, "seed": 0, "deterministic": True,
                              "target_sensitivity": 1.0},
                   "train_examples": 0, "steps_per_epoch": 0, "epochs_run": []}, f)
