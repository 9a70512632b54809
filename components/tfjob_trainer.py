"""Multi-worker training on open-source Kubeflow: a Trainer executor that launches a TFJob.

A TFX Trainer runs in one pod. To train on several machines, this executor (the Trainer's
executor class in the compiled pipeline when `--training tfjob`) submits a TFJob to the Kubeflow
training operator, which starts one Chief and N-1 Workers and sets TF_CONFIG in each. Every
replica runs this module (`python -m components.tfjob_trainer`) with the Trainer's invocation:
the same run_fn, the same inputs and output URIs. Under MultiWorkerMirroredStrategy every
replica saves; the chief's export is written to the Model artifact's URI (object storage every
pod reads), the other workers' to temporary directories (trainer/task.py). The executor waits for
the TFJob, then checks that the chief's export is there, so the Evaluator and Pusher that follow
see an ordinary Trainer output.

The manifest comes from `build_tfjob`, a pure function (tested); `kubernetes/kubeflow/` holds the
RBAC the pipeline's service account needs to create and watch TFJobs.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

from tfx.components.trainer import executor as trainer_executor
from tfx.components.util import udf_utils
from tfx.dsl.components.base import base_executor
from tfx.dsl.io import fileio
from tfx.types import artifact_utils
from tfx.utils import json_utils, path_utils

from cardio.components import trainer_component

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "tfjobs"
NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


@dataclasses.dataclass(frozen=True)
class TFJobSpec:
    """How the TFJob's replicas run. Rendered into the compiled pipeline as the Trainer's
    `tfjob` parameter (JSON)."""
    image: str                           # the GPU image: the same project, CUDA-enabled TF
    workers: int = 2                     # replicas in all: one Chief plus workers - 1 Workers
    gpus_per_worker: int = 1
    cpu: str = "8"
    memory: str = "32Gi"
    gpu_resource: str = "nvidia.com/gpu"
    namespace: str | None = None         # None: the launcher pod's own namespace
    service_account: str = "default-editor"  # Kubeflow's per-profile account
    timeout_seconds: int = 48 * 3600
    backoff_limit: int = 3               # restarts resume from the epoch checkpoint (run_fn)

    def __post_init__(self):
        if self.workers < 1:
            raise ValueError(f"a TFJob needs at least one replica, got workers={self.workers}")
        if self.gpus_per_worker < 0:
            raise ValueError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker}")


def job_name(cell: str, model_uri: str) -> str:
    """A DNS-1123 name unique to this execution's output: a retried launcher finds its own TFJob
    instead of starting a second one."""
    digest = hashlib.sha256(model_uri.encode()).hexdigest()[:10]
    stem = re.sub(r"[^a-z0-9-]+", "-", cell.lower()).strip("-")[:40]
    return f"{stem}-{digest}"


def build_tfjob(name: str, namespace: str, spec: TFJobSpec, invocation: dict,
                labels: dict | None = None) -> dict:
    """The TFJob (kubeflow.org/v1) whose replicas each run the Trainer's run_fn on `invocation`."""
    labels = {"app.kubernetes.io/part-of": "cardio", "app.kubernetes.io/component": "trainer",
              **(labels or {})}
    resources = {"requests": {"cpu": spec.cpu, "memory": spec.memory},
                 "limits": {"memory": spec.memory}}
    if spec.gpus_per_worker:
        resources["limits"][spec.gpu_resource] = str(spec.gpus_per_worker)

    def replica(count: int) -> dict:
        return {
            "replicas": count,
            # A replica that fails restarts and resumes from its last epoch (BackupAndRestore).
            "restartPolicy": "OnFailure",
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": spec.service_account,
                    "securityContext": {"runAsNonRoot": True,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        # The training operator finds the TensorFlow container by this name.
                        "name": "tensorflow",
                        "image": spec.image,
                        "command": ["python", "-m", "cardio.components.tfjob_trainer"],
                        "args": ["--invocation", json.dumps(invocation, sort_keys=True)],
                        # The image sets it too; the replicas must never load Keras 3.
                        "env": [{"name": "TF_USE_LEGACY_KERAS", "value": "1"},
                                {"name": "PYTHONUNBUFFERED", "value": "1"}],
                        "resources": resources,
                        "securityContext": {"allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]}},
                    }],
                },
            },
        }

    replica_specs = {"Chief": replica(1)}
    if spec.workers > 1:
        replica_specs["Worker"] = replica(spec.workers - 1)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TFJob",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": spec.backoff_limit,
                          "activeDeadlineSeconds": spec.timeout_seconds,
                          "ttlSecondsAfterFinished": 7 * 24 * 3600},
            "tfReplicaSpecs": replica_specs,
        },
    }


def job_state(tfjob: dict) -> str | None:
    """'Succeeded' or 'Failed' once the training operator says so, else None."""
    for condition in (tfjob.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Succeeded", "Failed") and condition.get("status") == "True":
            return condition["type"]
    return None


def invocation(input_dict, output_dict, exec_properties) -> dict:
    """What every replica runs: the Trainer's artifacts and its exec properties as TFX's generic
    Trainer reads them (the runtime overrides folded into custom_config)."""
    return {"input_dict": json_utils.dumps(input_dict),
            "output_dict": json_utils.dumps(output_dict),
            "exec_properties": json_utils.dumps(
                trainer_component.merged_exec_properties(exec_properties))}


class Terminated(Exception):
    """The launcher's pod was asked to stop (the pipeline run was terminated)."""


@contextlib.contextmanager
def _deleted_when_terminated(api, namespace: str, name: str):
    """A terminated pipeline run stops the launcher with SIGTERM: delete the TFJob then, so its
    replicas do not hold GPUs for a run nobody waits for."""
    def on_sigterm(signum, frame):
        raise Terminated(f"terminated while waiting for TFJob {namespace}/{name}")

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main_thread else None
    try:
        yield
    except Terminated:
        logging.warning("deleting TFJob %s/%s", namespace, name)
        api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


class Executor(base_executor.BaseExecutor):
    """Submits the TFJob, waits for it, and checks the chief's export."""
    poll_seconds = 30

    def Do(self, input_dict, output_dict, exec_properties):
        from kubernetes import client, config as kube_config

        spec = TFJobSpec(**json.loads(exec_properties[trainer_component.TFJOB]))
        model = artifact_utils.get_single_instance(output_dict["model"])
        namespace = spec.namespace or Path(NAMESPACE_FILE).read_text().strip()
        cell = json.loads(exec_properties.get("custom_config") or "{}")
        name = job_name(f"{cell.get('backbone', 'cardio')}-{cell.get('weighting', '')}", model.uri)
        manifest = build_tfjob(name, namespace, spec,
                               invocation(input_dict, output_dict, exec_properties))
        try:
            kube_config.load_incluster_config()   # the launcher's pod: its service account
        except kube_config.ConfigException:
            kube_config.load_kube_config(os.environ.get("KUBECONFIG"))   # elsewhere
        api = client.CustomObjectsApi()
        try:
            api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
            logging.info("submitted TFJob %s/%s (%d replicas)", namespace, name, spec.workers)
        except client.ApiException as error:
            if error.status != 409:   # 409: this execution's TFJob exists (a retried launcher)
                raise RuntimeError(f"could not create TFJob {namespace}/{name}: {error.reason}: "
                                   f"{error.body}") from error
            logging.info("TFJob %s/%s exists already; waiting for it", namespace, name)
        with _deleted_when_terminated(api, namespace, name):
            deadline = time.time() + spec.timeout_seconds
            while (state := job_state(api.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, name))) is None:
                if time.time() > deadline:
                    raise RuntimeError(f"TFJob {namespace}/{name} did not finish in "
                                       f"{spec.timeout_seconds} s")
                time.sleep(self.poll_seconds)
        if state != "Succeeded":
            raise RuntimeError(f"TFJob {namespace}/{name} failed: see `kubectl -n {namespace} "
                               f"logs -l training.kubeflow.org/job-name={name}`")
        serving_dir = path_utils.serving_model_dir(model.uri)
        if not fileio.exists(serving_dir):
            raise RuntimeError(f"TFJob {namespace}/{name} succeeded but the chief wrote no model "
                               f"to {serving_dir}")


def run_replica(invocation: dict) -> None:
    """One TFJob replica: the Trainer's run_fn, under the TF_CONFIG the operator set."""
    input_dict = json_utils.loads(invocation["input_dict"])
    output_dict = json_utils.loads(invocation["output_dict"])
    exec_properties = json_utils.loads(invocation["exec_properties"])
    generic = trainer_executor.GenericExecutor()
    fn_args = generic._GetFnArgs(input_dict, output_dict, exec_properties)
    udf_utils.get_fn(exec_properties, "run_fn")(fn_args)


if __name__ == "__main__":
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invocation", required=True, help="JSON written by the launcher")
    logging.basicConfig(level=logging.INFO)
    run_replica(json.loads(parser.parse_args(sys.argv[1:]).invocation))
