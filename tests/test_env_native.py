"""The native environment (a venv on hosts with glibc >= 2.39 and python3.13), built by
tools/environment.sh's own functions against a one-package stub lock: its console scripts run,
through the same path `./cardio exec` takes, and an interrupted build is built again."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess

import pytest

from conftest import REPO

STUB_LOCK = ("tabulate==0.10.0 \\\n"   # hash-checked, as the real lock is
             "    --hash=sha256:e2cfde8f79420f6deeffdeda9aaec3b6bc5abce947655d17ac662b126e48a60d\n")


def environment_sh(script: str, lock, cache, *args) -> subprocess.CompletedProcess:
    """`script` run after sourcing tools/environment.sh, with the stub lock and a scratch cache, in
    native mode, as from outside any environment."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("CARDIO_IN_ENV", "VIRTUAL_ENV", "CARDIO_CACHE")}
    env["CARDIO_ENV"] = "native"
    preamble = 'source "$0/tools/environment.sh"; LOCK=$1; CACHE=$2; shift 2; '
    return subprocess.run(["bash", "-c", preamble + script, str(REPO), str(lock), str(cache),
                           *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    if shutil.which("python3.13") is None:
        pytest.skip("python3.13 is not on PATH here, so no native venv can be built")
    tmp = tmp_path_factory.mktemp("native")
    lock, cache = tmp / "requirements.lock", tmp / "cache"
    lock.write_text(STUB_LOCK)
    built = environment_sh("ensure_env && env_path", lock, cache)
    assert built.returncode == 0, built.stderr[-3000:]
    return lock, cache, built.stdout.strip(), built.stderr


def test_console_scripts_point_at_the_final_venv_and_run(native):
    lock, cache, dest, _ = native
    assert os.path.dirname(dest) == str(cache) and not dest.endswith(".partial")
    assert os.path.exists(os.path.join(dest, ".cardio-complete"))
    assert not os.path.exists(dest + ".partial")
    script = os.path.join(dest, "bin", "tabulate")
    with open(script) as f:
        assert f.readline().strip() == f"#!{dest}/bin/python"
    direct = subprocess.run([script], input="a 1\nb 2\n", capture_output=True, text=True)
    assert direct.returncode == 0, direct.stderr
    assert direct.stdout.split() == ["-", "-", "a", "1", "b", "2", "-", "-"]
    # As `./cardio exec tabulate` runs it: exec'd inside the environment, status passed through.
    launched = environment_sh('exec_in_env "$@"', lock, cache, "sh", "-c",
                              'echo "x 3" | tabulate; echo "$VIRTUAL_ENV"; exit 5')
    assert launched.returncode == 5, launched.stderr
    assert launched.stdout.split() == ["-", "-", "x", "3", "-", "-", dest]


def test_a_venv_without_the_completion_marker_is_built_again(native):
    lock, cache, dest, _ = native
    os.remove(os.path.join(dest, ".cardio-complete"))       # as if pip had been interrupted
    open(os.path.join(dest, "leftover-from-the-interrupted-build"), "w").close()
    rebuilt = environment_sh("ensure_env && env_path", lock, cache)
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert rebuilt.stdout.strip() == dest and "creating the venv" in rebuilt.stderr
    assert not os.path.exists(os.path.join(dest, "leftover-from-the-interrupted-build"))
    assert os.path.exists(os.path.join(dest, ".cardio-complete"))
    again = environment_sh("ensure_env && env_path", lock, cache)     # complete: reused as is
    assert again.returncode == 0 and "creating the venv" not in again.stderr
    ran = subprocess.run([os.path.join(dest, "bin", "tabulate")], input="c 4\n",
                         capture_output=True, text=True)
    assert ran.returncode == 0 and "c  4" in ran.stdout, ran.stderr


def test_set_up_prints_a_few_lines_and_names_its_full_log(native):
    """What the installers print goes to a log beside the environment; the caller sees the steps."""
    _, _, dest, stderr = native
    lines = stderr.splitlines()
    assert len(lines) <= 9 and all(line.startswith("[cardio-env] ") for line in lines), stderr
    assert f"full log: {dest}.setup.log" in lines[0]
    assert "environment ready in" in lines[-1]
    log = open(f"{dest}.setup.log").read()
    assert "tabulate==0.10.0" in log and "Installed 1 package" in log     # uv's own lines
    # Installed with its bytecode, so no process compiles the stack from source again.
    assert any(line.startswith("[cardio-env]   bytecode compiled") for line in lines), stderr
    assert glob.glob(os.path.join(dest, "lib", "python3.*", "site-packages", "tabulate",
                                  "__pycache__", "*.pyc")), "no bytecode installed"


def test_a_file_that_does_not_match_the_locks_hash_is_refused(tmp_path):
    """uv --require-hashes: a lock whose hash is not the file's installs nothing, and the last
    lines of the log say why."""
    if shutil.which("python3.13") is None:
        pytest.skip("python3.13 is not on PATH here, so no native venv can be built")
    lock = tmp_path / "requirements.lock"
    lock.write_text("tabulate==0.10.0 --hash=sha256:" + "0" * 64 + "\n")
    built = environment_sh("ensure_env", lock, tmp_path / "cache")
    assert built.returncode == 2
    assert "set-up failed; the last lines of" in built.stderr
    assert "hash" in built.stderr.lower() and "tabulate" in built.stderr, built.stderr
    assert not list((tmp_path / "cache").glob("venv-*/.cardio-complete"))
