"""The tf.distribute strategy for the hardware this Trainer run finds."""
import json
import logging
import os

import tensorflow as tf


def choose_strategy() -> tf.distribute.Strategy:
    """MultiWorkerMirrored when TF_CONFIG names several workers (Kubeflow's training operator and
    Vertex set it), Mirrored over all local GPUs (with mixed precision), else the default."""
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        import tf_keras
        tf_keras.mixed_precision.set_global_policy("mixed_float16")
    if workers > 1:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif gpus:
        strategy = tf.distribute.MirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    logging.info("training with %s over %d replica(s)", type(strategy).__name__,
                 strategy.num_replicas_in_sync)
    return strategy
