"""The TFX Trainer's module: model factory, input pipeline, run_fn and the serving export."""
