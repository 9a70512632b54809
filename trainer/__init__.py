"""The TFX Trainer's module: model factory, input pipeline, distribution, run_fn and the serving
export (signatures, warm-up requests).

May import: `cardio.evaluation`, `cardio.data`, `cardio.imaging`, `cardio.features`; never
`cardio.serving` (what both need lives in the core).
"""
