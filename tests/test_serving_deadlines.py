"""Deadlines and reloads: a request's deadline bounds its model run (gRPC deadline,
--rest_api_timeout_in_ms), reload requests never hold Predict workers, allowed roots are
compared after resolving symlinks."""
from __future__ import annotations

import concurrent.futures
import os
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from serving_helpers import export_generic, http, start_cardio
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

from cardio.serving import config as config_lib

SLOW, GOOD, BROKEN = "slow", "good", "broken"


class _Slow(tf.Module):
    """Busy for `seconds` (a graph loop on the clock), then answers them back."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float64, name="seconds")])
    def predict(self, seconds):
        end = tf.timestamp() + seconds[0]
        count = tf.while_loop(lambda i: tf.timestamp() < end, lambda i: i + 1,
                              [tf.constant(0, tf.int64)])
        return {"seconds": seconds + 0.0 * tf.cast(count, tf.float64)}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    module = _Slow()
    tf.saved_model.save(module, str(root / SLOW / "1"),
                        signatures={"serving_default": module.predict})
    export_generic(str(root / GOOD), "1")
    (root / BROKEN / "1").mkdir(parents=True)
    (root / BROKEN / "1" / "saved_model.pb").write_bytes(b"not a SavedModel")
    return root


@pytest.fixture(scope="module")
def served(root):
    running = start_cardio([f"--model_base_path={root}/{SLOW}", f"--model_name={SLOW}",
                            "--rest_api_port=-1", "--rest_api_timeout_in_ms=500"])
    yield running
    running.stop()


@pytest.mark.parametrize("batching", [False, True])
def test_a_grpc_deadline_bounds_the_model_run(root, batching):
    flags = [f"--model_base_path={root}/{SLOW}", f"--model_name={SLOW}"]
    running = start_cardio(flags + ["--enable_batching"] if batching else flags)
    try:
        with running.client(timeout=0.5, retries=0) as client:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as raised:
                client.predict_raw({"seconds": np.array([2.0])}, SLOW)
            assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - started < 1.5
        with running.client(timeout=30, retries=0) as client:
            assert tf.make_ndarray(client.predict_raw({"seconds": np.array([0.01])}, SLOW)
                                   .outputs["seconds"]).tolist() == [0.01]
    finally:
        running.stop()


def test_the_rest_timeout_bounds_the_model_run(served):
    started = time.monotonic()
    status, body = http("POST", f"{served.rest}/v1/models/{SLOW}:predict",
                        {"instances": [2.0]})
    assert status == 504 and "Deadline exceeded" in body["error"], body
    assert time.monotonic() - started < 1.5
    assert http("POST", f"{served.rest}/v1/models/{SLOW}:predict",
                {"instances": [0.01]}) == (200, {"predictions": [0.01]})


def _reload(target: str, root, *names, timeout: float):
    config = config_lib.ModelServerConfig()
    for name in names:
        config.model_config_list.config.add(name=name, base_path=str(root / name),
                                            model_platform="tensorflow")
    stub = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(target))
    try:
        stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config),
                                       timeout=timeout)
        return "OK"
    except grpc.RpcError as error:
        return error.code().name


def test_reloads_never_hold_predict_workers(root):
    # The broken version's load retries for 20 s; 8 reloads asking for it, on 2 workers.
    running = start_cardio([f"--model_base_path={root}/{GOOD}", f"--model_name={GOOD}",
                            "--grpc_max_threads=2", "--max_num_load_retries=100",
                            "--load_retry_interval_micros=200000",
                            f"--reload_config_allowed_roots={root}"])
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool, \
                running.client(timeout=10, retries=0) as client:
            reloads = [pool.submit(_reload, running.target, root, GOOD, BROKEN, timeout=3)
                       for _ in range(8)]
            time.sleep(0.5)
            for _ in range(5):
                started = time.monotonic()
                answer = client.predict_raw({"x": np.ones([1, 1], np.float32)}, GOOD)
                assert tf.make_ndarray(answer.outputs["y"]).tolist() == [[3.0]]
                assert time.monotonic() - started < 1
            answers = sorted(r.result() for r in reloads)
        # One waited for the loads until its deadline; the others were answered at once
        # (another reload waits, or past --grpc_max_concurrent_rpcs, 4 per worker).
        assert answers[0] == "DEADLINE_EXCEEDED", answers
        assert set(answers[1:]) <= {"UNAVAILABLE", "RESOURCE_EXHAUSTED"}, answers
    finally:
        running.stop()


def test_allowed_roots_are_compared_after_resolving_symlinks(root, tmp_path):
    outside = tmp_path / "outside"
    export_generic(str(outside), "1")
    link = root / "link"
    os.symlink(outside, link)
    running = start_cardio([f"--model_base_path={root}/{GOOD}", f"--model_name={GOOD}",
                            f"--reload_config_allowed_roots={root}"])
    try:
        assert _reload(running.target, root, "link", timeout=30) == "PERMISSION_DENIED"
        assert _reload(running.target, root, GOOD, timeout=30) == "OK"
    finally:
        running.stop()
        link.unlink()
