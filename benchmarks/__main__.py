"""Runs every benchmark (or those named: `python -m benchmarks data`) and prints their tables.
`nih` (the real-data pipeline run, about an hour on 2 cores) and `newcomer` (set-up, demo and
suite from a new user's side; run it on the host with `python3 -m benchmarks newcomer`) run only
when named; `nih --no-crop` runs it without the lung crop. Modules are imported when run, so
`newcomer` needs nothing but the standard library."""
import importlib
import sys

BENCHMARKS = {"data": "data_throughput", "crop": "crop_throughput",
              "training": "training_throughput", "serving": "serving_grpc",
              "serving-memory": "serving_memory", "checks": "slow_checks", "nih": "nih_pipeline",
              "ctr": "ctr_agreement",
              "newcomer": "newcomer"}
NAMED_ONLY = ("nih", "newcomer")

if __name__ == "__main__":
    names = [a for a in sys.argv[1:] if not a.startswith("--")]   # flags go to the benchmark
    for name in names or [n for n in BENCHMARKS if n not in NAMED_ONLY]:
        importlib.import_module(f"benchmarks.{BENCHMARKS[name]}").main()
