"""Runs the pipeline on this machine: LocalDagRunner, SQLite MLMD, Beam's in-process FnApiRunner."""
from __future__ import annotations

import os

from tfx import v1 as tfx

from cardio import schemas
from cardio.pipeline.configs import PipelineConfig
from cardio.pipeline.pipeline import create_pipeline


def metadata_path(pipeline_root: str) -> str:
    return os.path.join(pipeline_root, "metadata.sqlite")


def run(config: PipelineConfig, data_root: str, pipeline_root: str, serving_root: str):
    os.makedirs(pipeline_root, exist_ok=True)
    schema_file = schemas.render(config.sites, os.path.join(pipeline_root, "schema", "schema.pbtxt"))
    pipeline = create_pipeline(
        config, data_root=data_root, pipeline_root=pipeline_root, serving_root=serving_root,
        schema_file=schema_file,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            metadata_path(pipeline_root)))
    tfx.orchestration.LocalDagRunner().run(pipeline)
