"""Image decoding and normalisation in TensorFlow ops.

Written once and called by the trainer's input pipeline and by the exported serving signature,
so training and serving preprocess identically by construction.
"""
import tensorflow as tf

# The serving signature's default pixel limit: far above any radiograph (detectors are at most
# ~4300 x 4300), far below what a small crafted PNG can declare (a 498 KB PNG may say 16000^2).
MAX_SERVING_PIXELS = 12_000 * 12_000


def _big_endian(encoded, offset: int, width: int):
    raw = tf.io.decode_raw(tf.strings.substr(encoded, offset, 2 * width),
                           tf.int32 if width == 4 else tf.uint16, little_endian=False)
    return tf.cast(raw, tf.int64)


def _little_endian(encoded, offset: int, width: int):
    raw = tf.io.decode_raw(tf.strings.substr(encoded, offset, 2 * width),
                           tf.int32 if width == 4 else tf.uint16, little_endian=True)
    return tf.abs(tf.cast(raw, tf.int64))    # BMP stores top-down images with a negative height


def header_size(encoded: tf.Tensor) -> tf.Tensor:
    """[height, width] (int64) that an encoded image's header declares, read without decoding:
    PNG's IHDR, JPEG's SOF (tf.io.extract_jpeg_shape), GIF's and BMP's fixed fields. [0, 0] for
    anything else (too short, unknown format: tf.io.decode_image refuses those itself)."""
    length = tf.strings.length(encoded)
    magic = tf.strings.substr(encoded, 0, 4)
    zero = tf.zeros([2], tf.int64)
    return tf.case([
        (tf.logical_and(tf.equal(magic, b"\x89PNG"), length >= 24),
         lambda: tf.reverse(_big_endian(encoded, 16, 4), [0])),          # width, height
        (tf.equal(tf.strings.substr(encoded, 0, 3), b"\xff\xd8\xff"),
         lambda: tf.cast(tf.io.extract_jpeg_shape(encoded)[:2], tf.int64)),
        (tf.logical_and(tf.equal(tf.strings.substr(encoded, 0, 3), b"GIF"), length >= 10),
         lambda: tf.reverse(_little_endian(encoded, 6, 2), [0])),
        (tf.logical_and(tf.equal(tf.strings.substr(encoded, 0, 2), b"BM"), length >= 26),
         lambda: tf.reverse(_little_endian(encoded, 18, 4), [0])),
    ], default=lambda: zero, exclusive=False)


def check_pixels(encoded: tf.Tensor, max_pixels: int) -> tf.Tensor:
    """An op that fails with InvalidArgument when the header declares more than `max_pixels`
    pixels, before anything is decoded (a decode bomb is refused without allocating it)."""
    size = header_size(encoded)
    return tf.debugging.Assert(
        size[0] * size[1] <= max_pixels,
        [f"image too large: its header declares more than the {max_pixels} pixels this model "
         f"accepts; height, width:", size])


def decode_radiograph(encoded: tf.Tensor, max_pixels: int | None = None) -> tf.Tensor:
    """Decodes one PNG (8- or 16-bit) or JPEG radiograph to float32 [H, W, 1] in [0, 1].

    Inputs are MONOCHROME2 (bright bone); converters invert MONOCHROME1 on the way in. With
    `max_pixels` (the serving signature), the header's size is checked first.
    """
    if max_pixels is not None:
        with tf.control_dependencies([check_pixels(encoded, max_pixels)]):
            encoded = tf.identity(encoded)
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
