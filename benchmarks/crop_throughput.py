"""Crop stage throughput: the LungCrop component (Beam, in-process runner) against a plain batched
loop doing the same work without Beam: read the split's gzipped TFRecords, run the same compiled
crop function (`cardio.imaging.crop.batch_crop`, serving's crop mapped over a batch) and the same
Example assembly, write gzipped TFRecords. Target: component / loop throughput ratio >= 0.95.
Each side runs in its own process, so each peak memory (ru_maxrss, which only grows) is its own.
One run of each side is noisy on a small shared machine (the ratio moved 0.94-1.06 between three
idle runs), so loop and component run in `--repeats` rounds (default 4), in the order
loop-component, component-loop, ... (so a drift in the machine's speed falls on both), and the
table shows the median time of each and the median and range of the per-round ratios. The eager
loop the component ran before is run once, for reference.

    python -m benchmarks crop [--repeats=N]
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

N = 96
BATCH = 16
REPEATS = 4
OUTPUT_SIZE = 512
SIDES = {"eager": "eager loop (the component's old DoFn)",
         "loop": "compiled batch_crop, plain loop (baseline)",
         "component": "LungCrop component (Beam, in-process)"}


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _count(path: str) -> int:
    import tensorflow as tf
    return sum(1 for _ in tf.data.TFRecordDataset(tf.io.gfile.glob(os.path.join(path, "*")),
                                                  "GZIP"))


def _records(path: str) -> list:
    import tensorflow as tf
    return [r.numpy() for r in tf.data.TFRecordDataset(
        tf.io.gfile.glob(os.path.join(path, "*")), "GZIP")]


def measure(side: str, examples_dir: str, out_dir: str) -> dict:
    """Runs one side on the records in examples_dir/Split-train; returns seconds and peak MiB."""
    import tensorflow as tf

    from cardio import features as F
    from cardio.components import lung_crop
    from cardio.imaging import crop, decode, unet

    if side == "component":   # imported before the clock, as TensorFlow is for the loop
        from apache_beam.runners.portability import fn_api_runner  # noqa: F401
        from tfx.dsl.components.base import base_beam_executor
        from tfx.types import artifact_utils, standard_artifacts

        from cardio.pipeline.configs import FN_API_RUNNER, NO_STAGING
    start = time.perf_counter()
    if side == "component":
        examples, segmenter, output = (standard_artifacts.Examples(), standard_artifacts.Model(),
                                       standard_artifacts.Examples())
        examples.uri, output.uri = examples_dir, out_dir
        examples.split_names = artifact_utils.encode_split_names(["train"])
        segmenter.uri = os.path.dirname(unet.DEFAULT_WEIGHTS)
        context = base_beam_executor.BaseBeamExecutor.Context(
            beam_pipeline_args=[f"--runner={FN_API_RUNNER}", "--direct_running_mode=in_memory",
                                NO_STAGING])
        lung_crop.Executor(context).Do({"examples": [examples], "segmenter": [segmenter]},
                                       {"cropped_examples": [output]},
                                       {"output_size": OUTPUT_SIZE})
    else:
        # The component's work without Beam: read the split, crop, write gzipped TFRecords.
        records = _records(os.path.join(examples_dir, "Split-train"))
        model = unet.load()   # the component loads it too, once per worker
        compiled = crop.batch_crop(model, OUTPUT_SIZE)
        os.makedirs(os.path.join(out_dir, "Split-train"))
        writer = tf.io.TFRecordWriter(os.path.join(out_dir, "Split-train", "data.tfrecord.gz"),
                                      tf.io.TFRecordOptions(compression_type="GZIP"))
        for i in range(0, len(records), BATCH):
            batch = [tf.train.Example.FromString(r) for r in records[i:i + BATCH]]
            encoded = [e.features.feature[F.IMAGE].bytes_list.value[0] for e in batch]
            if side == "loop":
                results = zip(*[t.numpy() for t in compiled(tf.constant(encoded))])
            else:   # eager, image by image, after one batched U-Net call
                images = [decode.decode_radiograph(e) for e in encoded]
                probabilities = model(tf.stack([crop.unet_input(i) for i in images]))[..., 0]
                results = [(tf.io.encode_png(c).numpy(), b.numpy(), f.numpy()) for c, b, f in
                           (crop.crop_from_probability(i, p, OUTPUT_SIZE)
                            for i, p in zip(images, probabilities))]
            for example, result in zip(batch, results):
                writer.write(lung_crop.crop_example(example, *result).SerializeToString())
        writer.close()
    seconds = time.perf_counter() - start
    peak = _peak_mib()   # before counting, which reads every record again
    written, expected = (_count(os.path.join(d, "Split-train")) for d in (out_dir, examples_dir))
    assert written == expected, (side, written, expected)
    return {"seconds": seconds, "peak_mib": peak, "images": written}


def _run_side(side: str, examples: str, out: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "benchmarks.crop_throughput", side, examples, out],
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"crop benchmark: the {side} side failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    import tensorflow as tf

    from cardio.data import convert

    argv = sys.argv[1:] if argv is None else argv
    repeats = next((int(a.split("=", 1)[1]) for a in argv if a.startswith("--repeats=")), REPEATS)
    runs = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory() as tmp:
        convert.write_synthetic(os.path.join(tmp, "data"), N, seed=0, size=None, span=1,
                                external_sites=())
        examples = os.path.join(tmp, "examples")
        os.makedirs(os.path.join(examples, "Split-train"))
        with tf.io.TFRecordWriter(os.path.join(examples, "Split-train", "data.gz"),
                                  tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
            for path in tf.io.gfile.glob(os.path.join(tmp, "data", "span-1", "*", "*.gz")):
                for record in tf.data.TFRecordDataset(path, "GZIP"):
                    writer.write(record.numpy())
        # Each run in a fresh process (its own start-up, its own peak memory); loop and component
        # swap places every round, so a change in the machine's speed falls on both.
        schedule = ["eager"] + [side for i in range(repeats)
                                for side in (("loop", "component"), ("component", "loop"))[i % 2]]
        for i, side in enumerate(schedule):
            print(f"crop benchmark: run {i + 1}/{len(schedule)} ({side})", file=sys.stderr,
                  flush=True)
            runs[side].append(_run_side(side, examples, os.path.join(tmp, f"out-{i}")))

    seconds = {side: statistics.median(r["seconds"] for r in rs) for side, rs in runs.items()}
    paired = [loop["seconds"] / component["seconds"]
              for loop, component in zip(runs["loop"], runs["component"])]
    print(f"\nCrop stage throughput ({os.cpu_count()} cores, {N} radiographs of 1024-1280 px, "
          f"crops {OUTPUT_SIZE} px, batches of {BATCH}; each run in its own process; median of "
          f"{repeats} runs of loop and component in alternating order, eager run once)")
    print(f"{'what':<46}{'images/s':>10}{'ratio':>8}{'peak MiB':>10}")
    for side, label in SIDES.items():
        peak = max(r["peak_mib"] for r in runs[side])
        print(f"{label:<46}{N / seconds[side]:>10.1f}{seconds['loop'] / seconds[side]:>8.2f}"
              f"{peak:>10.0f}")
    print(f"component / loop, per round: median {statistics.median(paired):.2f}, range "
          f"{min(paired):.2f}-{max(paired):.2f} (target >= 0.95)")


if __name__ == "__main__":
    if len(sys.argv) == 4:
        print(json.dumps(measure(*sys.argv[1:])))
    else:
        main()
