"""Tiny exported models and server launchers for the serving tests.

The same contract tests run against `cardio serve` (in-process) and, when one is on PATH, the
real `tensorflow_model_server` binary (a subprocess with the same flags)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from cardio.components import pusher
from cardio.serving import client as client_lib, config as config_lib, server as server_lib
from cardio.trainer import export

IMAGE_SIZE = 16
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_classifier(seed: int) -> keras.Model:
    """Shaped like trainer.model's classifiers (scaling, a nested backbone ending in global
    average pooling, a one-unit head) but with a few hundred weights."""
    keras.utils.set_random_seed(seed)
    backbone_input = keras.Input([IMAGE_SIZE, IMAGE_SIZE, 3])
    features = keras.layers.Conv2D(4, 3, activation="relu")(backbone_input)
    backbone = keras.Model(backbone_input, keras.layers.GlobalAveragePooling2D()(features))
    inputs = keras.Input([IMAGE_SIZE, IMAGE_SIZE, 3])
    hidden = backbone(keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs))
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(hidden))


def export_version(staging: str, serving_root: str, model: str, version: int, seed: int,
                   threshold: float = 0.5) -> str:
    """Exports a tiny model and pushes it as the Pusher does (atomic copy)."""
    export_dir = os.path.join(staging, f"{model}-{version}")
    if not os.path.exists(export_dir):
        export.export(tiny_classifier(seed), export_dir, IMAGE_SIZE, threshold)
    return pusher.push_version(export_dir, serving_root, model, version)


def png(seed: int, size=(40, 32), bits: int = 16) -> bytes:
    rng = np.random.default_rng(seed)
    dtype = np.uint16 if bits == 16 else np.uint8
    pixels = rng.integers(0, np.iinfo(dtype).max, size=size, dtype=dtype)
    return tf.io.encode_png(pixels[..., None]).numpy()


def jpeg(seed: int, size=(40, 32)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, size=size, dtype=np.uint8)
    return tf.io.encode_jpeg(pixels[..., None]).numpy()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """A started server: its gRPC target, its REST base URL (when --rest_api_port was given),
    and for cardio serve the in-process server."""

    def __init__(self, target: str, server=None, process=None, rest: str | None = None):
        self.target, self.server, self.process, self.rest = target, server, process, rest

    def client(self, **kwargs) -> client_lib.Client:
        return client_lib.Client(self.target, **kwargs)

    def stop(self):
        if self.server:
            self.server.stop(grace=0.5)
        if self.process:
            self.process.terminate()
            self.process.wait(timeout=30)


def start_cardio(flags: list[str]) -> Running:
    options = server_lib.parse_flags(flags + ["--port=0"])
    server = server_lib.Server(options, host="127.0.0.1")
    port = server.start()
    rest = f"http://127.0.0.1:{server.rest_port}" if server.rest_port else None
    return Running(f"127.0.0.1:{port}", server=server, rest=rest)


def start_tensorflow_model_server(flags: list[str]) -> Running:
    binary = shutil.which("tensorflow_model_server")
    if binary is None:
        pytest.skip("tensorflow_model_server is not on PATH (the official TF Serving binary); "
                    "the contract tests ran against cardio serve only")
    port, rest = free_port(), None
    if "--rest_api_port=-1" in flags:      # cardio serve's "any free port"
        rest = free_port()
        flags = [f"--rest_api_port={rest}" if f == "--rest_api_port=-1" else f for f in flags]
    process = subprocess.Popen([binary, f"--port={port}", *flags])
    running = Running(f"127.0.0.1:{port}", process=process,
                      rest=rest and f"http://127.0.0.1:{rest}")
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            grpc.channel_ready_future(grpc.insecure_channel(running.target)).result(timeout=1)
            return running
        except grpc.FutureTimeoutError:
            if process.poll() is not None:
                raise RuntimeError(f"tensorflow_model_server exited with {process.returncode}")
    running.stop()
    raise TimeoutError("tensorflow_model_server did not open its port in 120 s")


SERVERS = {"cardio": start_cardio, "tensorflow_model_server": start_tensorflow_model_server}


class GenericModel(tf.Module):
    """A model written for TF Serving, not for this project: a numeric predict signature whose
    shape checks are the model's own, a regress and a classify signature on tf.Examples."""

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
    def predict(self, x):
        with tf.control_dependencies([tf.debugging.assert_less(
                tf.size(x), 1000, message="x has 1000 or more values")]):
            return {"y": tf.reshape(x, [-1, 1]) * 2.0 + 1.0}

    @staticmethod
    def _x(examples):
        return tf.io.parse_example(examples, {"x": tf.io.FixedLenFeature([], tf.float32)})["x"]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(self, examples):
        return {"outputs": self._x(examples) * 2.0 + 1.0}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(self, examples):
        p = tf.sigmoid(self._x(examples))
        classes = tf.tile(tf.constant([["neg", "pos"]]), [tf.shape(p)[0], 1])
        return {"scores": tf.stack([1 - p, p], axis=1), "classes": classes}


def export_generic(base_path: str, directory: str) -> str:
    """GenericModel saved as `<base_path>/<directory>` (e.g. zero-padded `00000123`)."""
    module = GenericModel()
    path = os.path.join(base_path, directory)
    tf.saved_model.save(module, path, signatures={"serving_default": module.predict,
                                                  "regress": module.regress,
                                                  "classify": module.classify})
    # The method names an Estimator export writes (tf.saved_model.save writes "predict" for
    # every signature); TF Serving's MultiInference requires them.
    from tensorflow.core.protobuf import saved_model_pb2

    pb = os.path.join(path, "saved_model.pb")
    with open(pb, "rb") as f:
        saved = saved_model_pb2.SavedModel.FromString(f.read())
    for graph in saved.meta_graphs:
        graph.signature_def["regress"].method_name = "tensorflow/serving/regress"
        graph.signature_def["classify"].method_name = "tensorflow/serving/classify"
    with open(pb, "wb") as f:
        f.write(saved.SerializeToString())
    return path


def examples(*values: float) -> list:
    return [tf.train.Example(features=tf.train.Features(feature={
        "x": tf.train.Feature(float_list=tf.train.FloatList(value=[v]))})) for v in values]


def http(method: str, url: str, body=None, timeout: float = 60) -> tuple[int, object]:
    """(status, parsed JSON or text) of one plain HTTP request, as any HTTP client sends it."""
    import json
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def write_batching_file(path: str, **overrides) -> str:
    text = config_lib.render_batching_parameters(config_lib.BatchingConfig(**overrides))
    with open(path, "w") as f:
        f.write(text)
    return path


def wait_for(predicate, timeout: float = 60, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
