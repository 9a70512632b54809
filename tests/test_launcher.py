"""./cardio passes exit status, stdout and stderr through and resolves paths from any directory."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from conftest import REPO

LAUNCHER = str(REPO / "cardio")


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("PPid:")).split()[1])


class Host:
    """Runs commands where ./cardio's caller runs them, so that a test drives the launcher's whole
    path (unshare, enter-root.sh, chroot, binds) rather than its already-inside shortcut.

    The tests run inside the environment (CARDIO_IN_ENV=1). In the Debian 13 root, the host is the
    nearest ancestor process whose root directory is another one (the caller of ./cardio; every
    step execs): commands enter its mount namespace with nsenter (root only), with its
    environment, and its files are reached here through /proc/PID/root. In a native venv, the host
    is here."""

    def __init__(self, pid: int | None, env: dict):
        self.pid, self.env = pid, env

    @classmethod
    def find(cls) -> Host:
        if os.environ.get("CARDIO_IN_ENV") != "1":
            pytest.skip("the tests were not started by ./cardio (CARDIO_IN_ENV is not 1), so the "
                        "launcher's environment may not exist here")
        mine, pid = os.stat("/"), os.getppid()
        while pid > 1:
            try:
                theirs = os.stat(f"/proc/{pid}/root/")
            except OSError as error:
                pytest.skip(f"cannot see the root directory of ancestor process {pid} ({error}): "
                            f"the host side of the Debian 13 root is out of reach")
            if (theirs.st_dev, theirs.st_ino) != (mine.st_dev, mine.st_ino):
                break
            pid = _parent(pid)
        else:   # no ancestor has another root: this is the host (a native venv)
            env = {k: v for k, v in os.environ.items() if k != "CARDIO_IN_ENV"}
            return cls(None, env)
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(item.decode().split("=", 1) for item in f.read().split(b"\0")
                       if b"=" in item)
        env.pop("CARDIO_IN_ENV", None)
        host = cls(pid, env)
        probe = subprocess.run(host.argv(["true"]), capture_output=True, text=True)
        if probe.returncode != 0:
            pytest.skip(f"cannot enter the host's mount namespace from the Debian 13 root (uid "
                        f"{os.getuid()}; nsenter needs root): {probe.stderr.strip()}")
        return host

    def argv(self, command: list[str], cwd: str = "/") -> list[str]:
        """`command` run on the host in `cwd` (a host path); each wrapper execs, so a process
        started with this argv keeps its PID down to `command` itself."""
        env = ["env", "-i", "-C", cwd, *(f"{k}={v}" for k, v in self.env.items())]
        if self.pid is None:
            return [*env, *command]
        return ["nsenter", f"--target={self.pid}", "--mount", "--root", "--", *env, *command]

    def path(self, host_path: str) -> str:
        """Where a host path is reachable from here."""
        return host_path if self.pid is None else f"/proc/{self.pid}/root{host_path}"

    def run(self, command: list[str], cwd: str = "/", **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(command, cwd), capture_output=True, text=True, **kwargs)


@pytest.fixture
def host() -> Host:
    return Host.find()


@pytest.fixture
def host_scratch(host):
    """A scratch directory on the host outside /tmp (which the launcher always binds into the
    root), with a space in its name: (host path, path from here)."""
    made = host.run(["mktemp", "-d", "/var/tmp/cardio launcher.XXXXXX"])
    assert made.returncode == 0, made.stderr
    where = made.stdout.strip()
    yield where, host.path(where)
    shutil.rmtree(host.path(where), ignore_errors=True)


def test_exit_status_and_streams_pass_through(tmp_path):
    result = subprocess.run([LAUNCHER, "exec", "sh", "-c", "echo to-out; echo to-err >&2; exit 7"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (7, "to-out\n", "to-err\n")


def test_cli_usage_error_is_exit_2(tmp_path):
    result = subprocess.run([LAUNCHER, "no-such-command"], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 2
    assert "No such command" in result.stderr


def test_relative_output_path_is_relative_to_the_callers_directory(tmp_path):
    result = subprocess.run([LAUNCHER, "data", "synth", "--out", "out/data", "--n", "3",
                             "--size", "128"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["out"] == str(tmp_path / "out" / "data")
    assert list((tmp_path / "out" / "data" / "span-1").glob("*/*.tfrecord.gz"))


def test_every_command_has_help():
    from click.testing import CliRunner

    from cardio.cli import main

    def walk(command, path):
        yield path
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, path + [name])

    for path in walk(main, []):
        result = CliRunner().invoke(main, path + ["--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output


def test_repository_cwd_and_output_paths_with_spaces(host, host_scratch):
    """A clone under a directory with a space, run from a working directory with a space, writing
    to a relative path with a space: each is bound into the root whole and the file lands on the
    host. Outside /tmp, so that only the launcher's binds can make the paths reachable."""
    where, here = host_scratch
    clone, work = f"{where}/repo copy", f"{where}/work dir"
    os.makedirs(host.path(work))
    shutil.copytree(REPO, host.path(clone), symlinks=True, ignore=shutil.ignore_patterns(
        ".git", "*cache*", "__pycache__", "cardio-demo"))
    result = host.run([f"{clone}/cardio", "data", "preview", "--out", "out dir/sheet.png",
                       "--n", "1"], cwd=work, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["out"] == f"{work}/out dir/sheet.png"
    assert os.path.getsize(host.path(f"{work}/out dir/sheet.png")) > 0
    # An argument naming a directory with spaces, through `exec`: listed from inside the root.
    listed = host.run([f"{clone}/cardio", "exec", "ls", f"{work}/out dir"], cwd="/", timeout=120)
    assert (listed.returncode, listed.stdout) == (0, "sheet.png\n"), listed.stderr
