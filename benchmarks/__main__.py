"""Runs every benchmark (or those named: `python -m benchmarks data`) and prints their tables."""
import sys

from benchmarks import crop_throughput, data_throughput

BENCHMARKS = {"data": data_throughput.main, "crop": crop_throughput.main}

if __name__ == "__main__":
    for name in sys.argv[1:] or list(BENCHMARKS):
        BENCHMARKS[name]()
