"""run_fn: the TFX Trainer entry point (`run_fn="cardio.trainer.task.run_fn"`).

Trains one grid cell (backbone x class weighting) with the study's recipe, chooses the
operating threshold on validation and exports the serving SavedModel.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile

import numpy as np
import tensorflow as tf
import tf_keras as keras

from cardio.evaluation import calibration as calibration_metrics, statistics as S
from cardio.trainer import (calibration, data, distribution, export, model as model_lib,
                            operating_point)

# Class weights of the study's two strategies: {label: weight}.
CLASS_WEIGHTINGS = {"75-25": {0: 0.25, 1: 0.75}, "50-50": {0: 0.5, 1: 0.5}}
# Inside the ModelRun artifact: the in-memory model as trained, in the Keras format (config and
# weights; a SavedModel traced every layer's call functions, minutes for DenseNet121).
KERAS_MODEL_FILE = "keras_model.keras"


@dataclasses.dataclass
class TrainingConfig:
    """The study's recipe as defaults; the pipeline passes overrides as the Trainer's custom_config."""
    backbone: str = "efficientnetb2"
    weighting: str = "75-25"
    image_size: int = 224
    weights: str | None = None            # ImageNet weights file or cache dir; "random" to opt out
    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 1e-3
    lr_factor: float = 0.5                # ReduceLROnPlateau on validation loss
    lr_patience: int = 5
    augment_positives: bool = True        # the study's augmentation, cardiomegaly images only
    positive_copies: int = 1              # augmented copies added per cardiomegaly image and epoch
    mixed_precision: bool = True          # float16 compute on GPUs
    steps_per_epoch: int | None = None    # None: one pass over the training split
    target_sensitivity: float = 0.9
    # Fewer validation positives: calibration and the operating threshold are refused, and the
    # gate fails the model naming why (trainer/calibration.py).
    min_validation_positives: int = 10
    seed: int = 0
    deterministic: bool = True            # same examples + config + seed -> the same model
    segmenter_weights: str | None = None  # the U-Net the crop stage used; None: no crop stage
    crop_size: int = 512                  # side of the stored crops (see components/lung_crop.py)
    # A split read every epoch is decoded once and kept in memory when it takes no more than
    # this decoded (trainer.data.decoded_bytes); a larger one is decoded again every epoch.
    decoded_cache_bytes: int = 1 << 30

    @classmethod
    def from_custom_config(cls, custom_config: dict | None) -> "TrainingConfig":
        config = dict(custom_config or {})
        unknown = set(config) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown training option(s): {sorted(unknown)}")
        result = cls(**config)
        if result.weighting not in CLASS_WEIGHTINGS:
            raise ValueError(f"weighting must be one of {sorted(CLASS_WEIGHTINGS)}, "
                             f"got {result.weighting!r}")
        return result


def save_keras_model(model, path: str) -> None:
    """model.save in the Keras format, which writes local files only: via a local copy when
    `path` is in a bucket (gs://)."""
    with tempfile.TemporaryDirectory() as local:
        model.save(os.path.join(local, KERAS_MODEL_FILE))
        tf.io.gfile.copy(os.path.join(local, KERAS_MODEL_FILE), path, overwrite=True)


def count_examples(file_patterns) -> int:
    ds = tf.data.TFRecordDataset(data.list_files(file_patterns), compression_type="GZIP")
    return int(ds.reduce(np.int64(0), lambda n, _: n + 1))


def count_positives(file_patterns) -> int:
    ds = tf.data.TFRecordDataset(data.list_files(file_patterns), compression_type="GZIP").map(
        lambda raw: tf.io.parse_single_example(raw, {data.F.LABEL: data.FEATURE_SPEC[data.F.LABEL]})
        [data.F.LABEL])
    return int(ds.reduce(np.int64(0), lambda n, label: n + label))


def predict(model, file_patterns, config: TrainingConfig):
    """(labels, logits): the network's pre-sigmoid output, which does not saturate."""
    logit = export.logit_function(model)
    ds = data.make_dataset(file_patterns, config.batch_size, config.image_size, training=False,
                           deterministic=config.deterministic)
    labels, logits = [], []
    for images, batch_labels in ds:
        logits.append(logit(images).numpy().reshape(-1))
        labels.append(batch_labels.numpy())
    return np.concatenate(labels), np.concatenate(logits)


def backup_dir(fn_args, config: TrainingConfig) -> str:
    """Where BackupAndRestore checkpoints every epoch. TFX gives each execution a new output
    directory, so the key is the grid cell plus a hash of its inputs and configuration: a rerun
    of a killed training finds its checkpoint; new data or settings start afresh."""
    key = hashlib.sha256(json.dumps({
        "train": data.list_files(fn_args.train_files), "eval": data.list_files(fn_args.eval_files),
        "config": dataclasses.asdict(config)}, sort_keys=True).encode()).hexdigest()[:16]
    cell_dir = os.path.dirname(os.path.dirname(fn_args.model_run_dir.rstrip("/")))
    return os.path.join(cell_dir, "backup", key)


def run_fn(fn_args):
    train_and_export(fn_args)


def train_and_export(fn_args):
    """Trains, chooses the operating threshold, exports; returns the trained Keras model.

    Under MultiWorkerMirroredStrategy every worker runs all of this (the saves are collective),
    the chief into the Trainer's directories and the others into temporary ones."""
    config = TrainingConfig.from_custom_config(fn_args.custom_config)
    logging.info("training config: %s", config)
    # Weight initialisation, dropout and the head's shuffles draw from the seeded generators.
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        # TensorFlow's deterministic kernels (GPU reductions, cuDNN algorithm choice).
        tf.config.experimental.enable_op_determinism()

    strategy = distribution.choose_strategy(config.mixed_precision)
    chief = distribution.is_chief(strategy)
    with strategy.scope():
        model = model_lib.build_model(config.backbone, config.image_size, config.weights)
        model.compile(optimizer=keras.optimizers.RMSprop(config.learning_rate),
                      loss=keras.losses.BinaryCrossentropy(),
                      metrics=[keras.metrics.AUC(name="auc", thresholds=S.AUC_THRESHOLDS)])

    n_train = count_examples(fn_args.train_files)
    # An epoch is one pass over the training split plus the positives' augmented copies.
    copies = (config.positive_copies * count_positives(fn_args.train_files)
              if config.augment_positives else 0)
    steps_per_epoch = config.steps_per_epoch or math.ceil((n_train + copies) / config.batch_size)
    n_validation = count_examples(fn_args.eval_files)
    cache = (data.decoded_bytes(n_train + n_validation, config.image_size)
             <= config.decoded_cache_bytes)
    logging.info("%d training and %d validation images %s", n_train, n_validation,
                 "decoded once, kept in memory" if cache else "decoded every epoch (too many "
                 "to keep decoded: decoded_cache_bytes)")
    # The global batch is split across replicas, so each step sees `batch_size` images in all.
    train_ds = data.make_dataset(fn_args.train_files, config.batch_size, config.image_size,
                                 training=True, deterministic=config.deterministic, seed=config.seed,
                                 augment_positives=config.augment_positives,
                                 positive_copies=config.positive_copies,
                                 workers=distribution.cluster_workers(), cache_decoded=cache)
    # Split across replicas, a short last batch can leave a replica an empty batch, which some
    # CPU kernels reject; validation loss (for the LR schedule) does without it. The operating
    # threshold below still scores every validation image.
    val_ds = data.make_dataset(fn_args.eval_files, config.batch_size, config.image_size,
                               training=False, deterministic=config.deterministic,
                               drop_remainder=strategy.num_replicas_in_sync > 1,
                               workers=distribution.cluster_workers(), cache_decoded=cache)
    backup = backup_dir(fn_args, config)
    logging.info("epoch checkpoints (resumed from when present): %s", backup)
    callbacks = [
        keras.callbacks.BackupAndRestore(backup),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=config.lr_factor,
                                          patience=config.lr_patience),
        keras.callbacks.TensorBoard(log_dir=os.path.join(fn_args.model_run_dir, "logs")),
    ]
    history = model.fit(train_ds, epochs=config.epochs, steps_per_epoch=steps_per_epoch,
                        validation_data=val_ds, class_weight=CLASS_WEIGHTINGS[config.weighting],
                        callbacks=callbacks, verbose=2)

    # Platt scaling on validation; the operating threshold is chosen on the calibrated probability.
    labels, logits = predict(model, fn_args.eval_files, config)
    platt, calibrated = calibration.calibrate(labels, logits, config.min_validation_positives)
    probabilities = platt(logits)
    threshold = operating_point.choose_threshold(labels, probabilities, config.target_sensitivity)
    calibrated.update(validation_before=calibration_metrics.summary(
                          labels, calibration.Platt()(logits)),
                      validation_after=calibration_metrics.summary(labels, probabilities))
    for reason in calibrated["refused"]:
        logging.warning("calibration and operating threshold refused; the gate will fail this "
                        "model: %s", reason)
    logging.info("Platt scaling a=%.4f b=%.4f; operating threshold %.4f for validation "
                 "sensitivity >= %.2f; %s", platt.a, platt.b, threshold,
                 config.target_sensitivity, calibrated)

    unet, metadata = None, {"backbone": config.backbone, "weighting": config.weighting,
                            "calibration": calibrated}
    heart_unet = None
    if config.segmenter_weights:
        from cardio.imaging import HEART_UNET_WEIGHTS_FILE
        from cardio.imaging import unet as unet_lib
        unet = unet_lib.load(config.segmenter_weights)
        # The segmenter's licence (non-commercial for the shipped U-Net) binds this model too.
        metadata["segmenter"] = unet_lib.card_metadata(config.segmenter_weights)
        # A heart U-Net beside the lung U-Net (the shipped segmenter directory has one) adds the
        # cardiothoracic ratio to serving_default (cardio.imaging.ctr); without one, no CTR.
        heart_weights = os.path.join(os.path.dirname(config.segmenter_weights),
                                       HEART_UNET_WEIGHTS_FILE)
        if tf.io.gfile.exists(heart_weights):
            heart_unet = unet_lib.load(heart_weights, target="heart")
            metadata["heart_segmenter"] = unet_lib.card_metadata(heart_weights)
        else:
            logging.info("no %s beside the segmenter: the export serves no CTR", heart_weights)
    # Signatures that read distributed (sync-on-read) variables cannot be saved: the export
    # holds a copy of the trained weights outside the strategy.
    serving_model = model
    if strategy.num_replicas_in_sync > 1 or distribution.cluster_workers() > 1:
        serving_model = model_lib.build_model(config.backbone, config.image_size, "random")
        serving_model.set_weights(model.get_weights())
    with distribution.save_dir(fn_args.serving_model_dir, chief) as serving_dir:
        export.export(serving_model, serving_dir, config.image_size, threshold, unet,
                      config.crop_size, metadata, platt=platt, heart_unet=heart_unet)
    with distribution.save_dir(fn_args.model_run_dir, chief) as run_dir:
        tf.io.gfile.makedirs(run_dir)
        save_keras_model(model, os.path.join(run_dir, KERAS_MODEL_FILE))
        with tf.io.gfile.GFile(os.path.join(run_dir, "training_summary.json"), "w") as f:
            json.dump({"config": dataclasses.asdict(config), "train_examples": n_train,
                       "steps_per_epoch": steps_per_epoch, "operating_threshold": threshold,
                       "calibration": calibrated, "strategy": distribution.strategy_name(strategy),
                       "replicas": strategy.num_replicas_in_sync,
                       "epochs_run": [int(e) for e in history.epoch],
                       "history": {k: [float(v) for v in vs] for k, vs in history.history.items()}},
                      f, indent=2)
    return model
