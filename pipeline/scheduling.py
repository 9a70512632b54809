"""Submitting the compiled pipeline to Kubeflow Pipelines 2.x: one run, or a recurring run.

Both go through `kfp.Client` with the PipelineSpec YAML that `cardio pipeline compile` writes
beside the PipelineJob, and both send the pipeline root: the spec's compiled default
(`defaultPipelineRoot`) unless the caller overrides it, checked like the compiled one. A recurring run passes no parameters, so each run takes the compiled
defaults: the newest data span (`range_config` empty), the profile's epochs and learning rate.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import warnings


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
        override = (kubeflow_runner.read_package(package)[0] or {}).get("defaultPipelineRoot")
        if not override:
            raise ValueError(f"{package}: the spec has no defaultPipelineRoot (compiled by an "
                             "older cardio): recompile it or pass --pipeline-root")
    return kubeflow_runner.check_pipeline_root(override)


class ClusterError(RuntimeError):
    """The Kubeflow Pipelines API could not be reached, or refused the call; the message names the
    host and the cause in one line."""


def token_path(token_file: str | None = None) -> str | None:
    """The file holding the bearer token for the KFP API, or None (no token is sent: a
    single-user, unauthenticated KFP).

    `token_file`, else $KF_PIPELINES_SA_TOKEN_PATH, else kfp's default mount point
    (/var/run/secrets/kubeflow/pipelines/token) when a pod has it: where a projected service
    account token with audience `pipelines.kubeflow.org` is mounted (the retraining CronJob,
    kubernetes/base/retraining-cronjob.yaml). Names and default are kfp's own
    (kfp/client/__init__.py: KF_PIPELINES_SA_TOKEN_ENV, KF_PIPELINES_SA_TOKEN_PATH).
    """
    from kfp import client as kfp_client
    path = token_file or os.environ.get(kfp_client.KF_PIPELINES_SA_TOKEN_ENV)
    if path is None:
        default = kfp_client.KF_PIPELINES_SA_TOKEN_PATH
        return default if os.path.isfile(default) else None
    if not os.path.isfile(path):
        raise ValueError(f"KFP token file {path}: no such file (a projected service account token "
                         "with audience pipelines.kubeflow.org; see docs/operator-guide.md, "
                         "section 4)")
    return path


def client(host: str, namespace: str | None = None, token_file: str | None = None):
    """A kfp.Client for `host` that sends the service account token of `token_path` (if any) as
    a bearer token, **re-read from the file on every request** (the kubelet rotates projected
    tokens).

    Why the credentials are passed explicitly: `kfp.Client(host=...)` applies no credentials once
    a host is given. Its `_load_config` (kfp/client/client.py, kfp 2.16) returns the
    configuration as soon as `host` is set ("if host is explicitly set with auth token, it's
    probably a port forward address"), before `_get_config_with_default_credentials`, which is
    reached only in a pod with no host; so KF_PIPELINES_SA_TOKEN_PATH alone is never read. Given
    `credentials=`, the client registers the credentials' `refresh_api_key_hook`, which
    kfp_server_api's `Configuration.get_api_key_with_prefix` calls before every request; kfp's
    `ServiceAccountTokenVolumeCredentials` (kfp/client/set_volume_credentials.py) reads the file
    in that hook.
    """
    from kfp.client import set_volume_credentials

    path = token_path(token_file)
    credentials = (set_volume_credentials.ServiceAccountTokenVolumeCredentials(path)
                   if path else None)
    with warnings.catch_warnings():
        # "This client only works with Kubeflow Pipeline v2.0.0-beta.2 and later versions."
        warnings.simplefilter("ignore", FutureWarning)
        kfp_client = _client_class()(host=host, namespace=namespace, credentials=credentials)
    return kfp_client


def _client_class():
    """kfp.Client with one healthz attempt. The constructor asks the API's healthz when no
    namespace is known; kfp's `get_kfp_healthz` tries 5 times, 5 s apart, logging each failure's
    traceback (kfp/client/client.py), then raises TimeoutError: 25 s and pages of output before
    an unreachable or refusing host is reported. `api_errors` reports the one failure."""
    import kfp

    class Client(kfp.Client):
        def get_kfp_healthz(self, sleep_duration: int = 5):
            return self._healthz_api.healthz_service_get_healthz()
    return Client


def _cause(error: BaseException) -> str:
    """'Connection refused' from urllib3's 'HTTPConnection(...): Failed to establish a new
    connection: [Errno 111] Connection refused'."""
    text = str(error)
    match = re.search(r"\[Errno [^\]]+\] ([^'\")]+)", text)
    if match:
        return match.group(1).strip()
    return f"{type(error).__name__}: {text}"[:300]


@contextlib.contextmanager
def api_errors(host: str, namespace: str | None = None, token: str | None = None):
    """Turns what kfp.Client raises when the cluster is not there, or refuses the call, into a
    `ClusterError` of one line naming the host and the cause (and what to check), and keeps
    urllib3's retry warnings off stderr."""
    import urllib3
    from kfp_server_api.exceptions import ApiException

    retry_log = logging.getLogger("urllib3.connectionpool")
    level = retry_log.level
    retry_log.setLevel(logging.ERROR)
    try:
        yield
    except urllib3.exceptions.MaxRetryError as error:
        raise ClusterError(f"cannot reach Kubeflow Pipelines at {host}: "
                           f"{_cause(error.reason or error)}") from None
    except urllib3.exceptions.HTTPError as error:
        raise ClusterError(f"cannot reach Kubeflow Pipelines at {host}: {_cause(error)}") from None
    except ApiException as error:
        where = f" in namespace {namespace}" if namespace else ""
        if error.status == 401:
            hint = (f"the token in {token} was not accepted (a projected service account token "
                    "with audience pipelines.kubeflow.org?)" if token else
                    "no token was sent: give --token-file or set KF_PIPELINES_SA_TOKEN_PATH")
        elif error.status == 403:
            hint = (f"the caller may not use the pipelines API{where} (RBAC: "
                    "kubernetes/kubeflow/retraining-submitter-rbac.yaml)")
        else:
            body = " ".join(str(error.body or "").split())[:200]
            hint = body or "no details"
        raise ClusterError(f"Kubeflow Pipelines at {host} refused the call: HTTP {error.status} "
                           f"{error.reason}: {hint}") from None
    except OSError as error:   # the token file vanished between two requests
        raise ClusterError(f"Kubeflow Pipelines at {host}: cannot read the token file "
                           f"{getattr(error, 'filename', None) or token}: "
                           f"{error.strerror or error}") from None
    finally:
        retry_log.setLevel(level)


def _experiment_id(kfp_client, experiment: str, namespace: str | None) -> str:
    return kfp_client.create_experiment(name=experiment, namespace=namespace).experiment_id


def _quiet():
    """kfp.Client prints links on stdout; stdout carries the command's JSON summary."""
    return contextlib.redirect_stdout(sys.stderr)


def submit(host: str, package: str, experiment: str = DEFAULT_EXPERIMENT,
           namespace: str | None = None, run_name: str | None = None,
           params: dict | None = None, root: str | None = None,
           token_file: str | None = None) -> dict:
    """Starts one run of the compiled pipeline; returns its id, experiment and pipeline root.
    Raises `ClusterError` (one line) when the API cannot be reached or refuses the call."""
    package = _package(package)
    root = pipeline_root(package, root)
    token = token_path(token_file)
    with _quiet(), api_errors(host, namespace, token):
        kfp_client = client(host, namespace, token)
        result = kfp_client.create_run_from_pipeline_package(
            package, arguments=params or {}, run_name=run_name,
            experiment_name=experiment, namespace=namespace, pipeline_root=root)
    return {"run_id": result.run_id, "experiment": experiment, "pipeline_root": root}


def schedule(host: str, package: str, cron: str = DEFAULT_CRON, job_name: str = "cardio-retraining",
             experiment: str = DEFAULT_EXPERIMENT, namespace: str | None = None,
             params: dict | None = None, max_concurrency: int = 1,
             root: str | None = None, token_file: str | None = None) -> dict:
    """Creates a recurring run: one run per cron tick, never two at once, no backfill of ticks
    missed while paused (each run reads the newest span anyway). Raises `ClusterError` like
    `submit`."""
    check_cron(cron)
    package = _package(package)
    root = pipeline_root(package, root)
    token = token_path(token_file)
    with _quiet(), api_errors(host, namespace, token):
        kfp_client = client(host, namespace, token)
        recurring = kfp_client.create_recurring_run(
            experiment_id=_experiment_id(kfp_client, experiment, namespace), job_name=job_name,
            cron_expression=cron, pipeline_package_path=package,
            params=params or {}, max_concurrency=max_concurrency, no_catchup=True, enabled=True,
            pipeline_root=root)
    return {"recurring_run_id": recurring.recurring_run_id, "cron": cron,
            "experiment": experiment, "job_name": job_name, "pipeline_root": root}
