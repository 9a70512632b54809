"""Training throughput per backbone, and what the input pipeline costs.

For each backbone: training images/s with the real input pipeline (tf.data over gzipped
TFRecords of 512 px crops: parallel decode, resize, augmentation of positives, prefetch), and the
ratio of its step time to the step time on the same batches held in memory (target <= 1.05 on a
GPU; on a 2-core CPU, decoding competes with training for the cores). On a GPU it also measures
mixed precision (float16 compute) against float32, and the ratio of their images/s.

Settings (environment variables): CARDIO_BENCH_BACKBONES (comma-separated; default the study's
five), CARDIO_BENCH_IMAGE_SIZE (default 224), CARDIO_BENCH_STEPS (steps per timed run, three
runs of each kind alternating, the fastest kept; default 4 on CPU, 50 on GPU),
CARDIO_BENCH_BATCH (default 16, the study's).
"""
from __future__ import annotations

import os
import tempfile
import time

import tensorflow as tf
import tf_keras as keras

from cardio.data import convert
from cardio.pipeline.configs import STUDY_BACKBONES
from cardio.trainer import data, model as model_lib

CROP_SIZE = 512   # the study profile's stored crop size (components/lung_crop.py)
REPEATS = 3


def _setting(name: str, default):
    value = os.environ.get(f"CARDIO_BENCH_{name}")
    return type(default)(value) if value else default


def _fit_seconds(model, dataset, steps: int) -> float:
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return time.perf_counter() - start


def measure(backbone: str, pattern: str, image_size: int, batch: int, steps: int,
            precision: str = "float32") -> dict:
    """Seconds per step with the input pipeline and with the same batches in memory."""
    keras.mixed_precision.set_global_policy(
        "mixed_float16" if precision == "mixed_float16" else "float32")
    keras.backend.clear_session()
    model = model_lib.build_model(backbone, image_size, "random")
    model.compile(optimizer=keras.optimizers.RMSprop(1e-3), loss="binary_crossentropy")
    pipeline = data.make_dataset(pattern, batch, image_size, training=True, seed=0)
    in_memory = pipeline.take(4).cache().repeat()
    # Warm-up: traces the train step, fills the cache and the pipeline's prefetch buffers.
    _fit_seconds(model, in_memory, 4)
    _fit_seconds(model, pipeline, 2)
    # Alternating repeats, the fastest of each kept: other load on the machine only slows a run.
    memory_seconds = pipeline_seconds = float("inf")
    for _ in range(REPEATS):
        memory_seconds = min(memory_seconds, _fit_seconds(model, in_memory, steps))
        pipeline_seconds = min(pipeline_seconds, _fit_seconds(model, pipeline, steps))
    keras.mixed_precision.set_global_policy("float32")
    return {"images_per_second": batch * steps / pipeline_seconds,
            "pipeline_ratio": pipeline_seconds / memory_seconds}


def main():
    gpu = bool(tf.config.list_physical_devices("GPU"))
    backbones = _setting("BACKBONES", ",".join(STUDY_BACKBONES)).split(",")
    image_size = _setting("IMAGE_SIZE", 224)
    batch = _setting("BATCH", 16)
    steps = _setting("STEPS", 50 if gpu else 4)
    precisions = ["float32", "mixed_float16"] if gpu else ["float32"]
    with tempfile.TemporaryDirectory() as tmp:
        convert.write_synthetic(tmp, 96, seed=0, size=CROP_SIZE, span=1, external_sites=())
        pattern = os.path.join(tmp, "span-1", "train", "*")
        results = {(b, p): measure(b, pattern, image_size, batch, steps, p)
                   for b in backbones for p in precisions}

    device = tf.config.experimental.get_device_details(
        tf.config.list_physical_devices("GPU")[0]).get("device_name", "GPU") if gpu else \
        f"CPU, {os.cpu_count()} cores"
    print(f"\nTraining throughput ({device}; {image_size} px, batch {batch}, best of {REPEATS} runs "
          f"of {steps} steps, random initialisation)")
    header = f"{'backbone':<16}{'precision':<15}{'images/s':>10}{'pipeline/in-memory':>20}"
    if gpu:
        header += f"{'mixed/float32':>15}"
    print(header)
    for b in backbones:
        for p in precisions:
            r = results[(b, p)]
            line = f"{b:<16}{p:<15}{r['images_per_second']:>10.1f}{r['pipeline_ratio']:>20.2f}"
            if gpu and p == "mixed_float16":
                speedup = r["images_per_second"] / results[(b, "float32")]["images_per_second"]
                line += f"{speedup:>15.2f}"
            print(line)


if __name__ == "__main__":
    main()
