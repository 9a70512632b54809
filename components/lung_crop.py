"""LungCrop: a Beam-based TFX component that crops every radiograph to its chest cavity.

Between ExampleGen and the Trainer. For every split of the input Examples it runs the lung U-Net
in batches (the model loaded once per worker, in DoFn.setup), computes the lung box and QC flags
(cardio.imaging.crop: serving's own crop function, compiled once per worker for the batch), and
writes Examples whose image is the crop resized for the classifier (16-bit PNG), with every
original feature kept and `crop_box` and `crop_qc` added. The U-Net weights are an input
artifact, so MLMD lineage records which U-Net produced each cropped dataset. It runs on whatever
Beam runner the pipeline's beam_pipeline_args name (in-process by default; multi-process,
portable or Dataflow/Flink).
"""
from __future__ import annotations

import concurrent.futures
import os
import time

import apache_beam as beam
from apache_beam.utils.windowed_value import WindowedValue
from absl import logging
import numpy as np
import tensorflow as tf
from tfx import types
from tfx.components.util import tfxio_utils  # noqa: F401  (keeps TFX's Beam registrations)
from tfx.dsl.components.base import base_beam_component, base_beam_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from cardio import features as F
from cardio.imaging import UNET_WEIGHTS_FILE, crop


PROGRESS_EVERY = 500   # radiographs between progress lines


class CropDoFn(beam.DoFn):
    """Crops batches of serialized Examples with one batch in flight: while the compiled crop runs
    on a background thread (TensorFlow releases the GIL), Beam reads the next batch and this
    thread writes out the previous one, so Beam's reads and writes overlap the crop instead of
    adding to it. Outputs keep their batch's window and timestamp, in input order; a bundle's last
    batch is emitted in finish_bundle, so every bundle ends with all its examples written."""

    def __init__(self, weights_path: str, output_size: int):
        self._weights_path = weights_path
        self._output_size = output_size
        self._crop = None
        self._flagged = beam.metrics.Metrics.counter("LungCrop", "flagged")
        self._cropped = beam.metrics.Metrics.counter("LungCrop", "cropped")

    def setup(self):
        from cardio.imaging import unet
        self._crop = crop.batch_crop(unet.load(self._weights_path), self._output_size)
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="LungCrop")
        self._done, self._flags, self._started = 0, 0, time.monotonic()

    def start_bundle(self):
        self._in_flight = None   # (examples, window, timestamp, future of the crop results)

    def process(self, batch, window=beam.DoFn.WindowParam, timestamp=beam.DoFn.TimestampParam):
        examples = [tf.train.Example.FromString(raw) for raw in batch]
        previous, self._in_flight = self._in_flight, (
            examples, window, timestamp, self._worker.submit(self._crop_batch, examples))
        if previous:
            yield from self._emit(*previous)

    def finish_bundle(self):
        if self._in_flight:
            previous, self._in_flight = self._in_flight, None
            yield from self._emit(*previous)

    def teardown(self):
        if getattr(self, "_worker", None):
            self._worker.shutdown(cancel_futures=True)

    def _crop_batch(self, examples):
        encoded = tf.constant([e.features.feature[F.IMAGE].bytes_list.value[0] for e in examples])
        return [t.numpy() for t in self._crop(encoded)]

    def _emit(self, examples, window, timestamp, future):
        try:
            pngs, boxes, flags = future.result()   # the crop's error, raised in Beam's thread
        except tf.errors.OpError as error:
            ids = [b"".join(e.features.feature[F.IMAGE_ID].bytes_list.value).decode() or "?"
                   for e in examples]
            raise ValueError(f"LungCrop: cannot crop the batch of image ids {ids}: "
                             f"{error.message}") from error
        for example, png, box, raised in zip(examples, pngs, boxes, flags):
            # Map entries in key order: the same crop gives the same bytes in every run.
            yield WindowedValue(crop_example(example, png, box, raised).SerializeToString(
                deterministic=True),
                                timestamp, (window,))
            self._cropped.inc()
            if raised.any():
                self._flagged.inc()
                self._flags += 1
        # Progress on a long stage; each worker reports its own share.
        before, self._done = self._done, self._done + len(examples)
        if self._done // PROGRESS_EVERY > before // PROGRESS_EVERY:
            logging.info("LungCrop: %d radiographs cropped by this worker (%d flagged), %.1f/s",
                         self._done, self._flags, self._done / (time.monotonic() - self._started),
                         extra={F.PROGRESS: True})


def crop_example(example, png: bytes, box, flags):
    """The original example with the cropped image (an encoded PNG), the box and the raised QC
    flags."""
    out = tf.train.Example()
    out.CopyFrom(example)
    feature = out.features.feature
    feature[F.IMAGE].bytes_list.value[:] = [png]
    feature[F.CROP_BOX].float_list.value[:] = np.asarray(box, np.float32).tolist()
    raised = [name.encode() for name, on in zip(crop.QC_FLAGS, np.asarray(flags)) if on]
    feature[F.CROP_QC].bytes_list.value[:] = raised
    for mask in (F.LUNG_MASK, F.HEART_MASK):   # ground truth of the uncropped image
        if mask in feature:
            del feature[mask]
    return out


class LungCropSpec(types.ComponentSpec):
    PARAMETERS = {"output_size": ExecutionParameter(type=int)}
    INPUTS = {"examples": ChannelParameter(type=standard_artifacts.Examples),
              "segmenter": ChannelParameter(type=standard_artifacts.Model)}
    OUTPUTS = {"cropped_examples": ChannelParameter(type=standard_artifacts.Examples)}


class Executor(base_beam_executor.BaseBeamExecutor):
    def Do(self, input_dict, output_dict, exec_properties):
        examples = artifact_utils.get_single_instance(input_dict["examples"])
        segmenter = artifact_utils.get_single_instance(input_dict["segmenter"])
        output = artifact_utils.get_single_instance(output_dict["cropped_examples"])
        splits = artifact_utils.decode_split_names(examples.split_names)
        output.split_names = artifact_utils.encode_split_names(splits)
        weights = os.path.join(segmenter.uri, UNET_WEIGHTS_FILE)
        with self._make_beam_pipeline() as pipeline:
            for split in splits:
                pattern = os.path.join(artifact_utils.get_split_uri([examples], split), "*")
                destination = os.path.join(artifact_utils.get_split_uri([output], split), "data")
                _ = (pipeline
                     | f"Read[{split}]" >> beam.io.ReadFromTFRecord(
                         pattern, coder=beam.coders.BytesCoder())
                     | f"Batch[{split}]" >> beam.BatchElements(min_batch_size=16, max_batch_size=16)
                     | f"Crop[{split}]" >> beam.ParDo(CropDoFn(weights,
                                                               exec_properties["output_size"]))
                     | f"Write[{split}]" >> beam.io.WriteToTFRecord(
                         destination, file_name_suffix=".tfrecord.gz",
                         coder=beam.coders.BytesCoder()))


class LungCrop(base_beam_component.BaseBeamComponent):
    SPEC_CLASS = LungCropSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, examples, segmenter, output_size: int = 512):
        super().__init__(spec=LungCropSpec(examples=examples, segmenter=segmenter,
                                           output_size=output_size,
                                           cropped_examples=types.Channel(
                                               type=standard_artifacts.Examples)))
