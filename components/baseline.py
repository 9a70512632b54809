"""BaselineLookup: a grid cell's last blessed model, the baseline its next candidate must not
fall below.

Why a component: TFX's LatestBlessedModel resolver returns the newest blessed model of the whole
pipeline, whatever its backbone, and it is the only baseline strategy KubeflowV2DagRunner
compiles (as a fixed MLMD filter on ModelBlessing, which cannot name a cell). So each cell gets
a `BaselineLookup.<cell>` that asks MLMD for the newest LIVE ModelBlessing with `blessed == 1`
stamped with this pipeline and cell (the cell's Evaluator stamps its blessings, see
components/evaluator.py) and not about the candidate itself.

Its output is a Model artifact *by reference*: `baseline.json` names the blessed model's uri and
MLMD id (or says there is none, on a cell's first run); the Evaluator evaluates that model in
place, without a copy, and records its uri and id on the blessing. The lookup takes the
candidate model as input, so it reruns exactly when the candidate is new (a cached candidate
keeps its cached baseline and its cached blessing, consistently).

MLMD: locally the pipeline's SQLite file; on Kubeflow the cluster's MLMD gRPC service
(`METADATA_GRPC_SERVICE_HOST` / `_PORT` when the pod has them, else `KUBEFLOW_MLMD`).
"""

import json
import logging
import os

import tensorflow as tf
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types.standard_artifacts import Model

CELL = "cardio_cell"            # custom properties on blessings and on the lookup's output
PIPELINE = "cardio_pipeline"
POINTER_FILE = "baseline.json"
KUBEFLOW_MLMD = "metadata-grpc-service.kubeflow:8080"
BLESSING_TYPES = ("ModelBlessing", "tfx.ModelBlessing")   # TFX's name; KFP v2's schema title
BASELINE_URI, BASELINE_FOUND = "baseline_model_uri", "baseline_found"   # on the lookup's output
BY_LAUNCHER = ("minio://", "s3://")   # copied to and from pods by KFP's launcher, not TensorFlow


def connection_parameter(metadata_connection_config=None) -> str:
    """How the lookup reaches MLMD, as a component parameter: the local SQLite file, or (no local
    config: Kubeflow) the cluster's MLMD service."""
    if metadata_connection_config is not None and metadata_connection_config.HasField("sqlite"):
        return json.dumps({"sqlite": metadata_connection_config.sqlite.filename_uri})
    return json.dumps({"grpc": KUBEFLOW_MLMD})


def open_store(connection: str):
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    settings = json.loads(connection)
    if "sqlite" in settings:
        config = metadata_store_pb2.ConnectionConfig()
        config.sqlite.filename_uri = settings["sqlite"]
        config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
        return metadata_store.MetadataStore(config)
    host, port = settings["grpc"].rsplit(":", 1)
    client = metadata_store_pb2.MetadataStoreClientConfig(
        host=os.environ.get("METADATA_GRPC_SERVICE_HOST", host),
        port=int(os.environ.get("METADATA_GRPC_SERVICE_PORT", port)))
    return metadata_store.MetadataStore(client)


def _property(artifact, name):
    """A custom property as a Python value (KFP stores TFX's ints as doubles)."""
    if name not in artifact.custom_properties:
        return None
    value = artifact.custom_properties[name]
    kind = value.WhichOneof("value")
    return {"int_value": value.int_value, "double_value": value.double_value,
            "string_value": value.string_value}.get(kind)


def find_last_blessed(store, pipeline: str, cell: str, candidate_uri: str) -> dict | None:
    """The newest blessed model of this pipeline's grid cell, other than the candidate."""
    from ml_metadata import errors
    from ml_metadata.proto import metadata_store_pb2

    blessings = []
    for type_name in BLESSING_TYPES:
        try:
            blessings += store.get_artifacts_by_type(type_name)
        except errors.NotFoundError:
            continue
    matches = [b for b in blessings
               if b.state == metadata_store_pb2.Artifact.LIVE
               and _property(b, CELL) == cell and _property(b, PIPELINE) == pipeline
               and _property(b, "blessed") == 1
               and (_property(b, "current_model") or "").rstrip("/") != candidate_uri.rstrip("/")]
    if not matches:
        return None
    latest = max(matches, key=lambda b: (b.create_time_since_epoch, b.id))
    model_uri = _property(latest, "current_model")
    # On the open-source Kubeflow backend a MinIO/S3 model is not opened here: the Evaluator's
    # launcher downloads it (pipeline/kfp_entrypoint.py reports it as this lookup's output), and
    # fails naming the URI if it is gone.
    if not model_uri.startswith(BY_LAUNCHER) and not tf.io.gfile.exists(model_uri):
        raise FileNotFoundError(
            f"the last blessed model of {cell} (blessing {latest.id}) is gone from {model_uri}: "
            f"restore it, or mark that blessing's artifact DELETED in MLMD to compare against the "
            f"one before")
    model_id = _property(latest, "current_model_id")
    return {"model_uri": model_uri, "model_id": int(model_id) if model_id else None,
            "blessing_id": latest.id}


def write_pointer(uri: str, pipeline: str, cell: str, found: dict | None) -> dict:
    pointer = {"pipeline": pipeline, "cell": cell, **(found or {"model_uri": None})}
    tf.io.gfile.makedirs(uri)
    with tf.io.gfile.GFile(os.path.join(uri, POINTER_FILE), "w") as f:
        json.dump(pointer, f, indent=2)
    return pointer


# Set by the Kubeflow container entrypoint (pipeline/kfp_entrypoint.py): artifact ids there are
# hashes of KFP's runtime artifact names, and TFX's entrypoint can name only the task's own
# inputs and outputs when it rewrites a blessing's model ids
# (tfx/orchestration/kubeflow/v2/container/kubeflow_v2_entrypoint_utils.py,
# refactor_model_blessing), so a baseline must be recorded by the input that brought it.
KFP_RUNTIME_ENV = "CARDIO_KFP_RUNTIME"


def read_pointer(artifact) -> dict | None:
    """The lookup's answer, or None when the artifact holds no pointer (a real Model). On the
    open-source Kubeflow backend with a MinIO/S3 root the lookup's output *is* the blessed model
    (downloaded by the launcher; pipeline/kfp_entrypoint.py), its answer in the properties."""
    path = os.path.join(artifact.uri, POINTER_FILE)
    if not tf.io.gfile.exists(path):
        if not artifact.has_custom_property(BASELINE_FOUND) or not int(
                artifact.get_custom_property(BASELINE_FOUND) or 0):
            return None
        model_id = artifact.get_custom_property("baseline_model_id") \
            if artifact.has_custom_property("baseline_model_id") else None
        return {"pipeline": artifact.get_custom_property(PIPELINE),
                "cell": artifact.get_custom_property(CELL), "model_uri": artifact.uri,
                "model_id": int(model_id) if model_id else None}
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


@component
def BaselineLookup(model: InputArtifact[Model], baseline: OutputArtifact[Model],
                   grid_cell: Parameter[str], pipeline_name: Parameter[str],
                   metadata_connection: Parameter[str]):
    found = find_last_blessed(open_store(metadata_connection), pipeline_name, grid_cell, model.uri)
    logging.info("baseline of %s: %s", grid_cell, found or "none (the cell's first model)")
    write_pointer(baseline.uri, pipeline_name, grid_cell, found)
    baseline.set_string_custom_property(CELL, grid_cell)
    baseline.set_string_custom_property(PIPELINE, pipeline_name)
    baseline.set_int_custom_property(BASELINE_FOUND, int(found is not None))
    if found:
        baseline.set_string_custom_property(BASELINE_URI, found["model_uri"])
        if found.get("model_id"):
            baseline.set_int_custom_property("baseline_model_id", found["model_id"])
        baseline.set_int_custom_property("baseline_blessing_id", found["blessing_id"])


def create(model, config, cell_name: str, metadata_connection_config=None):
    return BaselineLookup(model=model, grid_cell=cell_name, pipeline_name=config.pipeline_name,
                          metadata_connection=connection_parameter(
                              metadata_connection_config)).with_id(f"BaselineLookup.{cell_name}")
