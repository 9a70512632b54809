"""Hardening of `cardio serve`: request amplification and decode bombs refused before anything
is allocated, every batched request answered, HandleReloadConfigRequest restricted."""
from __future__ import annotations

import json
import resource
import socket
import struct
import threading
import time
import zlib

import grpc
import numpy as np
import pytest
import tensorflow as tf
from serving_helpers import export_version, png, start_cardio
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

from cardio import features as F
from cardio.imaging import decode
from cardio.serving import config as config_lib
from cardio.serving.batching import Batcher
from cardio.serving.errors import ServingError

MODEL = "cardio-tiny"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    export_version(str(tmp_path_factory.mktemp("exports")), str(root), MODEL, 1, seed=0)
    running = start_cardio([f"--model_base_path={root}/{MODEL}", f"--model_name={MODEL}",
                            "--max_tensor_elements=50000000", "--memory_limit_bytes=2147483648",
                            "--allow_reload_config_request=true",
                            f"--reload_config_allowed_roots={root}"])
    yield root, running
    running.stop()


def _declared(values: list[bytes], shape: list[int]) -> tensor_pb2.TensorProto:
    """A string TensorProto declaring `shape` but carrying only `values` (TensorFlow repeats
    the last value to fill it)."""
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING, string_val=values,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[{"size": d} for d in shape]))


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("shape, code", [([20_000_000], grpc.StatusCode.RESOURCE_EXHAUSTED),
                                         ([50_000_001], grpc.StatusCode.INVALID_ARGUMENT)])
def test_a_small_request_declaring_a_huge_tensor_is_refused_before_expansion(served, shape, code):
    _, running = served
    before, started = _max_rss_mb(), time.monotonic()
    with running.client(timeout=60, retries=0) as client:
        with pytest.raises(grpc.RpcError) as raised:
            client.predict_raw({"image_bytes": _declared([b"x"], shape)}, MODEL)
        assert raised.value.code() == code, raised.value.details()
        assert "image_bytes" in raised.value.details()
        # Refused in well under a second, without the gigabytes expansion costs (13.8 s, +4.9 GB
        # before this check).
        assert time.monotonic() - started < 5
        assert _max_rss_mb() - before < 200
        assert client.predict([png(0)], MODEL)[0]["version"] == 1


def _png_declaring(width: int, height: int) -> bytes:
    """A few hundred bytes of valid PNG header declaring a 16-bit width x height image."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 200_000)) + chunk(b"IEND", b""))


def test_decode_bomb_is_refused_from_its_header_without_decoding(served):
    _, running = served
    bomb = _png_declaring(16000, 16000)
    assert len(bomb) < 2000
    before, started = _max_rss_mb(), time.monotonic()
    with running.client(timeout=60, retries=0) as client:
        with pytest.raises(grpc.RpcError) as raised:
            client.predict([bomb], MODEL)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "image too large" in raised.value.details()
        assert "[16000 16000]" in raised.value.details()
        assert time.monotonic() - started < 5 and _max_rss_mb() - before < 200
        assert client.predict([png(1)], MODEL)[0]["version"] == 1


def test_the_pixel_limit_is_configurable_and_baked_into_the_export(served):
    root, _ = served
    with open(root / MODEL / "1" / F.ASSETS_EXTRA / F.METADATA_FILE) as f:
        assert json.load(f)["max_pixels"] == decode.MAX_SERVING_PIXELS == 12_000 * 12_000
    decoded = tf.function(lambda image: decode.decode_radiograph(image, max_pixels=40 * 32))
    assert decoded(tf.constant(png(0, size=(40, 32)))).shape == [40, 32, 1]
    with pytest.raises(tf.errors.InvalidArgumentError, match="1280 pixels"):
        decoded(tf.constant(png(0, size=(40, 33))))
    # The trainer's decode (no limit) is unchanged.
    assert decode.decode_radiograph(tf.constant(png(0, size=(400, 400)))).shape == [400, 400, 1]


def test_an_unexpected_exception_fails_its_batch_with_internal_and_the_thread_survives():
    calls = []

    def run(signature, inputs):
        calls.append(len(inputs["x"]))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return {"y": inputs["x"] * 2}

    batcher = Batcher(run, config_lib.BatchingConfig(max_batch_size=4, batch_timeout_micros=1000,
                                                     num_batch_threads=1), "test")
    try:
        with pytest.raises(ServingError) as raised:
            batcher.submit("s", {"x": np.ones([1])}, 1, timeout=10)
        assert raised.value.code == grpc.StatusCode.INTERNAL and "boom" in raised.value.message
        np.testing.assert_array_equal(
            batcher.submit("s", {"x": np.ones([2])}, 2, timeout=10)["y"], [2, 2])
    finally:
        batcher.close()


def test_a_batched_request_waits_at_most_its_deadline():
    release = threading.Event()

    def run(signature, inputs):
        release.wait(10)
        return {"y": inputs["x"]}

    batcher = Batcher(run, config_lib.BatchingConfig(max_batch_size=1, batch_timeout_micros=0,
                                                     num_batch_threads=1), "test")
    try:
        first = threading.Thread(target=lambda: batcher.submit("s", {"x": np.ones([1])}, 1, 10))
        first.start()
        started = time.monotonic()
        with pytest.raises(ServingError) as raised:
            batcher.submit("s", {"x": np.ones([1])}, 1, timeout=0.3)
        assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 3
    finally:
        release.set()
        first.join()
        batcher.close()


def _reload(running, base_path: str):
    config = config_lib.ModelServerConfig()
    config.model_config_list.config.add(name=MODEL, base_path=base_path, model_platform="tensorflow")
    stub = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(running.target))
    return stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config),
                                          timeout=60)


def test_reload_config_is_restricted_to_allowed_roots_or_disabled(served, tmp_path):
    root, running = served
    for outside in (str(tmp_path), f"{root}/../elsewhere"):
        with pytest.raises(grpc.RpcError) as raised:
            _reload(running, outside)
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "--reload_config_allowed_roots" in raised.value.details()
    assert _reload(running, f"{root}/{MODEL}").status.error_code == 0
    disabled = start_cardio([f"--model_base_path={root}/{MODEL}", f"--model_name={MODEL}",
                             "--allow_reload_config_request=false"])
    try:
        with pytest.raises(grpc.RpcError) as raised:
            _reload(disabled, f"{root}/{MODEL}")
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        disabled.stop()


def test_bind_address_is_where_the_ports_listen(served):
    from cardio.serving import server as server_lib

    root, _ = served
    server = server_lib.Server(server_lib.parse_flags([
        f"--model_base_path={root}/{MODEL}", f"--model_name={MODEL}", "--port=0",
        "--rest_api_port=-1", "--bind_address=127.0.0.2"]))
    server.start()
    try:
        for host, reachable in (("127.0.0.2", True), ("127.0.0.1", False)):
            for port in (server.port, server.rest_port):
                with socket.socket() as s:
                    s.settimeout(5)
                    assert (s.connect_ex((host, port)) == 0) == reachable, (host, port)
    finally:
        server.stop(grace=0.5)
