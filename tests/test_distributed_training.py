"""tf.distribute: MirroredStrategy over two logical CPU devices, and two-process
MultiWorkerMirroredStrategy on localhost ending with identical weights and the chief's export.

Each training runs in its own process: logical devices and TF_CONFIG must be set before
TensorFlow initialises its runtime."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from cardio import features as F
from cardio.data import convert
from cardio.trainer import export, model as model_lib

REPO = Path(__file__).resolve().parents[1]

MIRRORED_RUN = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tfx.components.trainer.fn_args_utils import FnArgs
from cardio.trainer import task
task.run_fn(FnArgs(**json.loads(sys.argv[1])))
"""

WORKER_RUN = """
import json, sys
import numpy as np
from tfx.components.trainer.fn_args_utils import FnArgs
from cardio.trainer import task
model = task.train_and_export(FnArgs(**json.loads(sys.argv[1])))
np.savez(sys.argv[2], *model.get_weights())
"""

CONFIG = {"backbone": "mobilenet_025", "weights": "random", "image_size": 64, "epochs": 2,
          "batch_size": 4, "steps_per_epoch": 3, "seed": 2}


@pytest.fixture(scope="module")
def span(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    convert.write_synthetic(str(root), 40, seed=4, size=128, span=1, external_sites=(), workers=1)
    return root / "span-1"


def _fn_args(span: Path, out: Path) -> dict:
    return {"train_files": [str(span / "train" / "*")],
            "eval_files": [str(span / "validation" / "*")],
            "serving_model_dir": str(out / "model" / "1" / "Format-Serving"),
            "model_run_dir": str(out / "model_run" / "1"), "custom_config": CONFIG}


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _free_ports(n: int) -> list:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _first_image(span: Path) -> bytes:
    files = sorted(str(p) for p in (span / "validation").glob("*"))
    record = next(iter(tf.data.TFRecordDataset(files, compression_type="GZIP")))
    return tf.train.Example.FromString(record.numpy()).features.feature["image"].bytes_list.value[0]


def test_mirrored_strategy_over_two_logical_cpus(span, tmp_path):
    args = _fn_args(span, tmp_path)
    result = subprocess.run([sys.executable, "-c", MIRRORED_RUN, json.dumps(args)], env=_env(),
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((Path(args["model_run_dir"]) / "training_summary.json").read_text())
    assert (summary["strategy"], summary["replicas"]) == ("MirroredStrategy", 2)
    assert summary["epochs_run"] == [0, 1]
    served = tf.saved_model.load(args["serving_model_dir"]).signatures[F.SERVING_DEFAULT]
    probability = served(image_bytes=tf.constant([_first_image(span)]))["probability"].numpy()
    assert probability.shape == (1,) and 0.0 <= probability[0] <= 1.0


@pytest.mark.slow   # the suite trains two MWMS replicas through the TFJob launcher instead
def test_two_worker_multi_worker_mirrored_strategy(span, tmp_path):
    args = _fn_args(span, tmp_path)
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    workers = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        workers.append(subprocess.Popen(
            [sys.executable, "-c", WORKER_RUN, json.dumps(args), str(tmp_path / f"w{index}.npz")],
            env=_env(TF_CONFIG=tf_config), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, cwd=REPO))
    outputs = [w.communicate(timeout=900) for w in workers]
    for index, (w, (_, err)) in enumerate(zip(workers, outputs)):
        assert w.returncode == 0, f"worker {index} failed:\n{err[-4000:]}"

    chief_weights, other_weights = (np.load(tmp_path / f"w{i}.npz") for i in range(2))
    assert len(chief_weights.files) == len(other_weights.files) > 0
    for name in chief_weights.files:
        np.testing.assert_array_equal(chief_weights[name], other_weights[name])

    summary = json.loads((Path(args["model_run_dir"]) / "training_summary.json").read_text())
    assert (summary["strategy"], summary["replicas"]) == ("MultiWorkerMirroredStrategy", 2)
    # Only the chief's files are the model: no non-chief leftovers beside them.
    assert sorted(os.listdir(args["serving_model_dir"])) == [
        "assets", "assets.extra", "fingerprint.pb", "saved_model.pb", "variables"]
    assert not [p for p in Path(args["model_run_dir"]).rglob("*") if "workertemp" in p.name]

    # The chief's export serves what the trained weights compute.
    model = model_lib.build_model(CONFIG["backbone"], CONFIG["image_size"], "random")
    model.set_weights([chief_weights[f"arr_{i}"] for i in range(len(chief_weights.files))])
    image = _first_image(span)
    from cardio.imaging import decode
    logit = export.logit_function(model)(
        decode.preprocess(tf.constant(image), CONFIG["image_size"])[tf.newaxis]).numpy()
    loaded = tf.saved_model.load(args["serving_model_dir"])
    # Served: the trained weights' logit through the Trainer's Platt calibration.
    expected = 1.0 / (1.0 + np.exp(-(loaded.platt_a.numpy() * logit + loaded.platt_b.numpy())))
    probability = loaded.signatures[F.SERVING_DEFAULT](image_bytes=tf.constant([image]))["probability"]
    np.testing.assert_allclose(probability.numpy(), expected, atol=1e-5)
