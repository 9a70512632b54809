"""Submitting the compiled pipeline to Kubeflow Pipelines 2.x: one run, or a recurring run.

Both go through `kfp.Client` with the PipelineSpec YAML that `cardio pipeline compile` writes
beside the PipelineJob, and both send the pipeline root: the spec's compiled default
(`defaultPipelineRoot`) unless the caller overrides it, checked like the compiled one. A recurring run passes no parameters, so each run takes the compiled
defaults: the newest data span (`range_config` empty), the profile's epochs and learning rate.
"""
from __future__ import annotations

import contextlib
import os
import sys

import yaml

DEFAULT_CRON = "0 0 3 * * 1"   # KFP's cron has a seconds field: Mondays at 03:00:00 (UTC)
DEFAULT_EXPERIMENT = "cardio-retraining"


def check_cron(expression: str) -> str:
    """KFP schedules with robfig/cron's six fields (seconds first); a five-field crontab line
    would silently mean something else, so it is refused with the fix."""
    fields = expression.split()
    if len(fields) == 5:
        raise ValueError(f"cron expression {expression!r} has 5 fields; Kubeflow Pipelines "
                         f"expects 6, seconds first: {'0 ' + expression!r}")
    if len(fields) != 6:
        raise ValueError(f"cron expression {expression!r} must have 6 fields "
                         "(second minute hour day-of-month month day-of-week)")
    return expression


def _package(path: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such pipeline package (run `cardio pipeline compile`)")
    if not path.endswith((".yaml", ".yml")):
        raise ValueError(f"{path}: give the PipelineSpec YAML that `cardio pipeline compile` "
                         "writes beside the PipelineJob JSON (kfp.Client uploads YAML)")
    return path


def pipeline_root(package: str, override: str | None = None) -> str:
    """The root a run writes to: `override`, else the compiled spec's default."""
    from cardio.pipeline import kubeflow_runner
    if override is None:
        with open(package) as f:
            override = (yaml.safe_load(f) or {}).get("defaultPipelineRoot")
        if not override:
            raise ValueError(f"{package}: the spec has no defaultPipelineRoot (compiled by an "
                             "older cardio): recompile it or pass --pipeline-root")
    return kubeflow_runner.check_pipeline_root(override)


def client(host: str, namespace: str | None = None):
    """A kfp.Client. In a pod of multi-user Kubeflow it authenticates with the projected service
    account token named by KF_PIPELINES_SA_TOKEN_PATH."""
    import kfp
    return kfp.Client(host=host, namespace=namespace)


def _experiment_id(kfp_client, experiment: str, namespace: str | None) -> str:
    return kfp_client.create_experiment(name=experiment, namespace=namespace).experiment_id


def _quiet():
    """kfp.Client prints links on stdout; stdout carries the command's JSON summary."""
    return contextlib.redirect_stdout(sys.stderr)


def submit(host: str, package: str, experiment: str = DEFAULT_EXPERIMENT,
           namespace: str | None = None, run_name: str | None = None,
           params: dict | None = None, root: str | None = None) -> dict:
    """Starts one run of the compiled pipeline; returns its id, experiment and pipeline root."""
    package = _package(package)
    root = pipeline_root(package, root)
    with _quiet():
        kfp_client = client(host, namespace)
        result = kfp_client.create_run_from_pipeline_package(
            package, arguments=params or {}, run_name=run_name,
            experiment_name=experiment, namespace=namespace, pipeline_root=root)
    return {"run_id": result.run_id, "experiment": experiment, "pipeline_root": root}


def schedule(host: str, package: str, cron: str = DEFAULT_CRON, job_name: str = "cardio-retraining",
             experiment: str = DEFAULT_EXPERIMENT, namespace: str | None = None,
             params: dict | None = None, max_concurrency: int = 1,
             root: str | None = None) -> dict:
    """Creates a recurring run: one run per cron tick, never two at once, no backfill of ticks
    missed while paused (each run reads the newest span anyway)."""
    check_cron(cron)
    package = _package(package)
    root = pipeline_root(package, root)
    with _quiet():
        kfp_client = client(host, namespace)
        recurring = kfp_client.create_recurring_run(
            experiment_id=_experiment_id(kfp_client, experiment, namespace), job_name=job_name,
            cron_expression=cron, pipeline_package_path=package,
            params=params or {}, max_concurrency=max_concurrency, no_catchup=True, enabled=True,
            pipeline_root=root)
    return {"recurring_run_id": recurring.recurring_run_id, "cron": cron,
            "experiment": experiment, "job_name": job_name, "pipeline_root": root}
