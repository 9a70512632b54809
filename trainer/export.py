"""The exported SavedModel: what the Evaluator scores and what TF Serving serves.

Signatures:
  serving_default   raw encoded radiographs (PNG 8/16-bit, JPEG; any size) -> probability, the
                    label at the operating threshold, and, when the pipeline crops, the crop
                    box and QC flags. It runs the lung U-Net and the crop (cardio.imaging.crop), the same
                    TensorFlow ops the LungCrop stage ran on the training data. With the heart
                    U-Net embedded too, also the cardiothoracic ratio `ctr`, the `heart_box`
                    and `thorax_box` whose widths it divides, and `ctr_qc` (cardio.imaging.ctr):
                    the lung map is the crop's, computed once.
  serving_examples  serialized tf.Examples as the pipeline stores them (already cropped), for
                    TFMA and infra validation -> probability and label.
  classify          TF Serving's Classify API (trainer/signatures.py), with warm-up requests
                    in assets.extra/tf_serving_warmup_requests.
  explain           serving_default's input and outputs plus Grad-CAM and guided-backprop maps
                    and the crop the classifier saw (cardio.imaging.saliency; `cardio explain` reads it).
The Platt scaling fitted on validation (trainer/calibration.py) and the operating threshold chosen
on the calibrated probability are baked in, so the blessed model is the served one: every signature
returns the calibrated probability.
"""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from cardio import features as F
from cardio.imaging import crop, ctr, decode
from cardio.trainer import signatures


class CardioServingModule(tf.Module):
    def __init__(self, model, image_size: int, threshold: float, unet=None, crop_size: int = 0,
                 max_pixels: int = decode.MAX_SERVING_PIXELS, platt=None, heart_unet=None):
        super().__init__(name="cardio")
        self.max_pixels = max_pixels   # images whose header declares more are refused undecoded
        self.model = model
        self.logit = logit_function(model)
        # Platt scaling fitted on validation (trainer/calibration.py): served probabilities are
        # calibrated, and the threshold applies to them.
        self.platt_a = tf.Variable(platt.a if platt else 1.0, trainable=False, dtype=tf.float32,
                                   name="platt_a")
        self.platt_b = tf.Variable(platt.b if platt else 0.0, trainable=False, dtype=tf.float32,
                                   name="platt_b")
        self.unet = unet
        # The heart U-Net (cardio.imaging.unet, target heart): the CTR needs the lung map too.
        self.heart_unet = heart_unet if unet is not None else None
        self.image_size = image_size
        self.crop_size = crop_size
        self.threshold = tf.Variable(threshold, trainable=False, dtype=tf.float32, name="threshold")

    def calibrated(self, logit):
        return tf.sigmoid(self.platt_a * logit + self.platt_b)

    def _classify(self, images):
        """[N, size, size, 3] classifier inputs -> calibrated probability and label."""
        probability = self.calibrated(self.logit(images))
        return {F.PROBABILITY: probability,
                F.PREDICTED_LABEL: tf.cast(probability >= self.threshold, tf.int64)}

    def _stored_image(self, encoded):
        """An image as the pipeline stores it (cropped when the pipeline crops) -> model input."""
        return decode.resize_for_model(decode.decode_radiograph(encoded, self.max_pixels),
                                       self.image_size)

    def _raw_image(self, encoded):
        """A raw radiograph -> (model input, crop box, QC flags), via the same crop as training."""
        if self.unet is None:
            image = decode.decode_radiograph(encoded, self.max_pixels)
            return (decode.resize_for_model(image, self.image_size),
                    tf.constant([0.0, 0.0, 1.0, 1.0]), tf.zeros([len(crop.QC_FLAGS)], tf.bool))
        cropped, box, flags = crop.crop_encoded(self.unet, encoded, self.crop_size, self.max_pixels)
        # The crop as the batch stage stores it (uint16), then the training preprocessing.
        stored = tf.cast(cropped, tf.float32) / 65535.0
        return decode.resize_for_model(stored, self.image_size), box, flags

    def _raw_image_ctr(self, encoded):
        """`_raw_image` plus the CTR, from one decode. The crop reads the lung map of the plain
        radiograph, exactly as `crop.crop_encoded` (the LungCrop stage) does; the CTR reads the
        lung map of the window-stretched one (`ctr.stretch`; one lung U-Net call on the pair)
        and the heart U-Net's map of the plain one (`ctr.probabilities`)."""
        image = decode.decode_radiograph(encoded, self.max_pixels)
        plain = crop.unet_input(image)
        lungs = self.unet(tf.stack([plain, ctr.stretch(plain)]), training=False)[..., 0]
        heart = self.heart_unet(plain[tf.newaxis], training=False)[0, :, :, 0]
        cropped, box, flags = crop.crop_from_probability(image, lungs[0], self.crop_size)
        stored = tf.cast(cropped, tf.float32) / 65535.0
        return (decode.resize_for_model(stored, self.image_size), box, flags,
                *ctr.measure(lungs[1], heart))

    # The signatures use TensorFlow's own control flow (tf.cond, tf.map_fn, tf.while_loop):
    # AutoGraph would only re-parse every Keras layer's source, a quarter of the export's time.
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=F.IMAGE_BYTES)],
                 autograph=False)
    def serve_images(self, image_bytes):
        size = self.image_size
        image_spec = (tf.TensorSpec([size, size, 3], tf.float32), tf.TensorSpec([4], tf.float32),
                      tf.TensorSpec([len(crop.QC_FLAGS)], tf.bool))
        if self.heart_unet is None:
            images, boxes, flags = tf.map_fn(self._raw_image, image_bytes,
                                             fn_output_signature=image_spec)
        else:
            images, boxes, flags, ratio, heart_box, thorax_box, ctr_flags = tf.map_fn(
                self._raw_image_ctr, image_bytes, fn_output_signature=image_spec + (
                    tf.TensorSpec([], tf.float32), tf.TensorSpec([4], tf.float32),
                    tf.TensorSpec([4], tf.float32), tf.TensorSpec([len(ctr.CTR_QC_FLAGS)], tf.bool)))
        result = self._classify(images)
        result[F.CROP_BOX] = boxes
        result[F.CROP_QC] = tf.cast(flags, tf.int64)   # one column per name in cardio.imaging.crop.QC_FLAGS
        if self.heart_unet is not None:
            result[F.CTR] = ratio
            result[F.HEART_BOX] = heart_box
            result[F.THORAX_BOX] = thorax_box
            result[F.CTR_QC] = tf.cast(ctr_flags, tf.int64)   # cardio.imaging.ctr.CTR_QC_FLAGS
        return result

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")],
                 autograph=False)
    def serve_examples(self, examples):
        parsed = tf.io.parse_example(examples, {F.IMAGE: tf.io.FixedLenFeature([], tf.string)})
        size = self.image_size
        images = tf.map_fn(self._stored_image, parsed[F.IMAGE],
                           fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
        return self._classify(images)

    def explain_signature(self):
        """The `explain` signature (cardio.imaging.saliency): the maps explain exactly what is served."""
        from cardio.imaging import saliency
        return saliency.signature(self, F.CROP_BOX, F.CROP_QC)




def logit_function(model):
    """images -> [N] logits: the classifier's output Dense layer without its sigmoid."""
    head = model.layers[-1]
    features = keras.Model(model.inputs, head.input, name="logit_features")

    def logit(images):
        x = tf.cast(features(images, training=False), tf.float32)
        return tf.reshape(tf.matmul(x, head.kernel) + head.bias, [-1])
    return logit


def export(model, export_dir: str, image_size: int, threshold: float, unet=None,
           crop_size: int = 0, metadata: dict | None = None,
           max_pixels: int = decode.MAX_SERVING_PIXELS, platt=None, heart_unet=None):
    """Saves the serving SavedModel; `metadata` (the embedded U-Net's licence among it) goes to
    assets.extra/cardio_metadata.json, which travels with every copy TF Serving loads.
    `max_pixels` is baked into the signatures: an image whose header declares more pixels is
    refused (INVALID_ARGUMENT) before it is decoded, by any server, TF Serving's included."""
    import json
    import os

    from tf_keras.src.saving.legacy.saved_model.utils import keras_option_scope

    module = CardioServingModule(model, image_size, threshold, unet, crop_size, max_pixels,
                                 platt, heart_unet)
    # Servers and TFMA call the signatures only: skip tracing every Keras layer's call function
    # for Keras's own reloading, which costs minutes on DenseNet121 and EfficientNetB2.
    with keras_option_scope(save_traces=False):
        tf.saved_model.save(module, export_dir, signatures={
            F.SERVING_DEFAULT: module.serve_images.get_concrete_function(),
            F.SERVING_EXAMPLES: module.serve_examples.get_concrete_function(),
            "explain": module.explain_signature(),
            # TF Serving's Classify API and warm-up requests (trainer/signatures.py).
            F.SERVING_CLASSIFY: signatures.classify_function(module),
        # explain computes its guided-backprop gradients inside the signature; saving them as
        # reusable custom gradients too would triple the export time of EfficientNetB2.
        }, options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
    signatures.write_warmup_requests(export_dir)
    extra = os.path.join(export_dir, F.ASSETS_EXTRA)
    tf.io.gfile.makedirs(extra)
    metadata = {"image_size": image_size, "operating_threshold": threshold,
                "crop_size": crop_size if unet is not None else None, "max_pixels": max_pixels,
                "ctr": ({"outputs": [F.CTR, F.HEART_BOX, F.THORAX_BOX, F.CTR_QC],
                         "qc_flags": list(ctr.CTR_QC_FLAGS), "not_measured": ctr.NOT_MEASURED,
                         "cardiomegaly_above": ctr.CARDIOMEGALY}
                        if module.heart_unet is not None else None),
                **(metadata or {})}
    with tf.io.gfile.GFile(os.path.join(extra, F.METADATA_FILE), "w") as f:
        json.dump(metadata, f, indent=2)
    with tf.io.gfile.GFile(os.path.join(extra, F.MODEL_CARD_FILE), "w") as f:
        f.write(model_card(metadata))




def model_card(metadata: dict) -> str:
    """A short card that travels inside the SavedModel; the licence of an embedded U-Net first."""
    segmenter = metadata.get("segmenter")
    lines = ["# Cardiomegaly classifier", ""]
    if segmenter:
        lines += [f"**Licence restriction**: embeds the lung U-Net {segmenter['weights_sha256'][:12]}"
                  f"..., licence: {segmenter.get('licence')}.", ""]
    heart = metadata.get("heart_segmenter")
    if heart:
        lines += [f"- Cardiothoracic ratio: `ctr` from the heart U-Net {heart['weights_sha256'][:12]}"
                  f"... (held-out Dice {heart.get('held_out', {}).get('dice', float('nan')):.3f})"
                  " and the lung U-Net, with `heart_box`, `thorax_box` and `ctr_qc`.", ""]
    lines += [f"- Backbone: {metadata.get('backbone')}, class weighting {metadata.get('weighting')}",
              f"- Input: raw PA radiograph (PNG 8/16-bit or JPEG), classifier at "
              f"{metadata['image_size']} px" + (f" on {metadata['crop_size']} px lung crops"
                                                 if metadata.get("crop_size") else ""),
              f"- Operating threshold (chosen on validation): {metadata['operating_threshold']:.4f}",
              "- Intended use: research on cardiomegaly detection; not a medical device.", ""]
    return "\n".join(lines)
