"""The native environment (a venv on hosts with glibc >= 2.39 and python3.13), built by
tools/environment.sh's own functions against a one-package stub lock: its console scripts run,
through the same path `./cardio exec` takes, and an interrupted build is built again."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest import REPO

STUB_LOCK = "tabulate==0.10.0\n"      # tiny, pure Python, with a console script (`tabulate`)


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
    return lock, cache, built.stdout.strip()


def test_console_scripts_point_at_the_final_venv_and_run(native):
    lock, cache, dest = native
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
    lock, cache, dest = native
    os.remove(os.path.join(dest, ".cardio-complete"))       # as if pip had been interrupted
    open(os.path.join(dest, "leftover-from-the-interrupted-build"), "w").close()
    rebuilt = environment_sh("ensure_env && env_path", lock, cache)
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert rebuilt.stdout.strip() == dest and "creating venv" in rebuilt.stderr
    assert not os.path.exists(os.path.join(dest, "leftover-from-the-interrupted-build"))
    assert os.path.exists(os.path.join(dest, ".cardio-complete"))
    again = environment_sh("ensure_env && env_path", lock, cache)     # complete: reused as is
    assert again.returncode == 0 and "creating venv" not in again.stderr
    ran = subprocess.run([os.path.join(dest, "bin", "tabulate")], input="c 4\n",
                         capture_output=True, text=True)
    assert ran.returncode == 0 and "c  4" in ran.stdout, ran.stderr
