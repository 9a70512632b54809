"""Crop stage throughput: the LungCrop component (Beam, in-process runner) against the same
decode -> segment -> crop -> encode functions in a plain batched loop, on the same images in the
same process. Target: component / loop throughput ratio >= 0.8. Also the process's peak memory.
"""
from __future__ import annotations

import os
import resource
import tempfile
import time

import tensorflow as tf
from tfx.dsl.components.base import base_beam_executor
from tfx.types import artifact_utils, standard_artifacts

from cardio import features as F
from cardio.components import lung_crop
from cardio.data import convert
from cardio.imaging import crop, decode, unet
from cardio.pipeline.configs import FN_API_RUNNER

N = 96
OUTPUT_SIZE = 512


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    with tempfile.TemporaryDirectory() as tmp:
        convert.write_synthetic(os.path.join(tmp, "data"), N, seed=0, size=None, span=1,
                                external_sites=())
        examples = standard_artifacts.Examples()
        examples.uri = os.path.join(tmp, "examples")
        os.makedirs(os.path.join(examples.uri, "Split-train"))
        records = [r.numpy() for r in tf.data.TFRecordDataset(
            tf.io.gfile.glob(os.path.join(tmp, "data", "span-1", "*", "*.gz")), "GZIP")]
        with tf.io.TFRecordWriter(os.path.join(examples.uri, "Split-train", "data.gz"),
                                  tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
            for record in records:
                writer.write(record)
        examples.split_names = artifact_utils.encode_split_names(["train"])
        segmenter = standard_artifacts.Model()
        segmenter.uri = os.path.dirname(unet.DEFAULT_WEIGHTS)
        output = standard_artifacts.Examples()
        output.uri = os.path.join(tmp, "cropped")

        start = time.perf_counter()
        model = unet.load()   # the component loads it too, once per worker
        for i in range(0, len(records), 16):
            batch = [tf.train.Example.FromString(r) for r in records[i:i + 16]]
            images = [decode.decode_radiograph(e.features.feature[F.IMAGE].bytes_list.value[0])
                      for e in batch]
            for example, result in zip(batch, crop.crop_radiographs(model, images, OUTPUT_SIZE)):
                lung_crop.crop_example(example, *result).SerializeToString()
        loop_seconds = time.perf_counter() - start
        loop_peak = _peak_mib()

        context = base_beam_executor.BaseBeamExecutor.Context(
            beam_pipeline_args=[f"--runner={FN_API_RUNNER}", "--direct_running_mode=in_memory"])
        start = time.perf_counter()
        lung_crop.Executor(context).Do({"examples": [examples], "segmenter": [segmenter]},
                                       {"cropped_examples": [output]},
                                       {"output_size": OUTPUT_SIZE})
        component_seconds = time.perf_counter() - start
        written = sum(1 for _ in tf.data.TFRecordDataset(
            tf.io.gfile.glob(os.path.join(output.uri, "Split-train", "*")), "GZIP"))
        assert written == len(records), (written, len(records))

    print(f"\nCrop stage throughput ({os.cpu_count()} cores, {N} radiographs of 1024-1280 px, "
          f"crops {OUTPUT_SIZE} px)")
    print(f"{'what':<44}{'images/s':>10}{'ratio':>8}{'peak MiB':>10}")
    print(f"{'plain batched loop (baseline)':<44}{N / loop_seconds:>10.1f}{1.0:>8.2f}"
          f"{loop_peak:>10.0f}")
    print(f"{'LungCrop component (Beam, in-process)':<44}{N / component_seconds:>10.1f}"
          f"{loop_seconds / component_seconds:>8.2f}{_peak_mib():>10.0f}")


if __name__ == "__main__":
    main()
