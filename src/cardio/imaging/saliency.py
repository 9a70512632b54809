"""Grad-CAM and guided backpropagation in TensorFlow ops, for the exported `explain` signature.

Both explain the classifier's *logit* (the pre-sigmoid score), not the probability: a confident
prediction saturates the sigmoid and would give vanishing gradients.

Grad-CAM (Selvaraju et al. 2017): the gradients of the logit with respect to the backbone's last
convolutional feature map (the input of its global average pooling), averaged over space, weight
that map's channels; the weighted sum, rectified, says where on the crop the evidence for
cardiomegaly lies. Its resolution is the backbone's output stride (7x7 cells at 224 px).

Guided backpropagation (Springenberg et al. 2015): the gradient of the logit with respect to the
input pixels, where every rectifier passes back only positive gradients, and only where its
input was active. For ReLU this is the original rule. The backbones also use ReLU6 (MobileNet),
swish (EfficientNet) and the head plain ReLU; for any such activation f we apply the same rule
in its general form, dx = f'(x) * max(dy, 0): keep the activation's own local derivative (for
ReLU6 zero above 6; for swish smooth, slightly negative below about -1.28) and drop negative
incoming gradients. Gating nonlinearities (the sigmoids of EfficientNet's squeeze-and-excitation
blocks) keep their ordinary gradients. Guided backprop is known to depend little on the weights
(Adebayo et al. 2018, Nie et al. 2018: it partly reconstructs the image); read it as a
high-resolution view of the edges the network responds to, and Grad-CAM as where it looks.

The classifier is the one `trainer.model.build_model` makes: input scaling layers, a nested
ImageNet backbone ending in global average pooling, then Dense/Dropout layers and a sigmoid
output. `Saliency` splits it there; every weight stays the served model's own (the guided copy of
the backbone shares its layers), so nothing extra is stored in the SavedModel.
"""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

# Activations treated as rectifiers by guided backprop (by Keras function name).
RECTIFIERS = {"relu", "relu6", "swish", "silu", "gelu", "elu", "selu", "leaky_relu"}


def guided(fn):
    """The activation `fn` with the guided-backprop gradient: dx = f'(x) * max(dy, 0)."""

    @tf.custom_gradient
    def activation(x):
        def gradient(dy):
            # Elementwise f: the vector-Jacobian product with relu(dy) is f'(x) * relu(dy).
            # f is recomputed here (not taken from a forward tape) so that the SavedModel can
            # trace this gradient on its own.
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = fn(x)
            return tape.gradient(y, x, output_gradients=tf.nn.relu(dy))

        return fn(x), gradient

    return activation


def _is_rectifier(activation) -> bool:
    return getattr(activation, "__name__", "") in RECTIFIERS


class _GuidedLayer(keras.layers.Layer):
    """Calls a layer of the served backbone with guided gradients for its rectifier.

    Activation layers (Activation, ReLU/ReLU6) are wrapped whole; layers with a built-in
    activation (EfficientNet's squeeze conv) run with that activation swapped for its guided
    form for the duration of the call. The wrapped layer's weights are used, never copied.
    """

    def __init__(self, layer, **kwargs):
        super().__init__(name=f"{layer.name}_guided", **kwargs)
        self.wrapped = layer

    def call(self, inputs):
        layer = self.wrapped
        if isinstance(layer, keras.layers.ReLU) or (
                isinstance(layer, keras.layers.Activation) and _is_rectifier(layer.activation)):
            return guided(lambda x: layer(x, training=False))(inputs)
        original = layer.activation
        layer.activation = guided(original)
        try:
            return layer(inputs, training=False)
        finally:
            layer.activation = original


def _guided_clone(layer):
    """clone_model's per-layer function: rectifiers guided, everything else shared as is."""
    if isinstance(layer, keras.Model):
        return keras.models.clone_model(layer, clone_function=_guided_clone)
    if isinstance(layer, keras.layers.ReLU):
        return _GuidedLayer(layer)
    if _is_rectifier(getattr(layer, "activation", None)):
        return _GuidedLayer(layer)
    return layer


class NotExplainable(ValueError):
    pass


class Saliency:
    """Grad-CAM and guided backprop for a `trainer.model.build_model` classifier.

    A plain Python object on purpose: it is not tracked by tf.Module, so a serving module that
    holds one saves only the classifier's own variables.
    """

    def __init__(self, model: keras.Model):
        nested = [i for i, layer in enumerate(model.layers) if isinstance(layer, keras.Model)]
        if len(nested) != 1:
            raise NotExplainable(f"{model.name}: expected one nested backbone model, found "
                                 f"{len(nested)}")
        index = nested[0]
        backbone = model.layers[index]
        pool = backbone.layers[-1]
        if not isinstance(pool, keras.layers.GlobalAveragePooling2D):
            raise NotExplainable(f"{backbone.name} must end in global average pooling for "
                                 f"Grad-CAM, ends in {type(pool).__name__}")
        self.scaling = [layer for layer in model.layers[:index]
                        if not isinstance(layer, keras.layers.InputLayer)]
        self.head = model.layers[index + 1:]
        for layer in self.head:
            if not isinstance(layer, (keras.layers.Dense, keras.layers.Dropout)):
                raise NotExplainable(f"{model.name}: unexpected head layer {layer.name} "
                                     f"({type(layer).__name__})")
        if not isinstance(self.head[-1], keras.layers.Dense) or self.head[-1].units != 1:
            raise NotExplainable(f"{model.name}: the head must end in a one-unit Dense layer")
        self.pool = pool
        # The last convolutional feature map: the input of the backbone's pooling.
        self.features = keras.Model(backbone.inputs, pool.input, name="gradcam_features")
        self.guided_features = keras.models.clone_model(self.features, clone_function=_guided_clone)
        self.feature_layer = self.features.layers[-1].name

    def _scaled(self, images):
        x = images
        for layer in self.scaling:
            x = layer(x)
        return x

    def _logit(self, feature_map, guide: bool):
        """Feature map -> logit through pooling and the head (Dropout is inactive here)."""
        x = self.pool(feature_map)
        for layer in self.head:
            if isinstance(layer, keras.layers.Dropout):
                continue
            x = tf.matmul(x, layer.kernel)
            if layer.use_bias:
                x = x + layer.bias
            if layer is self.head[-1]:
                return x[:, 0]          # the logit: the output's sigmoid is left off
            activation = layer.activation
            x = guided(activation)(x) if guide and _is_rectifier(activation) else activation(x)

    def logit(self, images):
        return self._logit(self.features(self._scaled(images), training=False), guide=False)

    def explain(self, images):
        """[N, S, S, 3] classifier inputs (0-255) -> logit [N], Grad-CAM [N, S, S] (rectified, in
        logit units per cell, bilinearly resized to the input), guided backprop [N, S, S]
        (gradient with respect to the grey level, the three identical channels summed)."""
        with tf.GradientTape() as tape:
            feature_map = self.features(self._scaled(images), training=False)
            tape.watch(feature_map)
            logit = self._logit(feature_map, guide=False)
        # Examples are independent at inference (batch norm uses its moving statistics), so the
        # gradient of the sum gives every example its own gradient.
        gradients = tape.gradient(logit, feature_map)
        channel_weights = tf.reduce_mean(gradients, axis=[1, 2], keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(channel_weights * feature_map, axis=-1, keepdims=True))
        size = tf.shape(images)[1:3]
        cam = tf.image.resize(cam, size, method="bilinear")[..., 0]

        with tf.GradientTape() as tape:
            tape.watch(images)
            guided_logit = self._logit(self.guided_features(self._scaled(images), training=False),
                                       guide=True)
        guided_backprop = tf.reduce_sum(tape.gradient(guided_logit, images), axis=-1)
        return logit, cam, guided_backprop


EXPLAIN = "explain"              # the exported signature's name
GRADCAM = "gradcam"
GUIDED_BACKPROP = "guided_backprop"
LOGIT = "logit"
MODEL_INPUT = "model_input"


def signature(module, box_key: str, qc_key: str):
    """The `explain` signature of a `trainer.export.CardioServingModule`: raw encoded
    radiographs (as serving_default takes them) -> serving_default's outputs, the logit, the
    Grad-CAM and guided-backprop maps on the crop, and the crop itself as the classifier saw it
    (grey level 0-255, [N, S, S]).

    It runs the module's own decode-segment-crop function, so the maps explain exactly what
    serving_default scores."""
    from cardio import features as F
    from cardio.imaging import crop

    image_size = module.image_size
    explainer = Saliency(module.model)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")],
                 autograph=False)
    def explain(image_bytes):
        images, boxes, flags = tf.map_fn(
            module._raw_image, image_bytes,
            fn_output_signature=(tf.TensorSpec([image_size, image_size, 3], tf.float32),
                                 tf.TensorSpec([4], tf.float32),
                                 tf.TensorSpec([len(crop.QC_FLAGS)], tf.bool)))
        logit, cam, guided_backprop = explainer.explain(images)
        # The served (calibrated) probability when the module has a calibration.
        probability = module.calibrated(logit) if hasattr(module, "calibrated") else tf.sigmoid(logit)
        return {F.PROBABILITY: probability,
                F.PREDICTED_LABEL: tf.cast(probability >= module.threshold, tf.int64),
                box_key: boxes, qc_key: tf.cast(flags, tf.int64),
                LOGIT: logit, GRADCAM: cam, GUIDED_BACKPROP: guided_backprop,
                MODEL_INPUT: images[..., 0]}

    return explain.get_concrete_function()
