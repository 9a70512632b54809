"""Submitting the compiled pipeline to Kubeflow Pipelines 2.x: one run, or a recurring run.

Both go through `kfp.Client` with the PipelineSpec YAML that `cardio pipeline compile` writes
beside the PipelineJob. A recurring run passes no parameters, so each run takes the compiled
defaults: the newest data span (`range_config` empty), the profile's epochs and learning rate.
"""
from __future__ import annotations

import contextlib
import os
import sys

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
           params: dict | None = None) -> dict:
    """Starts one run of the compiled pipeline; returns its id and experiment."""
    package = _package(package)
    with _quiet():
        kfp_client = client(host, namespace)
        result = kfp_client.create_run_from_pipeline_package(
            package, arguments=params or {}, run_name=run_name,
            experiment_name=experiment, namespace=namespace)
    return {"run_id": result.run_id, "experiment": experiment}


def schedule(host: str, package: str, cron: str = DEFAULT_CRON, job_name: str = "cardio-retraining",
             experiment: str = DEFAULT_EXPERIMENT, namespace: str | None = None,
             params: dict | None = None, max_concurrency: int = 1) -> dict:
    """Creates a recurring run: one run per cron tick, never two at once, no backfill of ticks
    missed while paused (each run reads the newest span anyway)."""
    check_cron(cron)
    package = _package(package)
    with _quiet():
        kfp_client = client(host, namespace)
        recurring = kfp_client.create_recurring_run(
            experiment_id=_experiment_id(kfp_client, experiment, namespace), job_name=job_name,
            cron_expression=cron, pipeline_package_path=package,
            params=params or {}, max_concurrency=max_concurrency, no_catchup=True, enabled=True)
    return {"recurring_run_id": recurring.recurring_run_id, "cron": cron,
            "experiment": experiment, "job_name": job_name}
