"""Runs every benchmark (or those named: `python -m benchmarks data`) and prints their tables.
`nih` (the real-data pipeline run, about an hour on 2 cores) runs only when named; `nih --no-crop`
runs it without the lung crop."""
import sys

from benchmarks import (crop_throughput, data_throughput, nih_pipeline, serving_grpc,
                        serving_memory, slow_checks, training_throughput)

BENCHMARKS = {"data": data_throughput.main, "crop": crop_throughput.main,
              "training": training_throughput.main, "serving": serving_grpc.main,
              "serving-memory": serving_memory.main,
              "checks": slow_checks.main, "nih": nih_pipeline.main}
NAMED_ONLY = ("nih",)

if __name__ == "__main__":
    names = [a for a in sys.argv[1:] if not a.startswith("--")]   # flags go to the benchmark
    for name in names or [n for n in BENCHMARKS if n not in NAMED_ONLY]:
        BENCHMARKS[name]()
