"""The files tensorflow_model_server reads, release labels, the atomic Pusher and the flags of
`cardio serve`: no server, no model, fast."""
from __future__ import annotations

import json
import os
import re

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2
from tfx.types import standard_artifacts

from cardio.components import pusher
from cardio.serving import config as config_lib, releases, server as server_lib

MODEL = "cardio-mobilenet-75-25"


def test_models_config_is_tf_servings_text_format(tmp_path):
    text = config_lib.render_models_config({MODEL: {
        "base_path": "/models/" + MODEL, "versions": [3, 1], "labels": {"stable": 1, "canary": 3}}})
    parsed = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    (entry,) = parsed.model_config_list.config
    assert (entry.name, entry.base_path, entry.model_platform) == (MODEL, "/models/" + MODEL,
                                                                   "tensorflow")
    assert list(entry.model_version_policy.specific.versions) == [1, 3]
    assert dict(entry.version_labels) == {"stable": 1, "canary": 3}
    assert config_lib.models_from_config(parsed)[MODEL]["labels"] == {"stable": 1, "canary": 3}


def test_batching_parameters_round_trip_and_read_tf_servings_own_examples():
    text = config_lib.render_batching_parameters(config_lib.BatchingConfig(
        max_batch_size=16, batch_timeout_micros=2000, num_batch_threads=3,
        allowed_batch_sizes=(4, 8, 16)))
    assert "max_batch_size {\n  value: 16\n}" in text     # Int64Value wrappers, as TF Serving's
    assert config_lib.parse_batching_parameters(text) == config_lib.BatchingConfig(
        max_batch_size=16, batch_timeout_micros=2000, num_batch_threads=3,
        max_enqueued_batches=64, allowed_batch_sizes=(4, 8, 16))
    # The example in TF Serving's batching guide.
    guide = ("max_batch_size { value: 128 }\nbatch_timeout_micros { value: 0 }\n"
             "max_enqueued_batches { value: 1000000 }\nnum_batch_threads { value: 8 }\n")
    parsed = config_lib.parse_batching_parameters(guide)
    assert (parsed.max_batch_size, parsed.max_enqueued_batches, parsed.num_batch_threads) == \
        (128, 1000000, 8)
    with pytest.raises(config_lib.ConfigError, match="Invalid protobuf file: 'batching.txt'") \
            as error:
        config_lib.parse_batching_parameters("max_batch_size: 3", "batching.txt")
    assert error.value.detail.startswith(
        "Error parsing text-format tensorflow.serving.BatchingParameters: 1:17")
    with pytest.raises(ValueError, match="allowed_batch_sizes"):
        config_lib.parse_batching_parameters("max_batch_size { value: 8 } allowed_batch_sizes: 4")


def _push(root, version):
    os.makedirs(os.path.join(root, MODEL, str(version)))
    return releases.record_push(root, MODEL, version)


def test_first_push_is_stable_and_canary_later_pushes_wait_for_promotion(tmp_path):
    root = str(tmp_path)
    assert _push(root, 1)["labels"] == {"stable": 1, "canary": 1}
    entry = _push(root, 2)
    assert entry["labels"] == {"stable": 1, "canary": 1} and entry["versions"] == [1, 2]
    assert releases.promote(root, MODEL, "canary") == {"model": MODEL, "label": "canary",
                                                       "from": 1, "to": 2}
    # stable follows canary by default.
    assert releases.promote(root, MODEL)["to"] == 2
    _push(root, 3)
    state = releases.read_state(root)[MODEL]
    # Labelled versions, the newest push, and the version stable held before (instant rollback).
    assert state["versions"] == [1, 2, 3] and state["labels"] == {"stable": 2, "canary": 2}


def test_rollback_walks_back_through_promotions(tmp_path):
    root = str(tmp_path)
    for version in (1, 2, 3):
        _push(root, version)
    releases.promote(root, MODEL, "stable", 2)
    releases.promote(root, MODEL, "stable", 3, reason="better external AUC")
    assert releases.rollback(root, MODEL)["to"] == 2
    assert releases.rollback(root, MODEL)["to"] == 1
    with pytest.raises(releases.ReleaseError, match="no earlier version"):
        releases.rollback(root, MODEL)
    assert releases.read_state(root)[MODEL]["labels"]["stable"] == 1
    actions = [(e["action"], e.get("to")) for e in releases.history(root)]
    assert actions[-2:] == [("rollback", 2), ("rollback", 1)]
    assert any(e.get("reason") == "better external AUC" for e in releases.history(root))


def test_a_model_lost_from_the_config_by_a_write_race_is_named_again(tmp_path):
    root = str(tmp_path)
    _push(root, 1)
    os.makedirs(os.path.join(root, "other-model", "5"))
    releases.record_push(root, "other-model", 5)
    # Another Pusher overwrote the config without "other-model" (no lock on object stores).
    state = releases.read_state(root)
    del state["other-model"]
    config_lib.write_atomically(os.path.join(root, config_lib.MODELS_CONFIG),
                                config_lib.render_models_config(state))
    _push(root, 2)
    healed = releases.read_state(root)
    assert healed["other-model"]["labels"] == {"stable": 5, "canary": 5}
    assert healed[MODEL]["versions"] == [1, 2]


def test_release_errors_name_the_problem(tmp_path):
    root = str(tmp_path)
    _push(root, 1)
    with pytest.raises(releases.ReleaseError, match="no model named 'other'"):
        releases.promote(root, "other")
    with pytest.raises(releases.ReleaseError, match="no version 7"):
        releases.promote(root, MODEL, "stable", 7)
    comparison = tmp_path / "comparison.json"
    comparison.write_text(json.dumps({"champion": {
        "model_name": MODEL, "reason": "highest AUC",
        "pushed": {"pushed": True, "destination": root, "version": "1"}}}))
    assert releases.champion(str(comparison)) == (MODEL, 1, "highest AUC")
    comparison.write_text(json.dumps({"champion": {"model_name": MODEL, "reason": "r",
                                                   "pushed": {"pushed": False}}}))
    with pytest.raises(releases.ReleaseError, match="was not pushed"):
        releases.champion(str(comparison))
    comparison.write_text("{}")
    with pytest.raises(releases.ReleaseError, match="champion"):
        releases.champion(str(comparison))


def _pusher_inputs(tmp_path, blessed: bool):
    model = standard_artifacts.Model()
    model.uri = str(tmp_path / "model")
    export_dir = tmp_path / "model" / "Format-Serving"
    (export_dir / "variables").mkdir(parents=True)
    (export_dir / "saved_model.pb").write_bytes(b"graph")
    (export_dir / "variables" / "variables.index").write_bytes(b"index")
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = str(tmp_path / "blessing")
    blessing.set_int_custom_property("blessed", int(blessed))
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp_path / "pushed")
    return {"model": [model], "model_blessing": [blessing]}, {"pushed_model": [pushed]}


def _exec_properties(root):
    return {"push_destination": json.dumps(
                {"filesystem": {"base_directory": os.path.join(root, MODEL)}}),
            "custom_config": json.dumps({"batching": {"max_batch_size": 4,
                                                      "batch_timeout_micros": 1000}})}


def test_pusher_copies_atomically_and_writes_the_serving_configs(tmp_path):
    root = str(tmp_path / "serving")
    # A push killed mid-copy left a partial directory: TF Serving ignores it, the next push
    # replaces it.
    os.makedirs(os.path.join(root, MODEL, ".incomplete-5"))
    inputs, outputs = _pusher_inputs(tmp_path, blessed=True)
    pusher.Executor().Do(inputs, outputs, _exec_properties(root))
    (version,) = config_lib.pushed_versions(os.path.join(root, MODEL))
    version_dir = os.path.join(root, MODEL, str(version))
    assert sorted(os.listdir(version_dir)) == ["saved_model.pb", "variables"]
    assert not [n for n in os.listdir(os.path.join(root, MODEL)) if n.startswith(".incomplete")
                and n != ".incomplete-5"]
    pushed = outputs["pushed_model"][0]
    assert pushed.get_int_custom_property("pushed") == 1
    assert pushed.get_string_custom_property("pushed_destination") == version_dir
    config = config_lib.read_models_config(os.path.join(root, config_lib.MODELS_CONFIG))
    assert config.model_config_list.config[0].version_labels["stable"] == version
    batching = open(os.path.join(root, config_lib.BATCHING_PARAMETERS)).read()
    assert config_lib.parse_batching_parameters(batching).max_batch_size == 4
    # A second push gets a higher version; labels stay until promoted.
    inputs, outputs = _pusher_inputs(tmp_path / "again", blessed=True)
    pusher.Executor().Do(inputs, outputs, _exec_properties(root))
    versions = config_lib.pushed_versions(os.path.join(root, MODEL))
    assert len(versions) == 2 and versions[1] > versions[0]
    assert releases.read_state(root)[MODEL]["labels"]["stable"] == version


def test_pusher_pushes_nothing_unblessed(tmp_path):
    root = str(tmp_path / "serving")
    inputs, outputs = _pusher_inputs(tmp_path, blessed=False)
    pusher.Executor().Do(inputs, outputs, _exec_properties(root))
    assert outputs["pushed_model"][0].get_int_custom_property("pushed") == 0
    assert not os.path.exists(os.path.join(root, config_lib.MODELS_CONFIG))


def test_flags_are_tensorflow_model_servers():
    options = server_lib.parse_flags([
        "--port=9000", "--model_config_file", "/m/models.config", "--enable_batching",
        "--batching_parameters_file=/m/b.txt", "--model_config_file_poll_wait_seconds=60",
        "--grpc_channel_arguments=grpc.max_receive_message_length=1024", "--grpc_max_threads=16",
        "--noenable_model_warmup"])
    assert (options.port, options.model_config_file, options.enable_batching,
            options.model_config_file_poll_wait_seconds, options.grpc_max_threads,
            options.enable_model_warmup) == (9000, "/m/models.config", True, 60, 16, False)
    assert server_lib.parse_flags(["--model_base_path=/m/x", "--enable_batching=false"]) \
        .enable_batching is False
    assert dict(server_lib.channel_arguments("grpc.max_receive_message_length=1024,"
                                             "grpc.primary_user_agent=x")) == {
        "grpc.max_receive_message_length": 1024, "grpc.max_send_message_length": -1,
        "grpc.primary_user_agent": "x"}


@pytest.mark.parametrize("argv, message", [
    (["--model_base_path=/m", "--grpc_socket_path=/s"], "--grpc_socket_path is a "
                                                        "tensorflow_model_server flag that cardio "
                                                        "serve does not"),
    (["--model_base_path=/m", "--ssl_config_file=x"], "does not implement"),
    (["--model_base_path=/m", "--prot=1"], "unknown flag --prot"),
    (["--port=8500"], "Both --model_base_path and --model_config_file are empty"),
    (["--model_base_path=/m", "--port=abc"], "expected an integer"),
    (["--model_base_path=/m", "--enable_batching=maybe"], "expected true or false"),
    (["--model_base_path=/m", "--grpc_channel_arguments=novalue"], None),
])
def test_flags_it_does_not_implement_are_refused_by_name(argv, message):
    with pytest.raises(server_lib.FlagError, match=message and re.escape(message)):
        options = server_lib.parse_flags(argv)
        server_lib.channel_arguments(options.grpc_channel_arguments)


def test_a_missing_config_file_fails_with_tf_servings_one_line(tmp_path, capsys):
    missing = tmp_path / "absent" / "models.config"
    assert server_lib.main([f"--model_config_file={missing}"]) == 255
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"Failed to start server. Error: NOT_FOUND: {missing}; No such file or "
                   f"directory"], out
