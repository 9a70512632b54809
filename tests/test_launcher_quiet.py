"""TensorFlow's start-up noise (absl's pre-initialisation notice, the CUDA stub's and CUDA probe's
lines, the oneDNN and CPU-feature notices) is hidden by default and shown with `cardio --verbose`;
the command's output is the same either way."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cardio import cli
from test_launcher import LAUNCHER

NOISE = re.compile(r"absl::InitializeLog|cudart_stub|cuda_platform|failed call to cuInit|"
                   r"cpu_feature_guard|oneDNN custom operations|Unable to register cu|"
                   r"computation placer|TF-TRT|^To enable the following instructions")
# The log switches themselves are left to cardio: as a user's shell would have them.
CALLER_ENV = {k: v for k, v in os.environ.items()
              if k not in ("TF_CPP_MIN_LOG_LEVEL", "GRPC_VERBOSITY")}


def noise(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if NOISE.search(line)]


@pytest.fixture(scope="module")
def raw_noise() -> set[str]:
    """The kinds of noise line TensorFlow prints on this machine when it loads and probes its
    devices, unfiltered."""
    raw = subprocess.run([sys.executable, "-c", "import tensorflow as tf; "
                          "tf.config.list_physical_devices(); tf.constant(1) + 1"],
                         capture_output=True, text=True,
                         env={**CALLER_ENV, "TF_CPP_MIN_LOG_LEVEL": "0"}, timeout=300)
    assert raw.returncode == 0, raw.stderr
    return kinds(raw.stderr)


def kinds(stderr: str) -> set[str]:
    return {NOISE.search(line).group(0) for line in noise(stderr)}


def cardio(*args) -> subprocess.CompletedProcess:
    result = subprocess.run([LAUNCHER, *args], capture_output=True, text=True, env=CALLER_ENV,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def test_start_up_noise_is_hidden_by_default_and_shown_with_verbose(tmp_path, raw_noise):
    """A command that imports TensorFlow but runs no ops."""
    quiet = cardio("data", "synth", "--n", "2", "--size", "64", "--out", str(tmp_path / "q"))
    assert noise(quiet.stderr) == [], quiet.stderr
    assert "synthesising radiographs" in quiet.stderr.splitlines()
    verbose = cardio("--verbose", "data", "synth", "--n", "2", "--size", "64", "--out",
                     str(tmp_path / "v"))
    summary = [json.loads(r.stdout.strip().splitlines()[-1]) for r in (quiet, verbose)]
    assert [s.pop("out") for s in summary] == [str(tmp_path / "q"), str(tmp_path / "v")]
    assert summary[0] == summary[1]           # the same command, the same result
    # Everything TensorFlow prints when it loads shows with --verbose (not the device probe's
    # line: no op runs here).
    assert raw_noise - {"cuda_platform", "failed call to cuInit"} <= kinds(verbose.stderr), \
        verbose.stderr


def test_the_device_probe_is_quiet_too(tmp_path, raw_noise):
    """A command that runs ops: on CPU-only hosts TensorFlow's CUDA probe logs an error line."""
    files = json.loads(cardio("data", "synth", "--files", "--n", "2", "--size", "128", "--out",
                              str(tmp_path / "files")).stdout.strip().splitlines()[-1])
    assert files["images"] == 2
    crop = ["crop", "--images", str(tmp_path / "files" / "images"), "--size", "64",
            "--overlays", "1", "--out"]
    quiet = cardio(*crop, str(tmp_path / "q"))
    assert noise(quiet.stderr) == [], quiet.stderr
    verbose = cardio("--verbose", *crop, str(tmp_path / "v"))
    assert raw_noise <= kinds(verbose.stderr), verbose.stderr
    assert json.loads(quiet.stdout.strip().splitlines()[-1]) == \
        json.loads(verbose.stdout.strip().splitlines()[-1])


def test_verbose_sets_the_log_levels_subprocesses_inherit(monkeypatch):
    for name in ("TF_CPP_MIN_LOG_LEVEL", "GRPC_VERBOSITY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.setitem(cli._CALLER_LOG_LEVELS, name, None)
    assert CliRunner().invoke(cli.main, ["--verbose", "versions"]).exit_code == 0
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0" and "GRPC_VERBOSITY" not in os.environ
    # A level the caller chose is kept, with or without --verbose.
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    monkeypatch.setitem(cli._CALLER_LOG_LEVELS, "TF_CPP_MIN_LOG_LEVEL", "1")
    assert CliRunner().invoke(cli.main, ["--verbose", "versions"]).exit_code == 0
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"


def test_exec_python_is_as_quiet_as_the_commands_and_verbose_shows_it(raw_noise):
    """`./cardio exec python ...` (a user's own script, a benchmark): TensorFlow's loading lines and
    its device probe's are hidden; `./cardio --verbose exec` shows what TensorFlow prints."""
    script = ("import sys, tensorflow as tf; tf.config.list_physical_devices(); "
              "print(int(tf.constant(2) + 1)); print('own line', file=sys.stderr)")
    quiet = cardio("exec", "python", "-c", script)
    assert quiet.stdout == "3\n"
    assert noise(quiet.stderr) == [] and "own line" in quiet.stderr.splitlines(), quiet.stderr
    verbose = cardio("--verbose", "exec", "python", "-c", script)
    assert verbose.stdout == "3\n" and "own line" in verbose.stderr
    assert raw_noise <= kinds(verbose.stderr), verbose.stderr
