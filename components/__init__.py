"""The pipeline's TFX components and executors: one module each for those that carry project
logic (lung crop, anomaly gate, trainer and TFJob trainer, evaluator and gate, baseline lookup,
model comparison, model card, Pusher).

May import: `cardio.trainer`, `cardio.serving` and the core below them; never `cardio.pipeline`.
"""
