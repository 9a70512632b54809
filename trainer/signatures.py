"""What the export adds for TF Serving (trainer/export.py calls both):

  classify        a Classify-able signature: one string input (serialized tf.Examples carrying
                  the raw radiograph in the `image` feature), outputs `classes` and `scores`
                  ([N, 2]: normal, cardiomegaly). TF Serving serves it through its Classify API
                  (its method-name check is off by default).
  warm-up         assets.extra/tf_serving_warmup_requests: a TFRecord of PredictionLogs that
                  TF Serving (and cardio serve) replay before reporting a version AVAILABLE, so
                  the first clinical request does not pay for tracing and kernel set-up.
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from cardio import features as F


def classify_function(module):
    """The `classify` signature of a CardioServingModule (runs its serving_default)."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")], autograph=False)
    def classify(inputs):
        parsed = tf.io.parse_example(inputs, {F.IMAGE: tf.io.FixedLenFeature([], tf.string)})
        probability = module.serve_images(parsed[F.IMAGE])[F.PROBABILITY]
        scores = tf.stack([1.0 - probability, probability], axis=1)
        classes = tf.tile(tf.constant([F.CLASS_NAMES]), [tf.shape(probability)[0], 1])
        return {"classes": classes, "scores": scores}

    return classify.get_concrete_function()


def warmup_image() -> bytes:
    """A small 16-bit radiograph-like PNG (a vertical gradient with a dark chest)."""
    rows = np.linspace(8000, 60000, 96, dtype=np.float64)[:, None] * np.ones((1, 80))
    rows[20:80, 15:65] *= 0.4
    return tf.io.encode_png(tf.constant(rows.astype(np.uint16)[..., None])).numpy()


def warmup_requests() -> list:
    """One Predict (serving_default) and one Classify request, as PredictionLogs."""
    from tensorflow_serving.apis import classification_pb2, predict_pb2, prediction_log_pb2

    image = warmup_image()
    predict = predict_pb2.PredictRequest()
    predict.model_spec.signature_name = F.SERVING_DEFAULT
    predict.inputs[F.IMAGE_BYTES].CopyFrom(tf.make_tensor_proto([image]))
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.signature_name = F.SERVING_CLASSIFY
    classify.input.example_list.examples.add().features.feature[F.IMAGE].bytes_list.value.append(
        image)
    return [prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=predict)),
            prediction_log_pb2.PredictionLog(
                classify_log=prediction_log_pb2.ClassifyLog(request=classify))]


def write_warmup_requests(export_dir: str):
    extra = os.path.join(export_dir, F.ASSETS_EXTRA)
    tf.io.gfile.makedirs(extra)
    with tf.io.TFRecordWriter(os.path.join(extra, F.WARMUP_FILE)) as writer:
        for log in warmup_requests():
            writer.write(log.SerializeToString())
