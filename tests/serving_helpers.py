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
    """A started server: its target, and for cardio serve the in-process manager."""

    def __init__(self, target: str, server=None, process=None):
        self.target, self.server, self.process = target, server, process

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
    return Running(f"127.0.0.1:{port}", server=server)


def start_tensorflow_model_server(flags: list[str]) -> Running:
    binary = shutil.which("tensorflow_model_server")
    if binary is None:
        pytest.skip("tensorflow_model_server is not on PATH (the official TF Serving binary); "
                    "the contract tests ran against cardio serve only")
    port = free_port()
    process = subprocess.Popen([binary, f"--port={port}", *flags])
    running = Running(f"127.0.0.1:{port}", process=process)
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
