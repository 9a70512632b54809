"""Runs the pipeline on this machine: LocalDagRunner, SQLite MLMD, Beam's in-process FnApiRunner."""
from __future__ import annotations

import contextlib
import logging
import os
import time

from tfx.orchestration import metadata
from tfx.orchestration.local.local_dag_runner import LocalDagRunner

from cardio import features as F, schemas
from cardio.pipeline.configs import PipelineConfig
from cardio.pipeline.pipeline import create_pipeline


def metadata_path(pipeline_root: str) -> str:
    return os.path.join(pipeline_root, "metadata.sqlite")


def run(config: PipelineConfig, data_root: str, pipeline_root: str, serving_root: str):
    os.makedirs(pipeline_root, exist_ok=True)
    schema_file = schemas.render(config.sites, os.path.join(pipeline_root, "schema", "schema.pbtxt"),
                                 views=config.views)
    pipeline = create_pipeline(
        config, data_root=data_root, pipeline_root=pipeline_root, serving_root=serving_root,
        schema_file=schema_file,
        metadata_connection_config=metadata.sqlite_metadata_connection_config(
            metadata_path(pipeline_root)))
    with component_progress(len(pipeline.components)):
        LocalDagRunner().run(pipeline)


@contextlib.contextmanager
def component_progress(total: int):
    """Progress on stderr: LocalDagRunner's 'Component X is running/finished' lines (absl INFO),
    numbered and timed, the progress lines of long stages (records logged with
    `extra={features.PROGRESS: True}`), and of everything else only what the caller's level
    showed before (warnings with --verbose, errors by default)."""
    from absl import logging as absl_logging

    started, done = time.time(), [0]
    logger = logging.getLogger("absl")
    shown_from = logger.getEffectiveLevel()

    def keep(record: logging.LogRecord) -> bool:
        if getattr(record, F.PROGRESS, False):
            return True
        if record.msg in ("Component %s is running.", "Component %s is finished."):
            finished = record.msg.endswith("finished.")
            done[0] += finished
            record.msg = (f"[{done[0]}/{total} done, {time.time() - started:.0f} s] "
                          f"{record.args[0]} {'finished' if finished else 'running'}")
            record.args = ()
            return True
        return record.levelno >= shown_from

    handlers = logger.handlers or logging.getLogger().handlers
    for handler in handlers:
        handler.addFilter(keep)
    # absl's verbosity, not only the logger's level: TensorFlow's SavedModel export saves and
    # restores absl's verbosity, which would otherwise silence these lines after a Trainer.
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.INFO)
    try:
        yield
    finally:
        absl_logging.set_verbosity(verbosity)
        for handler in handlers:
            handler.removeFilter(keep)
