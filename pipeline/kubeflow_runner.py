"""Compiles the same pipeline definition for Kubeflow Pipelines 2.x (KubeflowV2DagRunner)."""
from __future__ import annotations

from tfx import v1 as tfx

from pipeline.configs import PipelineConfig
from pipeline.pipeline import create_pipeline

DEFAULT_IMAGE = "ghcr.io/cardio-pipeline/cardio:0.1.0"


def compile_pipeline(config: PipelineConfig, output_file: str, data_root: str, pipeline_root: str,
                     serving_root: str, image: str = DEFAULT_IMAGE) -> str:
    """Writes a PipelineJob JSON for Kubeflow Pipelines 2.x (or Vertex Pipelines); returns its path."""
    pipeline = create_pipeline(config, data_root=data_root, pipeline_root=pipeline_root,
                               serving_root=serving_root)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image),
        output_filename=output_file)
    runner.run(pipeline, write_out=True)
    return output_file
