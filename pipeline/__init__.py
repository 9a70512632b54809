"""Pipeline definition (`pipeline.create_pipeline`), its configuration and the runners."""
