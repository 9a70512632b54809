"""Runs every benchmark (or those named: `python -m benchmarks data`) and prints their tables."""
import sys

from benchmarks import data_throughput

BENCHMARKS = {"data": data_throughput.main}

if __name__ == "__main__":
    for name in sys.argv[1:] or list(BENCHMARKS):
        BENCHMARKS[name]()
