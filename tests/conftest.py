"""Shared fixtures: paths to ../shared (skipping when absent) and one end-to-end pipeline run."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def shared_path(*parts) -> Path:
    """A file under ../shared, or a skip saying it is absent (real data stays outside the repo)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"../shared/{'/'.join(parts)} is not present on this machine")
    return path


@contextlib.contextmanager
def shown_log_records():
    """The log records absl's logger shows (after its handlers' filters, such as the local
    runner's progress filter, entered inside this block), collected in a list."""
    records, handler = [], logging.Handler()
    handler.emit = records.append
    logging.getLogger("absl").addHandler(handler)
    try:
        yield records
    finally:
        logging.getLogger("absl").removeHandler(handler)


def can_cut_network() -> bool:
    try:
        return subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


@dataclasses.dataclass
class PipelineRun:
    workdir: Path
    stdout: str
    stderr: str
    summary: dict
    network_interfaces: list | None  # interfaces seen by the run; None when it could not be cut off
    command: list

    @property
    def pipeline_root(self) -> Path:
        return self.workdir / "pipeline"


# Small but real: two sites, every split, a few epochs. Seed 2 gives each evaluated split 7
# cardiomegaly cases (seed 0: validation 4, too few to place the operating threshold reliably).
E2E_ARGS = ["--n", "240", "--size", "384", "--epochs", "5", "--seed", "2"]


# `ip link set lo up` without iproute2: SIOCSIFFLAGS with IFF_UP | IFF_LOOPBACK | IFF_RUNNING.
LOOPBACK_UP = ("import fcntl, socket, struct; fcntl.ioctl(socket.socket(), 0x8914, "
               "struct.pack('16sH', b'lo', 0x1 | 0x8 | 0x40))")


def run_demo(workdir: Path, cut_network: bool,
             random_init: bool = False) -> tuple[subprocess.CompletedProcess, list]:
    """The demo at the suite's size; from random initialisation when asked or when
    ../shared/weights is absent (a new user's machine)."""
    command = [sys.executable, "-m", "cardio", "demo", "--workdir", str(workdir), *E2E_ARGS]
    if random_init or not (SHARED / "weights").exists():
        command.append("--random-init")
    if cut_network:
        # A new network namespace has only a loopback device: nothing leaves the machine. The
        # loopback is brought up, since the demo ends by serving its models over gRPC on it.
        netdev = workdir / "net_dev.txt"
        command = ["unshare", "--net", "--", "sh", "-c",
                   f'{sys.executable} -c "$1" && cat /proc/self/net/dev > "$0" && shift && exec "$@"',
                   str(netdev), LOOPBACK_UP, *command]
    # Its own cache of drawn radiographs: the run draws them, as a first demo does.
    env = {**os.environ, "CARDIO_DATA_CACHE": str(workdir / "synthetic-cache")}
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=2400,
                            env=env)
    if result.returncode != 0:
        pytest.fail(f"demo failed ({result.returncode}):\n{result.stderr[-6000:]}")
    return result, command


@pytest.fixture(scope="session")
def e2e(tmp_path_factory) -> PipelineRun:
    """The pipeline, end to end, once per test session, with the network cut off when possible."""
    workdir = tmp_path_factory.mktemp("e2e")
    cut = can_cut_network()
    result, command = run_demo(workdir, cut)
    interfaces = None
    if cut:
        lines = (workdir / "net_dev.txt").read_text().splitlines()[2:]
        interfaces = [line.split(":")[0].strip() for line in lines]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    return PipelineRun(workdir, result.stdout, result.stderr, summary, interfaces, command)


# The longest files first (measured, 2 cores), so the xdist workers, each taking whole files,
# finish together instead of one waiting on a long file started last.
LONGEST_FIRST = ("test_e2e.py", "test_kubeflow_executed.py", "test_real_data_pipeline.py",
                 "test_launcher_quiet.py", "test_tfjob_trainer.py", "test_trainer_resume.py",
                 "test_reproducible_training.py", "test_explain.py", "test_gate.py",
                 "test_launcher_signals.py", "test_distributed_training.py",
                 "test_baseline_per_cell.py", "test_comparison.py", "test_conversion_state.py",
                 "test_serving_cli.py", "test_anomalies.py", "test_env_unprivileged.py",
                 "test_lung_crop_component.py", "test_backbones.py", "test_launcher.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable within a file
