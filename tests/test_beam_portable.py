"""The LungCrop Beam stage on Beam's portable runner, as a distributed runner runs it: the
pipeline goes to a job service (Beam's Python job service, standing in for a Flink or Spark job
server) whose SDK workers come from an external worker pool (the sidecar a Flink task manager
runs, `--environment_type=EXTERNAL`), all on localhost. Its outputs equal the multi-process local
runner's, record for record, byte for byte.

Builds on tests/test_lung_crop_component.py (its data, U-Net and pipeline)."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_lung_crop_component import _examples, _run, span_and_weights  # noqa: F401

from cardio import features as F
from cardio.pipeline import configs

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _serve(module: str, args: list, port: int, log: Path) -> subprocess.Popen:
    """Starts a Beam service and waits until it accepts connections."""
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1",
           # The worker pool's SDK workers import the project's DoFns.
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen([sys.executable, "-m", module, *args], env=env, cwd=REPO,
                               stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{module} exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            socket.create_connection(("localhost", port), timeout=1).close()
            return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    pytest.fail(f"{module} did not listen on port {port}:\n{log.read_text()[-3000:]}")


# A slow check (`python -m benchmarks checks`): the suite runs the crop stage in process.
pytestmark = pytest.mark.slow

@pytest.fixture
def portable_services(tmp_path):
    job_port, pool_port = _free_port(), _free_port()
    pool = _serve("apache_beam.runners.worker.worker_pool_main",
                  [f"--service_port={pool_port}"], pool_port, tmp_path / "worker_pool.log")
    job = _serve("apache_beam.runners.portability.local_job_service_main",
                 [f"--port={job_port}", f"--staging_dir={tmp_path / 'staging'}"], job_port,
                 tmp_path / "job_service.log")
    yield job_port, pool_port, tmp_path
    for process in (job, pool):
        process.terminate()
        process.wait(timeout=30)


def test_crop_stage_on_the_portable_runner_equals_the_multi_process_runner(
        span_and_weights, portable_services):  # noqa: F811
    root = span_and_weights
    job_port, pool_port, logs = portable_services
    # The same flags as `cardio pipeline compile --beam-runner portable`, pointed at localhost.
    portable_args = ["--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}",
                     "--environment_type=EXTERNAL", f"--environment_config=localhost:{pool_port}"]
    portable, _ = _run(root, "portable", portable_args)
    multi, _ = _run(root, "multi-again", [f"--runner={configs.FN_API_RUNNER}",
                                          "--direct_running_mode=multi_processing",
                                          "--direct_num_workers=2"])
    # The work ran in the pool's SDK workers, not in this process.
    assert "Starting worker with command" in (logs / "worker_pool.log").read_text()
    for split in F.SPLITS:
        a = {e.features.feature[F.IMAGE_ID].bytes_list.value[0]: e.SerializeToString(deterministic=True)
             for e in _examples(portable, split)}
        b = {e.features.feature[F.IMAGE_ID].bytes_list.value[0]: e.SerializeToString(deterministic=True)
             for e in _examples(multi, split)}
        assert a and a == b, split
