"""Peak memory of `cardio serve` under the worst request of each kind and under 64 concurrent
clients, with the caps its memory limit gives it (serving/memory.py).

The server runs as its own process (`cardio serve --memory_limit_bytes=2GiB`, the dev
overlay's pod limit) serving the demo's model and a numeric one (y = 2x + 1, float input
[?, 1]); its resident memory is sampled every 5 ms. Each row sends, to a fresh baseline, the
largest request the caps admit of one kind (or one just past them) and reports the peak over
the server's idle memory. Target: every peak under the limit.
"""
from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import psutil
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from benchmarks import serving_grpc
from cardio.serving import client as client_lib, config as config_lib

LIMIT = 2 << 30
CLIENTS = 64
NUMERIC = "numeric"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Numeric(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
    def predict(self, x):
        return {"y": x * 2.0 + 1.0}


class _Peak:
    """The highest resident memory of a process while the block runs."""

    def __init__(self, pid: int):
        self.process, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()

    def __enter__(self):
        self.base = self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc):
        time.sleep(0.05)
        self._stop.set()
        self._thread.join()


def _proto(dtype, shape, **values) -> tensor_pb2.TensorProto:
    return tensor_pb2.TensorProto(
        dtype=dtype, **values,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[{"size": d} for d in shape]))


def _outcome(call) -> str:
    try:
        call()
        return "OK"
    except grpc.RpcError as error:
        return error.code().name
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}"


def _post(url: str, body: bytes):
    request = urllib.request.Request(url, data=body, method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()


def main():
    with tempfile.TemporaryDirectory() as root:
        print("\nExporting the demo's model and a numeric one ...", flush=True)
        serving_grpc._export(root)
        tf.saved_model.save(_Numeric(), os.path.join(root, NUMERIC, "1"),
                            signatures={"serving_default": _Numeric().predict})
        with open(os.path.join(root, config_lib.MODELS_CONFIG), "w") as f:
            f.write(config_lib.render_models_config({
                name: {"base_path": os.path.join(root, name), "versions": [1]}
                for name in (serving_grpc.MODEL, NUMERIC)}))
        server = subprocess.Popen(
            [sys.executable, "-m", "cardio", "serve", "--port=0", "--rest_api_port=-1",
             f"--model_config_file={os.path.join(root, config_lib.MODELS_CONFIG)}",
             f"--memory_limit_bytes={LIMIT}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
        try:
            ready = json.loads(server.stdout.readline())
            caps = ready["memory_caps"]
            rows = _measure(server.pid, ready["port"], ready["rest_api_port"], caps)
        finally:
            server.terminate()
            server.wait(timeout=60)
    print(f"\ncardio serve peak resident memory, --memory_limit_bytes={LIMIT >> 20} MiB "
          f"({os.cpu_count()} cores: {16 * (os.cpu_count() or 1)} concurrent RPCs; caps: "
          + ", ".join(f"{k} {v >> 20} MiB" for k, v in caps.items()) + ")")
    print(f"{'request':<66}{'answer':>22}{'peak MiB':>10}{'over idle':>10}")
    for what, answer, peak, grown in rows:
        print(f"{what:<66}{answer:>22}{peak:>10.0f}{grown:>10.0f}")
    worst = max(r[2] for r in rows)
    print(f"Highest peak: {worst:.0f} MiB of the {LIMIT >> 20} MiB limit"
          + ("" if worst < LIMIT >> 20 else "  OVER THE LIMIT"))


def _measure(pid: int, port: int, rest_port: int, caps: dict) -> list[tuple]:
    cap, message = caps["max_tensor_bytes"], caps["max_message_bytes"]
    url = f"http://127.0.0.1:{rest_port}/v1/models"
    image = serving_grpc._images(1)[0]
    client = client_lib.Client(f"127.0.0.1:{port}", timeout=120, retries=0)

    def numeric(proto):
        return lambda: client.predict_raw({"x": proto}, NUMERIC)

    def strings(proto):
        return lambda: client.predict_raw({"image_bytes": proto}, serving_grpc.MODEL)

    at_cap = cap // 4 // 3        # a third of the cap: several fit in the budget at once
    kinds = [
        ("float_val x1, shape at the per-tensor cap",
         numeric(_proto(types_pb2.DT_FLOAT, [cap // 4, 1], float_val=[1.0]))),
        ("float_val x1, shape [134217728, 1] (the issue's 32 bytes)",
         numeric(_proto(types_pb2.DT_FLOAT, [134217728, 1], float_val=[1.0]))),
        ("float_val x1, a third of the cap (fits the budget)",
         numeric(_proto(types_pb2.DT_FLOAT, [at_cap, 1], float_val=[1.0]))),
        ("tensor_content at the gRPC message cap",
         numeric(_proto(types_pb2.DT_FLOAT, [message // 4 - 64, 1],
                        tensor_content=np.zeros([message // 4 - 64, 1], np.float32).tobytes()))),
        ("tensor_content past the gRPC message cap",
         numeric(_proto(types_pb2.DT_FLOAT, [message // 2, 1],
                        tensor_content=np.zeros([message // 2, 1], np.float32).tobytes()))),
        ("string_val x1 (1 byte), shape at the per-tensor cap",
         strings(_proto(types_pb2.DT_STRING, [cap // (1 + 48)], string_val=[b"x"]))),
        ("string_val x1 (1 byte), shape [134217728]",
         strings(_proto(types_pb2.DT_STRING, [134217728], string_val=[b"x"]))),
        ("string_val x1 (1 kB), shape past the cap",
         strings(_proto(types_pb2.DT_STRING, [10_000_000], string_val=[b"x" * 1000]))),
        ("REST: body at the cap, one b64 string",
         lambda: _post(f"{url}/{serving_grpc.MODEL}:predict", json.dumps({"instances": [
             {"b64": base64.b64encode(b"\0" * (caps["rest_api_max_body_bytes"] * 3 // 4 - 64))
              .decode()}]}).encode())),
        ("REST: body at the cap, numbers [[0],[0],...]",
         lambda: _post(f"{url}/{NUMERIC}:predict", b'{"instances": [' + b",".join(
             [b"[0]"] * (caps["rest_api_max_body_bytes"] // 4 - 8)) + b"]}")),
        ("REST: body past the cap (declared)",
         lambda: _post(f"{url}/{NUMERIC}:predict", b" " * (caps["rest_api_max_body_bytes"] + 1))),
        ("REST: a radiograph (b64 instances)",
         lambda: _post(f"{url}/{serving_grpc.MODEL}:predict", json.dumps({"instances": [
             {"b64": base64.b64encode(image).decode()}]}).encode())),
    ]
    rows = []
    try:
        strings(_proto(types_pb2.DT_STRING, [1], string_val=[image]))()   # warm
        for what, call in kinds:
            with _Peak(pid) as peak:
                answer = _outcome(call)
            rows.append((what, answer, peak.peak / 2**20, (peak.peak - peak.base) / 2**20))
        for what, call in (
                (f"{CLIENTS} gRPC clients at once, a radiograph each",
                 strings(_proto(types_pb2.DT_STRING, [1], string_val=[image]))),
                (f"{CLIENTS} gRPC clients at once, tensor_content at the message cap each",
                 kinds[3][1]),
                (f"{CLIENTS} gRPC clients at once, float_val a third of the cap each",
                 kinds[2][1]),
                (f"{CLIENTS} gRPC clients at once, float_val at the cap each", kinds[0][1]),
                (f"{CLIENTS} REST clients at once, a radiograph each", kinds[-1][1])):
            with _Peak(pid) as peak, concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
                answers = list(pool.map(lambda _: _outcome(call), range(CLIENTS)))
            counts = {a: answers.count(a) for a in sorted(set(answers))}
            rows.append((what, " ".join(f"{k} {v}" for k, v in counts.items()),
                         peak.peak / 2**20, (peak.peak - peak.base) / 2**20))
    finally:
        client.close()
    return rows


if __name__ == "__main__":
    main()
