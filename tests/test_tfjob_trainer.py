"""The multi-worker Trainer launcher: the TFJob it builds, and the launcher end to end against a
stand-in Kubernetes API server on loopback that plays the training operator: it starts each
replica's container command with the TF_CONFIG the operator would set, reports the job's
conditions from the processes' exit codes, and the launcher then finds the chief's export."""
import http.server
import json
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest
import tensorflow as tf
import yaml
from json_http import JsonHandler
from tfx.types import artifact_utils, standard_artifacts
from tfx.utils import json_utils

from cardio.components import tfjob_trainer, trainer_component as trainer_component
from cardio.data import convert

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "cardio-pipelines"
TFJOBS = f"/apis/kubeflow.org/v1/namespaces/{NAMESPACE}/tfjobs"
CONFIG = {"backbone": "mobilenet_025", "weighting": "75-25", "weights": "random",
          "image_size": 64, "epochs": 5, "batch_size": 4, "steps_per_epoch": 2, "seed": 3}


def _invocation_artifacts(root: Path, span: Path | None = None):
    examples = standard_artifacts.Examples()
    examples.uri = str(root / "examples")
    examples.split_names = artifact_utils.encode_split_names(["train", "validation"])
    if span is not None:
        for split in ("train", "validation"):
            os.makedirs(root / "examples", exist_ok=True)
            os.symlink(span / split, root / "examples" / f"Split-{split}")
    model, model_run = standard_artifacts.Model(), standard_artifacts.ModelRun()
    model.uri, model_run.uri = str(root / "model"), str(root / "model_run")
    exec_properties = {
        "run_fn": "cardio.trainer.task.run_fn", "custom_config": json.dumps(CONFIG),
        "train_args": json.dumps({"splits": ["train"]}),
        "eval_args": json.dumps({"splits": ["validation"]}),
        trainer_component.EPOCHS: 1, trainer_component.LEARNING_RATE: 0.002}
    return {"examples": [examples]}, {"model": [model], "model_run": [model_run]}, exec_properties


def test_tfjob_manifest():
    spec = tfjob_trainer.TFJobSpec(image="registry.example/cardio:1.2.3-gpu", workers=4,
                                   gpus_per_worker=2, namespace=NAMESPACE)
    inputs, outputs, properties = _invocation_artifacts(Path("/data/run"))
    invocation = tfjob_trainer.invocation(inputs, outputs, properties)
    name = tfjob_trainer.job_name("mobilenet-75-25", "gs://b/root/Trainer/model/42")
    job = tfjob_trainer.build_tfjob(name, NAMESPACE, spec, invocation)

    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "TFJob")
    assert job["metadata"] == {"name": name, "namespace": NAMESPACE, "labels": {
        "app.kubernetes.io/part-of": "cardio", "app.kubernetes.io/component": "trainer"}}
    replicas = job["spec"]["tfReplicaSpecs"]
    # One chief (its export is the model) and workers - 1 workers.
    assert {k: v["replicas"] for k, v in replicas.items()} == {"Chief": 1, "Worker": 3}
    assert job["spec"]["runPolicy"]["backoffLimit"] == 3
    for replica in replicas.values():
        assert replica["restartPolicy"] == "OnFailure"
        pod = replica["template"]["spec"]
        assert pod["serviceAccountName"] == "default-editor"
        (container,) = pod["containers"]
        assert container["name"] == "tensorflow"    # the name the training operator looks for
        assert container["image"] == "registry.example/cardio:1.2.3-gpu"
        assert container["command"] == ["python", "-m", "cardio.components.tfjob_trainer"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
        assert {"name": "TF_USE_LEGACY_KERAS", "value": "1"} in container["env"]
        # Every replica gets the same invocation: the same run_fn, inputs and output URIs, with
        # the runtime overrides folded into the run_fn's config.
        sent = json.loads(container["args"][container["args"].index("--invocation") + 1])
        (examples,) = json_utils.loads(sent["input_dict"])["examples"]
        assert examples.uri == "/data/run/examples"
        assert json_utils.loads(sent["output_dict"])["model"][0].uri == "/data/run/model"
        assert json.loads(json_utils.loads(sent["exec_properties"])["custom_config"]) == \
            {**CONFIG, "epochs": 1, "learning_rate": 0.002}

    # Names are DNS-1123 labels, stable for one execution's output, distinct across outputs.
    assert len(name) <= 63 and name == name.lower() and name.replace("-", "").isalnum()
    assert name == tfjob_trainer.job_name("mobilenet-75-25", "gs://b/root/Trainer/model/42")
    assert name != tfjob_trainer.job_name("mobilenet-75-25", "gs://b/root/Trainer/model/43")
    single = tfjob_trainer.build_tfjob(name, NAMESPACE, tfjob_trainer.TFJobSpec(
        image="i:1", workers=1, gpus_per_worker=0), invocation)
    assert set(single["spec"]["tfReplicaSpecs"]) == {"Chief"}
    assert "nvidia.com/gpu" not in yaml.safe_dump(single)
    with pytest.raises(ValueError, match="at least one replica"):
        tfjob_trainer.TFJobSpec(image="i:1", workers=0)


class StandInTrainingOperator(http.server.ThreadingHTTPServer):
    """The Kubernetes API for TFJobs, with the training operator behind it: a created TFJob's
    replicas run as local processes of their container command, with TF_CONFIG set."""

    def __init__(self, run_replicas=True, existing=None):
        self.jobs, self.processes, self.created, self.deleted = dict(existing or {}), {}, [], []
        self.run_replicas = run_replicas
        super().__init__(("127.0.0.1", 0), _OperatorHandler)

    def start(self, job):
        replicas = job["spec"]["tfReplicaSpecs"]
        tasks = [(kind.lower(), i) for kind in ("Chief", "Worker")
                 for i in range(replicas.get(kind, {}).get("replicas", 0))]
        ports = []
        for _ in tasks:
            with socket.socket() as s:
                s.bind(("localhost", 0))
                ports.append(s.getsockname()[1])
        cluster = {}
        for (kind, _), port in zip(tasks, ports):
            cluster.setdefault(kind, []).append(f"localhost:{port}")
        processes = []
        for kind, index in tasks:
            container = replicas[kind.capitalize()]["template"]["spec"]["containers"][0]
            env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
            env.update({e["name"]: e["value"] for e in container["env"]})
            env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
            processes.append(subprocess.Popen(container["command"] + container["args"], env=env,
                                              cwd=REPO, stdout=subprocess.PIPE,
                                              stderr=subprocess.STDOUT, text=True))
        self.processes[job["metadata"]["name"]] = processes

    def status(self, name):
        processes = self.processes.get(name)
        if processes is None:
            return self.jobs[name].get("status", {})
        codes = [p.poll() for p in processes]
        if None in codes:
            return {"conditions": [{"type": "Running", "status": "True"}]}
        state = "Succeeded" if codes == [0] * len(codes) else "Failed"
        return {"conditions": [{"type": "Running", "status": "False"},
                               {"type": state, "status": "True"}]}


class _OperatorHandler(JsonHandler):

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != TFJOBS:
            return self._send(404, {"kind": "Status", "code": 404})
        name = body["metadata"]["name"]
        self.server.created.append(body)
        if name in self.server.jobs:
            return self._send(409, {"kind": "Status", "code": 409, "reason": "AlreadyExists"})
        self.server.jobs[name] = body
        if self.server.run_replicas:
            self.server.start(body)
        self._send(201, body)

    def do_DELETE(self):
        name = self.path.rsplit("/", 1)[-1]
        if not self.path.startswith(TFJOBS + "/") or name not in self.server.jobs:
            return self._send(404, {"kind": "Status", "code": 404})
        self.server.deleted.append(self.server.jobs.pop(name)["metadata"]["name"])
        self._send(200, {"kind": "Status", "status": "Success"})

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        if not self.path.startswith(TFJOBS + "/") or name not in self.server.jobs:
            return self._send(404, {"kind": "Status", "code": 404})
        self._send(200, {**self.server.jobs[name], "status": self.server.status(name)})


@pytest.fixture
def operator(tmp_path, monkeypatch, request):
    server = StandInTrainingOperator(**getattr(request, "param", {}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
        "users": [{"name": "test", "user": {"token": "t"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    yield server
    server.shutdown()
    for processes in server.processes.values():
        for p in processes:
            p.kill()


def _launcher():
    executor = tfjob_trainer.Executor()
    executor.poll_seconds = 0.5
    return executor


def test_launcher_runs_run_fn_in_every_replica_and_takes_the_chiefs_export(operator, tmp_path):
    root = tmp_path / "data"
    convert.write_synthetic(str(root), 24, seed=5, size=96, span=1, external_sites=(), workers=1)
    inputs, outputs, properties = _invocation_artifacts(tmp_path, root / "span-1")
    properties[trainer_component.TFJOB] = json.dumps(
        {"image": "registry.example/cardio:1-gpu", "workers": 2, "gpus_per_worker": 0,
         "namespace": NAMESPACE, "timeout_seconds": 900})

    _launcher().Do(inputs, outputs, properties)

    (job,) = operator.created
    assert {k: v["replicas"] for k, v in job["spec"]["tfReplicaSpecs"].items()} == \
        {"Chief": 1, "Worker": 1}
    summary = json.loads((tmp_path / "model_run" / "training_summary.json").read_text())
    assert (summary["strategy"], summary["replicas"]) == ("MultiWorkerMirroredStrategy", 2)
    # The runtime override reached every replica: one epoch, not the configuration's five.
    assert summary["epochs_run"] == [0]
    # The chief's export is the Trainer's model, as the Evaluator and Pusher expect it.
    served = tf.saved_model.load(str(tmp_path / "model" / "Format-Serving"))
    assert "serving_default" in served.signatures


@pytest.mark.parametrize("operator", [{"run_replicas": False}], indirect=True)
def test_a_failed_tfjob_fails_the_trainer_with_where_to_look(operator, tmp_path):
    inputs, outputs, properties = _invocation_artifacts(tmp_path)
    properties[trainer_component.TFJOB] = json.dumps({"image": "i:1", "namespace": NAMESPACE})
    name = tfjob_trainer.job_name("mobilenet_025-75-25", outputs["model"][0].uri)
    operator.jobs[name] = {"metadata": {"name": name}, "status": {
        "conditions": [{"type": "Failed", "status": "True"}]}}
    with pytest.raises(RuntimeError, match=f"TFJob {NAMESPACE}/{name} failed: .*kubectl"):
        _launcher().Do(inputs, outputs, properties)
    # The TFJob already existed (a retried launcher): it was not submitted twice, only awaited.
    assert len(operator.created) == 1


@pytest.mark.parametrize("operator", [{"run_replicas": False}], indirect=True)
def test_a_succeeded_tfjob_without_the_chiefs_export_is_an_error(operator, tmp_path):
    inputs, outputs, properties = _invocation_artifacts(tmp_path)
    properties[trainer_component.TFJOB] = json.dumps({"image": "i:1", "namespace": NAMESPACE})
    name = tfjob_trainer.job_name("mobilenet_025-75-25", outputs["model"][0].uri)
    operator.jobs[name] = {"metadata": {"name": name}, "status": {
        "conditions": [{"type": "Succeeded", "status": "True"}]}}
    with pytest.raises(RuntimeError, match="chief wrote no model"):
        _launcher().Do(inputs, outputs, properties)


@pytest.mark.parametrize("operator", [{"run_replicas": False}], indirect=True)
def test_terminating_the_launcher_deletes_its_tfjob(operator, tmp_path):
    inputs, outputs, properties = _invocation_artifacts(tmp_path)
    properties[trainer_component.TFJOB] = json.dumps({"image": "i:1", "namespace": NAMESPACE})
    handler = signal.getsignal(signal.SIGTERM)
    # The replicas never finish; the pipeline run is terminated instead (Argo sends SIGTERM).
    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    with pytest.raises(tfjob_trainer.Terminated):
        _launcher().Do(inputs, outputs, properties)
    timer.join()
    (job,) = operator.created
    assert operator.deleted == [job["metadata"]["name"]]
    assert signal.getsignal(signal.SIGTERM) == handler   # the launcher's handler is removed
