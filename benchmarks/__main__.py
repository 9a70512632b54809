"""Runs every benchmark (or those named: `python -m benchmarks data`) and prints their tables."""
import sys

from benchmarks import (crop_throughput, data_throughput, serving_grpc, slow_checks,
                        training_throughput)

BENCHMARKS = {"data": data_throughput.main, "crop": crop_throughput.main,
              "training": training_throughput.main, "serving": serving_grpc.main,
              "checks": slow_checks.main}

if __name__ == "__main__":
    for name in sys.argv[1:] or list(BENCHMARKS):
        BENCHMARKS[name]()
