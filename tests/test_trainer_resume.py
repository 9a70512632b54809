"""A Trainer killed mid-training resumes from its last completed epoch on the rerun."""
import json
import os
import signal
import subprocess
import sys
import time

from cardio.data import convert

RUN = """
import json, sys
from tfx.components.trainer.fn_args_utils import FnArgs
from cardio.trainer import task
args = json.loads(sys.argv[1])
task.run_fn(FnArgs(**args))
"""


def _fn_args(tmp_path, run):
    span = tmp_path / "data" / "span-1"
    return {"train_files": [str(span / "train" / "*")], "eval_files": [str(span / "validation" / "*")],
            "serving_model_dir": str(tmp_path / "Trainer.cell" / "model" / run / "Format-Serving"),
            "model_run_dir": str(tmp_path / "Trainer.cell" / "model_run" / run),
            "custom_config": {"backbone": "mobilenet_025", "weights": "random", "image_size": 64,
                              "epochs": 4, "batch_size": 4, "steps_per_epoch": 40, "seed": 1}}


def test_killed_training_resumes_instead_of_restarting(tmp_path):
    convert.write_synthetic(str(tmp_path / "data"), 60, seed=6, size=128, span=1,
                            external_sites=(), workers=1)
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    first = subprocess.Popen([sys.executable, "-c", RUN, json.dumps(_fn_args(tmp_path, "1"))],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    backup_root = tmp_path / "Trainer.cell" / "backup"
    deadline = time.time() + 600
    # Wait for the first epoch's checkpoint, then kill the process during the second epoch.
    while time.time() < deadline and first.poll() is None:
        if list(backup_root.glob("*/chief/checkpoint")) or list(backup_root.glob("*/checkpoint")):
            break
        time.sleep(0.2)
    assert first.poll() is None, "training finished before it could be killed"
    time.sleep(1.0)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (tmp_path / "Trainer.cell" / "model_run" / "1" / "training_summary.json").exists()

    second = subprocess.run([sys.executable, "-c", RUN, json.dumps(_fn_args(tmp_path, "2"))],
                            env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads((tmp_path / "Trainer.cell" / "model_run" / "2" /
                          "training_summary.json").read_text())
    assert summary["epochs_run"][0] >= 1, "the rerun started again from epoch 0"
    assert summary["epochs_run"][-1] == 3
    assert not list(backup_root.glob("*/*")), "the checkpoint is removed once training completes"
