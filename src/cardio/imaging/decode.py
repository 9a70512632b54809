"""Image decoding and normalisation in TensorFlow ops.

Written once and called by the trainer's input pipeline and by the exported serving signature,
so training and serving preprocess identically by construction.
"""
import tensorflow as tf


def decode_radiograph(encoded: tf.Tensor) -> tf.Tensor:
    """Decodes one PNG (8- or 16-bit) or JPEG radiograph to float32 [H, W, 1] in [0, 1].

    Inputs are MONOCHROME2 (bright bone); converters invert MONOCHROME1 on the way in.
    """
    image = tf.io.decode_image(encoded, channels=1, dtype=tf.float32, expand_animations=False)
    image.set_shape([None, None, 1])
    return image


def resize_for_model(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Resizes [H, W, 1] in [0, 1] to the classifier's square input, 3 channels, values 0-255.

    Backbone-specific scaling (e.g. MobileNet's [-1, 1]) happens inside the model, so the
    serving signature and training share this function unchanged.
    """
    image = tf.image.resize(image, [image_size, image_size], method="area", antialias=True)
    return tf.image.grayscale_to_rgb(image) * 255.0


def preprocess(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    """Encoded bytes -> classifier input [image_size, image_size, 3]."""
    return resize_for_model(decode_radiograph(encoded), image_size)
