"""The harness's cache, as the open-source KFP backend's (cacheutils/cache.go, driver/cache.go):
a task whose fingerprint matches an earlier execution is not started, and its consumers get the
earlier execution's artifacts (same MLMD names), so they are skipped too; a task with caching
off always runs. On a two-task spec of plain Python commands, in seconds."""
import json
import sys

import kfp_harness

SCRIPT = """
import json, os, sys
from cardio.pipeline.kfp_entrypoint import local_path
executor_input = json.loads(sys.argv[1])
for artifacts in executor_input["inputs"].get("artifacts", {}).values():
    assert os.path.exists(os.path.join(local_path(artifacts["artifacts"][0]["uri"]), "data"))
out = executor_input["outputs"]["artifacts"]["out"]["artifacts"][0]["uri"]
os.makedirs(local_path(out), exist_ok=True)
with open(os.path.join(local_path(out), "data"), "w") as f:
    f.write(executor_input["inputs"]["parameterValues"]["word"])
with open(os.environ["RAN"], "a") as f:
    f.write(os.path.basename(os.path.dirname(os.path.dirname(out))) + "\\n")
"""
DATASET = {"schemaTitle": "system.Dataset", "schemaVersion": "0.0.1"}


def _spec(root: str, cache_second: bool) -> dict:
    def component(with_input):
        spec = {"executorLabel": f"exec-{'b' if with_input else 'a'}",
                "inputDefinitions": {"parameters": {"word": {"parameterType": "STRING"}}},
                "outputDefinitions": {"artifacts": {"out": {"artifactType": DATASET}}}}
        if with_input:
            spec["inputDefinitions"]["artifacts"] = {"data": {"artifactType": DATASET}}
        return spec

    container = {"image": "registry.example/cardio:1",
                 "command": [sys.executable, "-c", SCRIPT], "args": ["{{$}}"]}
    word = {"word": {"componentInputParameter": "word"}}
    return {
        "pipelineInfo": {"name": "cache-check"}, "schemaVersion": "2.1.0", "sdkVersion": "t",
        "defaultPipelineRoot": root,
        "components": {"comp-a": component(False), "comp-b": component(True)},
        "deploymentSpec": {"executors": {"exec-a": {"container": container},
                                         "exec-b": {"container": container}}},
        "root": {"inputDefinitions": {"parameters": {"word": {
                     "parameterType": "STRING", "defaultValue": "one", "isOptional": True}}},
                 "dag": {"tasks": {
                     "a": {"taskInfo": {"name": "a"}, "componentRef": {"name": "comp-a"},
                           "inputs": {"parameters": word},
                           "cachingOptions": {"enableCache": True}},
                     "b": {"taskInfo": {"name": "b"}, "componentRef": {"name": "comp-b"},
                           "dependentTasks": ["a"],
                           "inputs": {"parameters": word, "artifacts": {"data": {
                               "taskOutputArtifact": {"producerTask": "a",
                                                      "outputArtifactKey": "out"}}}},
                           "cachingOptions": {"enableCache": True} if cache_second else {}}}}}}


def test_cached_tasks_are_skipped_by_fingerprint(tmp_path, monkeypatch):
    ran = tmp_path / "ran.txt"
    monkeypatch.setenv("RAN", str(ran))
    cluster = kfp_harness.Cluster(tmp_path / "cluster")
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps(_spec("minio://mlpipeline/cache", cache_second=True)))
    first = kfp_harness.run(str(spec), {}, str(tmp_path / "run1"), cluster=cluster)
    assert first.executed() == {"a", "b"} and first.cached() == set()
    stored = cluster.object_path(first.artifact("b", "out")["uri"]) / "data"
    assert stored.read_text() == "one"   # uploaded from the pod's local path

    second = kfp_harness.run(str(spec), {}, str(tmp_path / "run2"), cluster=cluster)
    assert second.cached() == {"a", "b"} and second.executed() == set()
    assert ran.read_text().split() == ["a", "b"]   # nothing started the second time
    assert second.artifact("b", "out") == first.artifact("b", "out")
    assert second.tasks["a"].fingerprint == first.tasks["a"].fingerprint

    # A new parameter value is a new fingerprint: both run, b on a's new artifact.
    third = kfp_harness.run(str(spec), {"word": "two"}, str(tmp_path / "run3"), cluster=cluster)
    assert third.executed() == {"a", "b"}
    assert (cluster.object_path(third.artifact("b", "out")["uri"]) / "data").read_text() == "two"


def test_a_task_with_caching_off_always_runs(tmp_path, monkeypatch):
    ran = tmp_path / "ran.txt"
    monkeypatch.setenv("RAN", str(ran))
    cluster = kfp_harness.Cluster(tmp_path / "cluster")
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps(_spec("minio://mlpipeline/cache", cache_second=False)))
    kfp_harness.run(str(spec), {}, str(tmp_path / "run1"), cluster=cluster)
    second = kfp_harness.run(str(spec), {}, str(tmp_path / "run2"), cluster=cluster)
    assert second.cached() == {"a"} and second.executed() == {"b"}
    assert ran.read_text().split() == ["a", "b", "b"]
