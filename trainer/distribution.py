"""The tf.distribute strategy for the hardware this Trainer run finds, and where each worker saves.

Under MultiWorkerMirroredStrategy every worker must take part in each save (reading batch-norm
statistics and other sync-on-read variables is a collective op), but only the chief's files are
the model: the other workers save to temporary directories that are deleted afterwards.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile

import tensorflow as tf


def cluster_workers() -> int:
    """How many training processes TF_CONFIG names (Kubeflow's TFJob and Vertex set it)."""
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def choose_strategy(mixed_precision: bool = True) -> tf.distribute.Strategy:
    """MultiWorkerMirrored when TF_CONFIG names several workers; Mirrored over all local GPUs
    (with mixed precision) or over several logical CPU devices (which only a deliberate
    `tf.config.set_logical_device_configuration` creates, as the tests do); else the default."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus and mixed_precision:
        import tf_keras
        tf_keras.mixed_precision.set_global_policy("mixed_float16")
    if cluster_workers() > 1:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif gpus:
        strategy = tf.distribute.MirroredStrategy()
    elif len(tf.config.list_logical_devices("CPU")) > 1:
        strategy = tf.distribute.MirroredStrategy(
            [device.name for device in tf.config.list_logical_devices("CPU")])
    else:
        strategy = tf.distribute.get_strategy()
    logging.info("training with %s over %d replica(s)", strategy_name(strategy),
                 strategy.num_replicas_in_sync)
    return strategy


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """The public name (MultiWorkerMirroredStrategy's class is CollectiveAllReduceStrategy)."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "MultiWorkerMirroredStrategy"
    return type(strategy).__name__


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """The chief: the `chief` task, or worker 0 when the cluster has no chief; any
    single-process strategy is its own chief."""
    resolver = strategy.cluster_resolver
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


@contextlib.contextmanager
def save_dir(path: str, chief: bool):
    """Yields `path` on the chief, a temporary directory (removed afterwards) on other workers."""
    if chief:
        yield path
        return
    scratch = tempfile.mkdtemp(prefix="cardio-nonchief-save-")
    try:
        yield os.path.join(scratch, os.path.basename(path.rstrip("/")) or "save")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
