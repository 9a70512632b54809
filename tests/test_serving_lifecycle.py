"""Versions come and go under traffic: warm-up before AVAILABLE, hot-loading a pushed version
with no failed request, labels moved by `cardio release` picked up by the config poll, message
limits, and a broken version failing alone."""
from __future__ import annotations

import threading

import grpc
import pytest
from serving_helpers import SERVERS, export_version, png, start_cardio, wait_for
from tensorflow_serving.apis import model_pb2

from cardio.serving import config as config_lib, releases

MODEL = "cardio-tiny"


@pytest.fixture(scope="module")
def staging(tmp_path_factory):
    return str(tmp_path_factory.mktemp("exports"))


def test_warmup_requests_are_replayed_before_the_version_is_available(tmp_path, staging):
    export_version(staging, str(tmp_path), MODEL, 1, seed=0)
    base = f"--model_base_path={tmp_path}/{MODEL}"
    for flags, calls in (([], 2), (["--enable_model_warmup=false"], 0)):
        running = start_cardio([base, f"--model_name={MODEL}", *flags])
        try:
            servable = running.server.manager.resolve(model_pb2.ModelSpec(name=MODEL))
            assert servable.model_calls == calls, flags
        finally:
            running.stop()


@pytest.mark.parametrize("kind", sorted(SERVERS))
def test_new_version_is_hot_loaded_during_traffic_with_no_failed_request(tmp_path, staging, kind):
    root = str(tmp_path)
    export_version(staging, root, MODEL, 1, seed=0)
    running = SERVERS[kind]([f"--model_base_path={root}/{MODEL}", f"--model_name={MODEL}",
                             "--file_system_poll_wait_seconds=1", "--enable_batching"])
    seen, failures, stop = set(), [], threading.Event()

    def traffic(seed):
        with running.client(timeout=60, retries=0) as client:
            while not stop.is_set():
                try:
                    seen.add(client.predict([png(seed)], MODEL)[0]["version"])
                except grpc.RpcError as error:
                    failures.append(f"{error.code()}: {error.details()}")

    threads = [threading.Thread(target=traffic, args=(i,)) for i in range(4)]
    try:
        for thread in threads:
            thread.start()
        wait_for(lambda: 1 in seen, what="traffic on version 1")
        export_version(staging, root, MODEL, 2, seed=1)       # the Pusher's atomic copy
        wait_for(lambda: 2 in seen, what="version 2 to be served")
        stop.set()
        for thread in threads:
            thread.join()
        assert failures == []
        with running.client() as client:
            # The default policy serves the latest version only: version 1 is unloaded.
            wait_for(lambda: client.status(MODEL).get(1) in (None, "END"), what="unload of 1")
            assert client.status(MODEL)[2] == "AVAILABLE"
            assert client.predict([png(0)], MODEL)[0]["version"] == 2
    finally:
        stop.set()
        running.stop()


@pytest.mark.parametrize("kind", sorted(SERVERS))
def test_release_promote_and_rollback_move_the_label_the_server_answers_with(tmp_path, staging,
                                                                            kind):
    root = str(tmp_path)
    for version, seed in ((1, 0), (2, 1)):
        export_version(staging, root, MODEL, version, seed)
        releases.record_push(root, MODEL, version)
    running = SERVERS[kind]([f"--model_config_file={root}/{config_lib.MODELS_CONFIG}",
                             "--model_config_file_poll_wait_seconds=1"])
    try:
        with running.client(timeout=60) as client:
            def stable_version():
                return client.predict([png(0)], MODEL, label="stable")[0]["version"]
            assert stable_version() == 1
            releases.promote(root, MODEL, config_lib.STABLE, 2, reason="test")
            wait_for(lambda: stable_version() == 2, what="stable -> 2")
            releases.rollback(root, MODEL, config_lib.STABLE, reason="test")
            wait_for(lambda: stable_version() == 1, what="stable back to 1")
    finally:
        running.stop()


def test_message_limit_set_through_channel_arguments(tmp_path, staging):
    export_version(staging, str(tmp_path), MODEL, 1, seed=0)
    running = start_cardio([f"--model_base_path={tmp_path}/{MODEL}", f"--model_name={MODEL}",
                            "--grpc_channel_arguments=grpc.max_receive_message_length=65536"])
    try:
        with running.client(timeout=60) as client:
            big = png(1, size=(400, 400))
            assert len(big) > 65536
            with pytest.raises(grpc.RpcError) as raised:
                client.predict([big], MODEL)
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert client.predict([png(2)], MODEL)[0]["version"] == 1
    finally:
        running.stop()


def test_a_broken_version_fails_alone(tmp_path, staging):
    export_version(staging, str(tmp_path), MODEL, 1, seed=0)
    broken = tmp_path / MODEL / "2"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    with open(tmp_path / "models.config", "w") as f:
        f.write(config_lib.render_models_config(
            {MODEL: {"base_path": str(tmp_path / MODEL), "versions": [1, 2]}}))
    running = start_cardio([f"--model_config_file={tmp_path}/models.config",
                            "--max_num_load_retries=0"])
    try:
        with running.client(timeout=60) as client:
            status = running.server.manager.statuses(model_pb2.ModelSpec(name=MODEL))
            assert {v: s.state for v, s in status} == {1: 30, 2: 50}   # AVAILABLE, END
            assert status[1][1].error is not None and status[0][1].error is None
            assert client.status(MODEL) == {1: "AVAILABLE", 2: "END"}
            assert client.predict([png(0)], MODEL, version=1)[0]["version"] == 1
            with pytest.raises(grpc.RpcError) as raised:
                client.predict([png(0)], MODEL, version=2)
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        running.stop()
