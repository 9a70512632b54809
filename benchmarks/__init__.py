"""Benchmarks: `./cardio exec python -m benchmarks` runs them all and prints one table each."""
