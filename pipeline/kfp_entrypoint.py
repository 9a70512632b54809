"""The container entrypoint of every TFX component in the compiled Kubeflow pipeline: TFX's own
(`tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor`) with what the open-source
Kubeflow Pipelines backend needs around it.

What the open-source backend does, and what this module adds for it:

- **No lifecycle hooks.** The open-source driver and launcher
  (kubeflow/pipelines `backend/src/v2/driver/driver.go`, `container.go`;
  `backend/src/v2/component/launcher_v2.go`) run only the container's command: the
  `preCacheCheck` hook that TFX compiles for ImportExampleGen (its driver,
  `tfx/orchestration/kubeflow/v2/file_based_example_gen/driver.py`) runs on Vertex AI Pipelines
  only. Without it TFX's executor would get its `span-{SPAN}/...` pattern unresolved. So when the
  task is a file-based ExampleGen and no driver has written its ExecutorOutput yet, this module
  runs that same TFX driver in the container before the executor (span, version and fingerprint
  from TFX's `FileBasedInputProcessor`, i.e. `tfx/components/example_gen/utils.py`), and stamps
  the span, version and fingerprint on the output artifact as the Vertex launcher would. On
  Vertex the hook has already written them and nothing is resolved twice.
- **Artifacts through local paths.** The open-source launcher downloads every input artifact to
  a local path before the command runs and uploads every output artifact from one after it
  (`LocalPathForURI` in `launcher_v2.go`: `minio://B/P` -> `/minio/B/P`, `s3://B/P` ->
  `/s3/B/P`, `gs://B/P` -> `/gcs/B/P`). TFX's entrypoint hands the executors the remote URIs
  unchanged, and TensorFlow 2.21 cannot open `minio://` or `s3://`. For those schemes this module
  hands the executors the launcher's local paths (inputs read there, outputs written there) and
  reports the remote URIs back in the ExecutorOutput, so a MinIO/S3 pipeline root needs no
  TensorFlow file-system plugin. `gs://` is left as it is (TensorFlow writes it directly; the
  launcher then finds no local copy to upload and skips it, `uploadOutputArtifacts`).

`CARDIO_LAUNCHER_LOCAL_ROOT` (default `/`) is where the launcher's `/minio`, `/s3` live: only a
local execution of the spec (tests/kfp_harness.py) sets it.
"""
from __future__ import annotations

import json
import os
import sys

# Schemes TensorFlow cannot open here, mapped as the open-source launcher maps them
# (launcher_v2.go, LocalPathForURI).
LOCAL_PATH_SCHEMES = {"minio://": "minio", "s3://": "s3"}
LOCAL_ROOT_ENV = "CARDIO_LAUNCHER_LOCAL_ROOT"
EXAMPLE_GEN_PARAMETERS = ("input_base", "input_config")
# Outputs that name an earlier artifact they stand for, by the metadata key holding its URI:
# BaselineLookup's (the cell's last blessed model, components/baseline.py) and
# PreviousStatisticsLookup's (the previous span's statistics, components/drift_gate.py). With a
# MinIO/S3 root such an output is reported with that artifact's URI, so that its consumer's
# launcher downloads it; nothing is uploaded for it (launcher_v2.go skips an output with no local
# copy).
BY_REFERENCE = ("baseline_model_uri", "previous_statistics_uri")


def local_root() -> str:
    return os.environ.get(LOCAL_ROOT_ENV, "/")


def local_path(uri: str, root: str | None = None) -> str | None:
    """The launcher's local path of `uri`, or None where the launcher's path is not used here."""
    for prefix, folder in LOCAL_PATH_SCHEMES.items():
        if uri.startswith(prefix):
            return os.path.join(root or local_root(), folder, uri[len(prefix):])
    return None


def remote_uri(path: str, root: str | None = None) -> str:
    """The inverse of `local_path` (paths under no mapped folder are returned unchanged)."""
    base = root or local_root()
    for prefix, folder in LOCAL_PATH_SCHEMES.items():
        top = os.path.join(base, folder) + "/"
        if path == top[:-1] or path.startswith(top):
            return prefix + path[len(top):]
    return path


def _map_artifacts(lists: dict) -> None:
    for artifact_list in lists.values():
        for artifact in artifact_list.get("artifacts", []):
            path = local_path(artifact.get("uri", ""))
            if path is not None:
                artifact["uri"] = path


def _unmap(value):
    """Local paths back to remote URIs, in artifact URIs and in string metadata (TFX records
    input URIs on outputs, e.g. the blessing's `current_model`)."""
    if isinstance(value, str):
        return remote_uri(value)
    if isinstance(value, dict):
        return {k: _unmap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unmap(v) for v in value]
    return value


def _is_unresolved_example_gen(executor_input: dict) -> bool:
    parameters = executor_input.get("inputs", {}).get("parameterValues", {})
    if not all(p in parameters for p in EXAMPLE_GEN_PARAMETERS):
        return False
    output_file = executor_input.get("outputs", {}).get("outputFile", "")
    if output_file and os.path.exists(output_file):   # a driver (Vertex's hook) already ran
        with open(output_file) as f:
            if "span" in json.load(f).get("parameterValues", {}):
                return False
    return True


def resolve_span(executor_input: dict, inputs_spec_json: str | None) -> dict:
    """Runs TFX's own file-based ExampleGen driver (what Vertex runs as the `preCacheCheck` hook)
    in this container, and stamps its span, version and fingerprint on the output artifact as
    Vertex's launcher does. Returns the driver's ExecutorOutput (a dict)."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2
    from tfx.orchestration.kubeflow.v2.file_based_example_gen import driver

    message = pipeline_spec_pb2.ExecutorInput()
    json_format.ParseDict(executor_input, message, ignore_unknown_fields=True)
    inputs_spec = None
    if inputs_spec_json:
        inputs_spec = pipeline_spec_pb2.ComponentInputsSpec()
        json_format.Parse(inputs_spec_json, inputs_spec, ignore_unknown_fields=True)
    output_file = executor_input["outputs"]["outputFile"]
    os.makedirs(os.path.dirname(output_file) or ".", exist_ok=True)
    driver._run_driver(message, inputs_spec)   # pylint: disable=protected-access
    with open(output_file) as f:
        driven = json.load(f)
    for key, reported in driven.get("artifacts", {}).items():
        ours = executor_input["outputs"]["artifacts"].get(key, {}).get("artifacts", [])
        for artifact, theirs in zip(ours, reported.get("artifacts", [])):
            artifact.setdefault("metadata", {}).update(theirs.get("metadata", {}))
    return driven


def _argument(argv: list[str], name: str) -> int | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return i + 1
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    at = _argument(argv, "--json_serialized_invocation_args")
    if at is None:
        raise SystemExit("kfp_entrypoint: --json_serialized_invocation_args is required "
                         "(the compiled spec passes the ExecutorInput as `{{$}}`)")
    executor_input = json.loads(argv[at])
    spec_at = _argument(argv, "--json_serialized_inputs_spec_args")
    # Inputs as the launcher downloaded them, outputs where the launcher will upload them from.
    _map_artifacts(executor_input.get("inputs", {}).get("artifacts", {}))
    _map_artifacts(executor_input.get("outputs", {}).get("artifacts", {}))
    for artifact_list in executor_input.get("outputs", {}).get("artifacts", {}).values():
        for artifact in artifact_list.get("artifacts", []):
            if remote_uri(artifact["uri"]) != artifact["uri"]:
                os.makedirs(os.path.dirname(artifact["uri"]), exist_ok=True)
    if _is_unresolved_example_gen(executor_input):
        resolve_span(executor_input, argv[spec_at] if spec_at is not None else None)
    argv[at] = json.dumps(executor_input)

    from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_run_executor as tfx_entry

    from cardio.components import baseline
    os.environ[baseline.KFP_RUNTIME_ENV] = "1"   # artifact ids are hashes of runtime names

    # TFX's own entrypoint, as the compiled command would have run it (less absl's app.run,
    # which would hand the program name to Beam as an argument).
    tfx_entry.main(tfx_entry._parse_flags(argv))   # pylint: disable=protected-access
    # The launcher records the ExecutorOutput's URIs (launcher_v2.go, mergeRuntimeArtifacts):
    # they must be the remote ones it uploads to, not this pod's local paths.
    output_file = executor_input["outputs"]["outputFile"]
    if os.path.exists(output_file):
        with open(output_file) as f:
            reported = json.load(f)
        reported = _unmap(reported)
        for artifact_list in reported.get("artifacts", {}).values():
            for artifact in artifact_list.get("artifacts", []):
                for key in BY_REFERENCE:
                    reference = artifact.get("metadata", {}).get(key)
                    if isinstance(reference, str) and local_path(reference) is not None:
                        artifact["uri"] = reference
        with open(output_file, "w") as f:
            json.dump(reported, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
