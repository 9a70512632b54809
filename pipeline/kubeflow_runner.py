"""Compiles the same pipeline definition for Kubeflow Pipelines 2.x (KubeflowV2DagRunner)."""
from __future__ import annotations

import os

from tfx import v1 as tfx

import schemas

from pipeline.configs import PipelineConfig
from pipeline.pipeline import create_pipeline

DEFAULT_IMAGE = "ghcr.io/cardio-pipeline/cardio:0.1.0"


def schema_uri(pipeline_root: str) -> str:
    """Where the compiled pipeline reads its schema; `compile_pipeline` writes a copy to upload."""
    return f"{pipeline_root.rstrip('/')}/schema/schema.pbtxt"


def compile_pipeline(config: PipelineConfig, output_file: str, data_root: str, pipeline_root: str,
                     serving_root: str, image: str = DEFAULT_IMAGE) -> str:
    """Writes a PipelineJob JSON for Kubeflow Pipelines 2.x (or Vertex Pipelines), and beside it
    `schema.pbtxt` with the configured sites, to upload to `schema_uri(pipeline_root)`."""
    schemas.render(config.sites, os.path.join(os.path.dirname(output_file), "schema.pbtxt"))
    pipeline = create_pipeline(config, data_root=data_root, pipeline_root=pipeline_root,
                               serving_root=serving_root, schema_file=schema_uri(pipeline_root))
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image),
        output_filename=output_file)
    runner.run(pipeline, write_out=True)
    return output_file
