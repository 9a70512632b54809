"""The exported SavedModel: what the Evaluator scores and what TF Serving serves.

Signatures:
  serving_default   raw encoded images (PNG 8/16-bit, JPEG; any size) -> probability, label
  serving_examples  serialized tf.Example (TFMA, infra validation) -> the same outputs
Both run cxr.imaging.preprocess, the function training used, and the operating threshold chosen
on validation is baked in, so the blessed model is the served model.
"""
from __future__ import annotations

import tensorflow as tf

from cxr import features as F
from cxr import imaging

SERVING_DEFAULT = "serving_default"
SERVING_EXAMPLES = "serving_examples"
IMAGE_BYTES = "image_bytes"


class CardioServingModule(tf.Module):
    def __init__(self, model, image_size: int, threshold: float):
        super().__init__(name="cardio")
        self.model = model
        self.image_size = image_size
        self.threshold = tf.Variable(threshold, trainable=False, dtype=tf.float32, name="threshold")

    def _predict(self, encoded):
        images = tf.map_fn(lambda b: imaging.preprocess(b, self.image_size), encoded,
                           fn_output_signature=tf.TensorSpec([self.image_size, self.image_size, 3],
                                                             tf.float32))
        probability = tf.reshape(self.model(images, training=False), [-1])
        return {F.PROBABILITY: probability,
                F.PREDICTED_LABEL: tf.cast(probability >= self.threshold, tf.int64)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_BYTES)])
    def serve_images(self, image_bytes):
        return self._predict(image_bytes)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(self, examples):
        parsed = tf.io.parse_example(examples, {F.IMAGE: tf.io.FixedLenFeature([], tf.string)})
        return self._predict(parsed[F.IMAGE])


def export(model, export_dir: str, image_size: int, threshold: float):
    module = CardioServingModule(model, image_size, threshold)
    tf.saved_model.save(module, export_dir, signatures={
        SERVING_DEFAULT: module.serve_images.get_concrete_function(),
        SERVING_EXAMPLES: module.serve_examples.get_concrete_function(),
    })
