"""The harness runs each task as its own process even when it forks `python -m` tasks from a
fork server that has imported their modules (tests/kfp_harness.py): the task gets its own argv,
environment and working directory, its output lands in its log, and a failing exit status fails
the run naming the task. On a two-task spec of a tiny probe module, in seconds."""
import json
import os

import pytest

import kfp_harness

PROBE = ["python", "-m", "harness_probe", "--flag", "value"]
DATASET = {"schemaTitle": "system.Dataset", "schemaVersion": "0.0.1"}


def _spec(root: str) -> dict:
    component = {"executorLabel": "exec-probe",
                 "inputDefinitions": {"parameters": {"status": {"parameterType": "STRING"}}},
                 "outputDefinitions": {"artifacts": {"out": {"artifactType": DATASET}}}}
    status = {"status": {"componentInputParameter": "status"}}
    return {
        "pipelineInfo": {"name": "probe"}, "schemaVersion": "2.1.0", "sdkVersion": "t",
        "defaultPipelineRoot": root, "components": {"comp-probe": component},
        "deploymentSpec": {"executors": {"exec-probe": {"container": {
            "image": "registry.example/cardio:1", "command": PROBE, "args": ["{{$}}"]}}}},
        "root": {"inputDefinitions": {"parameters": {"status": {
                     "parameterType": "STRING", "defaultValue": "0", "isOptional": True}}},
                 "dag": {"tasks": {
                     name: {"taskInfo": {"name": name}, "componentRef": {"name": "comp-probe"},
                            "inputs": {"parameters": status}} for name in ("a", "b")}}}}


def test_each_task_is_its_own_process_with_its_own_environment(tmp_path, monkeypatch):
    out = tmp_path / "probe.jsonl"
    monkeypatch.setenv("PROBE_OUT", str(out))
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps(_spec("minio://mlpipeline/probe")))
    kfp_harness.run(str(spec), {}, str(tmp_path / "run"))
    seen = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(seen) == 2
    assert len({s["pid"] for s in seen} | {os.getpid()}) == 3   # two processes, not this one
    # Forked from the fork server, not started from here (which a plain subprocess would be).
    assert {s["ppid"] for s in seen} != {os.getpid()}
    for s in seen:
        assert s["argv"] == ["--flag", "value"] and s["cwd"] == str(tmp_path)
    # Each its own pod root, set in its own environment (the launcher's local paths).
    assert sorted(os.path.basename(os.path.dirname(s["pod_root"])) for s in seen) == ["a", "b"]
    assert "probe: asked to exit 0" in (tmp_path / "run" / "logs" / "a.log").read_text()


def test_a_failing_task_fails_the_run_naming_it_and_its_log(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBE_OUT", str(tmp_path / "probe.jsonl"))
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps(_spec("minio://mlpipeline/probe")))
    with pytest.raises(RuntimeError, match=r"(?s)task [ab] exited 3; .*probe: asked to exit 3"):
        kfp_harness.run(str(spec), {"status": "3"}, str(tmp_path / "run"))
