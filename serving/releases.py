"""Releases are version labels in models.config: the champion is a label, never a copy.

  push      a blessed version lands; the model's first version becomes `stable` and `canary`,
            later ones are loaded beside them unlabelled (TF Serving only lets a label move to a
            version it has already loaded, so labelling is a second step)
  promote   moves a label (default `stable`) to a version (default: the `canary` version, or for
            `canary` itself the newest pushed version)
  rollback  moves a label back to the version it held before its last promotion

Each model serves its labelled versions, its newest push and the versions its labels held
before (so a rollback is instant). Every move is appended to release_history.jsonl.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os

import tensorflow as tf

from cardio.serving import config as config_lib

HISTORY = "release_history.jsonl"


class ReleaseError(ValueError):
    pass


@contextlib.contextmanager
def _locked(serving_root: str):
    """Serialises read-modify-write of models.config between processes on one filesystem."""
    if "://" in serving_root:      # object stores: last writer wins (one Pusher per model)
        yield
        return
    import fcntl
    os.makedirs(serving_root, exist_ok=True)
    with open(os.path.join(serving_root, ".models.config.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def read_state(serving_root: str) -> dict:
    path = os.path.join(serving_root, config_lib.MODELS_CONFIG)
    if not tf.io.gfile.exists(path):
        return {}
    return config_lib.models_from_config(config_lib.read_models_config(path))


def history(serving_root: str) -> list[dict]:
    path = os.path.join(serving_root, HISTORY)
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _append_history(serving_root: str, entry: dict):
    entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             **entry}
    lines = [json.dumps(e) for e in history(serving_root)] + [json.dumps(entry)]
    config_lib.write_atomically(os.path.join(serving_root, HISTORY), "\n".join(lines) + "\n")


def _rollback_target(entries: list[dict], model: str, label: str, current: int) -> int | None:
    for entry in reversed(entries):
        if (entry["action"] == "promote" and entry["model"] == model and entry["label"] == label
                and entry["to"] == current):
            return entry["from"]
    return None


def _write(serving_root: str, state: dict):
    """Re-derives every model's served versions from its labels and pushes, then writes the
    config. Versions no longer on disk are dropped (TF Serving would fail to load them)."""
    entries = history(serving_root)
    # A pushed model the config does not name (its Pusher lost a write race with another grid
    # cell's on an object store, where there is no lock) is named again, newest version labelled.
    for name in (n.rstrip("/") for n in tf.io.gfile.listdir(serving_root)):
        base = os.path.join(serving_root, name)
        if name not in state and not name.startswith(".") and config_lib.pushed_versions(base):
            newest = config_lib.pushed_versions(base)[-1]
            state[name] = {"base_path": base, "versions": [newest],
                           "labels": {config_lib.STABLE: newest, config_lib.CANARY: newest}}
    for name, model in state.items():
        on_disk = config_lib.pushed_versions(model["base_path"])
        if not on_disk:
            continue
        labels = {k: v for k, v in model["labels"].items() if v in on_disk}
        previous = {_rollback_target(entries, name, label, version)
                    for label, version in labels.items()}
        served = {on_disk[-1], *labels.values(), *(v for v in previous if v in on_disk)}
        model["labels"], model["versions"] = labels, sorted(served)
    config_lib.write_atomically(os.path.join(serving_root, config_lib.MODELS_CONFIG),
                                config_lib.render_models_config(state))


def record_push(serving_root: str, model: str, version: int) -> dict:
    """Adds a pushed version to models.config; returns the model's entry."""
    with _locked(serving_root):
        state = read_state(serving_root)
        entry = state.setdefault(model, {"base_path": os.path.join(serving_root, model),
                                         "versions": [], "labels": {}})
        entry["versions"] = sorted(set(entry["versions"]) | {version})
        if not entry["labels"]:
            entry["labels"] = {config_lib.STABLE: version, config_lib.CANARY: version}
        _append_history(serving_root, {"action": "push", "model": model, "version": version})
        _write(serving_root, state)
        return state[model]


def _model(state: dict, model: str) -> dict:
    if model not in state:
        raise ReleaseError(f"no model named {model!r} in models.config "
                           f"(models: {', '.join(sorted(state)) or 'none'})")
    return state[model]


def promote(serving_root: str, model: str, label: str = config_lib.STABLE,
            version: int | None = None, reason: str = "") -> dict:
    """Points `label` at `version`; returns {"model", "label", "from", "to"}."""
    with _locked(serving_root):
        state = read_state(serving_root)
        entry = _model(state, model)
        on_disk = config_lib.pushed_versions(entry["base_path"])
        if version is None:
            version = (entry["labels"].get(config_lib.CANARY) if label == config_lib.STABLE
                       else None) or (on_disk[-1] if on_disk else None)
        if version not in on_disk:
            raise ReleaseError(f"{model} has no version {version} under {entry['base_path']} "
                               f"(pushed: {on_disk})")
        previous = entry["labels"].get(label)
        move = {"model": model, "label": label, "from": previous, "to": version}
        if previous != version:
            entry["labels"][label] = version
            _append_history(serving_root, {"action": "promote", **move, "reason": reason})
            _write(serving_root, state)
        return move


def rollback(serving_root: str, model: str, label: str = config_lib.STABLE,
             reason: str = "") -> dict:
    """Points `label` back at the version it held before its last promotion."""
    with _locked(serving_root):
        state = read_state(serving_root)
        entry = _model(state, model)
        current = entry["labels"].get(label)
        if current is None:
            raise ReleaseError(f"{model} has no {label!r} label to roll back")
        target = _rollback_target(history(serving_root), model, label, current)
        if target is None:
            raise ReleaseError(f"{model}: {label!r} -> {current} has no earlier version to roll "
                               f"back to (see {HISTORY})")
        if target not in config_lib.pushed_versions(entry["base_path"]):
            raise ReleaseError(f"{model}: version {target} is no longer pushed; cannot roll back")
        entry["labels"][label] = target
        move = {"model": model, "label": label, "from": current, "to": target}
        _append_history(serving_root, {"action": "rollback", **move, "reason": reason})
        _write(serving_root, state)
        return move


def champion(comparison_json: str) -> tuple[str, int, str]:
    """(model name, pushed version, reason) of the champion a model comparison chose: the exact
    version it evaluated, as its Pusher recorded it (champion.pushed.version)."""
    with tf.io.gfile.GFile(comparison_json) as f:
        comparison = json.load(f)
    try:
        name, reason = comparison["champion"]["model_name"], comparison["champion"].get("reason", "")
    except (KeyError, TypeError):
        raise ReleaseError(f"{comparison_json}: no champion.model_name") from None
    if not name:
        raise ReleaseError(f"{comparison_json}: the comparison chose no champion ({reason})")
    pushed = comparison["champion"].get("pushed") or {}
    if not pushed.get("pushed") or pushed.get("version") in (None, ""):
        raise ReleaseError(f"{comparison_json}: the champion {name} was not pushed (champion."
                           f"pushed: {pushed or None}); there is no version to promote")
    try:
        return name, int(pushed["version"]), reason
    except (TypeError, ValueError):
        raise ReleaseError(f"{comparison_json}: champion.pushed.version "
                           f"{pushed['version']!r} is not an integer") from None


def check_loadable(serving_root: str, model: str, version: int):
    """Refuses a version that is not pushed, or whose SavedModel has no `serve` MetaGraph (a
    label must never move to a version the server cannot load)."""
    from tensorflow.core.protobuf import saved_model_pb2

    entry = _model(read_state(serving_root), model)
    directories = config_lib.version_directories(entry["base_path"])
    if version not in directories:
        raise ReleaseError(f"{model} version {version} is not pushed under {entry['base_path']} "
                           f"(pushed: {sorted(directories)})")
    path = os.path.join(entry["base_path"], directories[version], "saved_model.pb")
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            saved = saved_model_pb2.SavedModel.FromString(f.read())
    except Exception as error:
        raise ReleaseError(f"{model} version {version} is not loadable: {path}: "
                           f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
                           ) from None
    if not any("serve" in g.meta_info_def.tags for g in saved.meta_graphs):
        raise ReleaseError(f"{model} version {version} is not loadable: {path} has no MetaGraph "
                           f"tagged 'serve'")


def promote_champion(serving_root: str, comparison_json: str, label: str = config_lib.STABLE,
                     reason: str = "") -> dict:
    """Points `label` at the exact version a model comparison evaluated and chose."""
    model, version, why = champion(comparison_json)
    check_loadable(serving_root, model, version)
    return promote(serving_root, model, label, version, reason or f"champion: {why}")
