"""GPU training throughput of the study's backbones, mixed precision against float32, for GPU
hosts where the pipeline's TensorFlow cannot be installed.

The pipeline trains with TensorFlow + tf_keras (benchmarks/training_throughput.py measures that,
on a GPU too). A machine without TensorFlow but with JAX can still measure the same
architectures: keras.applications' five backbones with the study's 3-layer MLP head, RMSprop,
in Keras 3 on the JAX backend (XLA-compiled train step). Figures from here describe the
architectures' arithmetic on that GPU, not the TensorFlow trainer's own step time.

    KERAS_BACKEND=jax python -m benchmarks.keras3_gpu [BATCH] [STEPS] [BACKBONES]
"""
from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
import keras  # noqa: E402
import numpy as np  # noqa: E402

BACKBONES = {"efficientnetb2": "EfficientNetB2", "densenet121": "DenseNet121",
             "xception": "Xception", "inceptionv3": "InceptionV3", "mobilenet": "MobileNet"}
IMAGE_SIZE = 224


def build(backbone: str) -> keras.Model:
    """Backbone (average pooled) -> Dense-ReLU -> Dropout -> Dense-ReLU -> Dropout -> sigmoid."""
    base = getattr(keras.applications, BACKBONES[backbone])(
        include_top=False, weights=None, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), pooling="avg")
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    x = base(inputs)
    for units in (256, 128):
        x = keras.layers.Dense(units, activation="relu")(x)
        x = keras.layers.Dropout(0.3)(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", dtype="float32")(x)
    return keras.Model(inputs, outputs)


def images_per_second(backbone: str, policy: str, batch: int, steps: int) -> float:
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.clear_session()
    model = build(backbone)
    model.compile(optimizer=keras.optimizers.RMSprop(1e-3), loss="binary_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
    y = (rng.random(batch) < 0.5).astype("float32")
    for _ in range(3):                     # compile and warm up
        model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(steps):                 # each call returns the loss: the step has finished
        model.train_on_batch(x, y)
    seconds = time.perf_counter() - start
    keras.mixed_precision.set_global_policy("float32")
    return batch * steps / seconds


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    batch = int(argv[0]) if argv else 64
    steps = int(argv[1]) if len(argv) > 1 else 30
    backbones = argv[2].split(",") if len(argv) > 2 else list(BACKBONES)
    device = "CPU"
    if keras.backend.backend() == "jax":
        import jax
        device = str(jax.devices()[0].device_kind)
    print(f"Keras {keras.__version__} ({keras.backend.backend()}) on {device}; {IMAGE_SIZE} px, "
          f"batch {batch}, {steps} timed steps, in-memory batches", flush=True)
    print(f"{'backbone':<16}{'float32 img/s':>15}{'mixed_float16 img/s':>21}{'ratio':>8}", flush=True)
    results = {}
    for backbone in backbones:
        try:
            fp32 = images_per_second(backbone, "float32", batch, steps)
            mixed = images_per_second(backbone, "mixed_float16", batch, steps)
        except Exception as error:   # one backbone's failure should not hide the others' figures
            print(f"{backbone:<16}failed: {type(error).__name__}: {error}", flush=True)
            continue
        results[backbone] = {"float32": round(fp32, 1), "mixed_float16": round(mixed, 1),
                             "ratio": round(mixed / fp32, 2)}
        print(f"{backbone:<16}{fp32:>15.1f}{mixed:>21.1f}{mixed / fp32:>8.2f}", flush=True)
    print(json.dumps({"device": device, "batch": batch, "results": results}))


if __name__ == "__main__":
    main()
