"""Memory safety by default: caps derived from the server's memory limit; a request whose
expansion does not fit in what is left is refused before it allocates, whatever its encoding;
gRPC concurrency bounded."""
from __future__ import annotations

import concurrent.futures
import json
import time

import grpc
import numpy as np
import psutil
import pytest
import tensorflow as tf
from serving_helpers import export_generic, http, start_cardio, write_batching_file
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from cardio.serving import memory

MODEL = "generic"
LIMIT = 256 << 20       # under this process's size: the smallest budget, LIMIT / 16
RPCS = 2


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    export_generic(str(root / MODEL), "1")
    # A batch waits up to 1.5 s for company: requests stay in flight long enough to count them.
    batching = write_batching_file(str(root / "batching.txt"), max_batch_size=8,
                                   batch_timeout_micros=1_500_000, num_batch_threads=1)
    running = start_cardio([f"--model_base_path={root}/{MODEL}", f"--model_name={MODEL}",
                            f"--memory_limit_bytes={LIMIT}", "--rest_api_port=-1",
                            f"--grpc_max_concurrent_rpcs={RPCS}", "--enable_batching",
                            f"--batching_parameters_file={batching}"])
    yield running
    running.stop()


def _proto(dtype, shape, **values) -> tensor_pb2.TensorProto:
    return tensor_pb2.TensorProto(
        dtype=dtype, **values,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[{"size": d} for d in shape]))


def _refused(running, proto, code=grpc.StatusCode.RESOURCE_EXHAUSTED) -> str:
    process = psutil.Process()
    before, started = process.memory_info().rss, time.monotonic()
    with running.client(timeout=30, retries=0) as client:
        with pytest.raises(grpc.RpcError) as raised:
            client.predict_raw({"x": proto}, MODEL)
    assert raised.value.code() == code, raised.value.details()
    assert time.monotonic() - started < 3
    assert (process.memory_info().rss - before) / 2**20 < 32
    return raised.value.details()


def test_caps_follow_the_documented_formula_and_the_limit_sources(served, monkeypatch):
    assert memory.derived(2 << 30, 1 << 30, 16) == {
        "budget": 512 << 20, "max_tensor_bytes": (512 << 20) // 12,
        "max_message_bytes": 16 << 20, "rest_api_max_body_bytes": 32 << 20}
    assert memory.derived(2 << 30, 4 << 30, 16)["budget"] == 128 << 20
    assert served.server.caps["budget"] == LIMIT // 16 == served.server.budget.total
    monkeypatch.setenv(memory.ENV, str(3 << 30))
    assert memory.memory_limit(1 << 30) == (1 << 30, "--memory_limit_bytes")
    assert memory.memory_limit() == (3 << 30, memory.ENV)
    monkeypatch.delenv(memory.ENV)
    assert memory.memory_limit()[0] <= psutil.virtual_memory().total


def test_float_val_repeated_to_a_huge_shape_is_refused_before_expansion(served):
    # 32 bytes on the wire; 512 MiB once expanded (the 4 GB peak).
    details = _refused(served, _proto(types_pb2.DT_FLOAT, [134217728, 1], float_val=[1.0]))
    assert "--max_tensor_bytes" in details


def test_strings_repeated_to_a_huge_shape_are_refused_before_expansion(served):
    details = _refused(served, _proto(types_pb2.DT_STRING, [1_000_000, 1],
                                      string_val=[b"x" * 1000]))
    assert "--max_tensor_bytes" in details


def test_tensor_content_past_the_message_cap_is_refused_by_grpc(served):
    rows = served.server.caps["max_message_bytes"] // 4 + 1
    proto = _proto(types_pb2.DT_FLOAT, [rows, 1],
                   tensor_content=np.zeros([rows, 1], np.float32).tobytes())
    assert "larger than max" in _refused(served, proto)


def test_a_request_that_does_not_fit_in_what_is_left_is_refused(served):
    budget = served.server.budget
    proto = _proto(types_pb2.DT_FLOAT, [1 << 16, 1], float_val=[1.0])    # 256 KiB, 1.5 MiB held
    budget.reserve(budget.total - (1 << 20), "other requests")
    try:
        assert "are free (--memory_limit_bytes)" in _refused(served, proto)
        status, body = http("POST", f"{served.rest}/v1/models/{MODEL}:predict",
                            {"instances": [[1.0]] * 100_000})
        assert status == 429 and "--memory_limit_bytes" in body["error"], body
    finally:
        budget.release(budget.total - (1 << 20))
    assert budget.used == 0
    with served.client(timeout=30, retries=0) as client:    # the budget is whole again
        answer = client.predict_raw({"x": np.ones([8, 1], np.float32)}, MODEL)
        np.testing.assert_array_equal(tf.make_ndarray(answer.outputs["y"]), np.full([8, 1], 3.0))


def test_a_rest_body_whose_json_expands_past_the_budget_is_429(served):
    cap = served.server.caps["rest_api_max_body_bytes"]
    body = json.dumps({"instances": [[0]] * (cap // 5 - 10)}).encode()
    assert len(body) <= cap
    process = psutil.Process()
    before = process.memory_info().rss
    import urllib.request
    request = urllib.request.Request(f"{served.rest}/v1/models/{MODEL}:predict", data=body,
                                     method="POST")
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=30)
    assert raised.value.code == 429 and b"the JSON body" in raised.value.read()
    assert (process.memory_info().rss - before) / 2**20 < 32
    assert budget_is_free(served)


def budget_is_free(running) -> bool:
    return running.server.budget.used == 0


def test_grpc_concurrency_past_the_limit_is_resource_exhausted(served):
    with served.client(timeout=30, retries=0) as client:
        def one(_):
            return client.predict_raw({"x": np.ones([1, 1], np.float32)}, MODEL)

        with concurrent.futures.ThreadPoolExecutor(RPCS) as pool:
            waiting = [pool.submit(one, i) for i in range(RPCS)]
            time.sleep(0.5)              # both wait in the batcher for 1.5 s
            with pytest.raises(grpc.RpcError) as raised:
                one(0)
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            for done in waiting:
                assert tf.make_ndarray(done.result().outputs["y"]).tolist() == [[3.0]]
