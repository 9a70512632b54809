"""Finds a local run's outputs through MLMD, the way a reviewer would: by component and key."""
from __future__ import annotations

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2


def open_store(metadata_path: str) -> metadata_store.MetadataStore:
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(config)


def node_executions(store, pipeline_name: str, node_id: str) -> list:
    """Executions of one component, oldest first."""
    context = store.get_context_by_type_and_name("node", f"{pipeline_name}.{node_id}")
    if context is None:
        return []
    return sorted(store.get_executions_by_context(context.id), key=lambda e: e.id)


def output_artifacts(store, execution_id: int, key: str | None = None) -> list:
    """Output artifacts of an execution (optionally only those under one output key)."""
    events = [e for e in store.get_events_by_execution_ids([execution_id])
              if e.type in (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)]
    if key is not None:
        events = [e for e in events if any(s.HasField("key") and s.key == key for s in e.path.steps)]
    return store.get_artifacts_by_id([e.artifact_id for e in events])


def latest_output(store, pipeline_name: str, node_id: str, key: str):
    """The newest artifact a component produced under `key`, or None."""
    for execution in reversed(node_executions(store, pipeline_name, node_id)):
        artifacts = output_artifacts(store, execution.id, key)
        if artifacts:
            return max(artifacts, key=lambda a: a.id)
    return None


def stage_seconds(store, pipeline_name: str, since: float = 0.0) -> list:
    """(component, seconds) of the executions MLMD recorded from `since` (seconds since the epoch)
    on, in the order they started; a cached component takes next to nothing."""
    executions = []
    for context in store.get_contexts_by_type("node"):
        if context.name.startswith(pipeline_name + "."):
            for execution in store.get_executions_by_context(context.id):
                if execution.create_time_since_epoch >= since * 1000:
                    executions.append((execution.create_time_since_epoch,
                                       context.name[len(pipeline_name) + 1:],
                                       (execution.last_update_time_since_epoch -
                                        execution.create_time_since_epoch) / 1000))
    return [(name, seconds) for _, name, seconds in sorted(executions)]
