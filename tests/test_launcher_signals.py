"""`./cardio serve` execs all the way down (cardio, unshare, enter-root.sh, chroot, sh, env,
python): the PID its caller started is the Python server's own, so SIGTERM stops it gracefully
(an in-flight request is answered, exit status 0) and SIGKILL leaves nothing serving.

The launcher runs from the host side (test_launcher.Host), through its whole path."""
from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import threading
import time

import pytest

from cardio.serving import client as client_lib
from serving_helpers import export_version, png, write_batching_file
from test_launcher import LAUNCHER, REPO, host  # noqa: F401  (fixture)

MODEL = "cardio-tiny"
BATCH_WAIT_S = 3.0      # a lone request waits this long in the batcher: it is in flight meanwhile


@pytest.fixture(scope="module")
def serve_flags(tmp_path_factory) -> list[str]:
    """A tiny exported model and a batching file that holds a request for BATCH_WAIT_S; under /tmp,
    which is the same directory on the host and in the Debian 13 root."""
    root = tmp_path_factory.mktemp("launcher-serving")
    export_version(str(tmp_path_factory.mktemp("launcher-exports")), str(root), MODEL, 1, seed=0)
    batching = write_batching_file(str(root / "batching.txt"), max_batch_size=8,
                                   batch_timeout_micros=int(BATCH_WAIT_S * 1e6))
    return ["--port=0", f"--model_name={MODEL}", f"--model_base_path={root}/{MODEL}",
            "--enable_batching", f"--batching_parameters_file={batching}"]


def _lines(stream) -> queue.Queue:
    lines: queue.Queue = queue.Queue()

    def pump():
        for line in stream:
            lines.put(line)
        lines.put(None)
    threading.Thread(target=pump, daemon=True).start()
    return lines


def _next_line(lines: queue.Queue, stderr_file, timeout: float = 180) -> str:
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        line = None
    if line is None:
        stderr_file.seek(0)
        pytest.fail(f"no line from the server on stdout; its stderr:\n{stderr_file.read()[-4000:]}")
    return line


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [part.decode() for part in f.read().split(b"\0") if part]
    except OSError:
        return []


def _assert_is_the_server(pid: int):
    argv = _cmdline(pid)
    assert argv and os.path.basename(argv[0]).startswith("python"), f"PID {pid} runs {argv}"
    assert argv[1:4] == ["-m", "cardio", "serve"], \
        f"PID {pid} started as ./cardio should be the Python server by now, but runs {argv}"


def _serving_processes(flags: list[str]) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            argv = _cmdline(int(entry))
            if "serve" in argv and flags[2] in argv:     # our --model_base_path
                pids.append(int(entry))
    return pids


def _assert_nothing_serves(pid: int, port: int, flags: list[str]):
    deadline = time.time() + 30
    while time.time() < deadline and (os.path.exists(f"/proc/{pid}") or _serving_processes(flags)):
        time.sleep(0.2)
    assert not os.path.exists(f"/proc/{pid}"), f"PID {pid} is still there: {_cmdline(pid)}"
    assert _serving_processes(flags) == [], "a server process outlived the launcher's PID"
    with socket.socket() as s:       # a listener still on the port would make this fail
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen()


def _kill(pids: list[int]):
    for pid in pids:        # a failed test leaves no server behind (the bug would leave one)
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def test_sigterm_to_the_launcher_pid_stops_the_server_gracefully(host, serve_flags, tmp_path):
    stderr = open(tmp_path / "stderr.txt", "w+")
    process = subprocess.Popen(host.argv([LAUNCHER, "serve", *serve_flags], cwd=str(REPO)),
                               stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        ready = json.loads(_next_line(_lines(process.stdout), stderr))
        assert ready["available"] == {MODEL: [1]}
        _assert_is_the_server(process.pid)

        answer = {}

        def predict():
            started = time.monotonic()
            with client_lib.Client(f"127.0.0.1:{ready['port']}", timeout=60, retries=0) as client:
                answer["result"] = client.predict([png(0)], MODEL)[0]
            answer["seconds"] = time.monotonic() - started
        request = threading.Thread(target=predict)
        request.start()
        time.sleep(BATCH_WAIT_S / 3)
        assert request.is_alive(), f"the request was answered before SIGTERM: {answer}"
        process.send_signal(signal.SIGTERM)
        request.join(timeout=60)
        assert answer.get("result", {}).get("version") == 1, answer
        assert answer["seconds"] >= BATCH_WAIT_S * 0.9     # it was in flight across the signal
        assert process.wait(timeout=60) == 0
        stderr.seek(0)
        logged = stderr.read()
        assert "Running gRPC ModelServer" in logged and "shutting down" in logged, logged
        _assert_nothing_serves(process.pid, ready["port"], serve_flags)
    finally:
        _kill(([process.pid] if process.poll() is None else []) + _serving_processes(serve_flags))
        if process.poll() is None:
            process.wait()
        stderr.close()


def test_sigkill_to_the_launcher_pid_a_shell_started_leaves_nothing_serving(host, serve_flags,
                                                                          tmp_path):
    """As a shell script or a supervisor does: start ./cardio serve in the background, keep $!,
    later kill that PID."""
    stderr = open(tmp_path / "stderr.txt", "w+")
    script = '"$@" & echo "launcher-pid $!"; wait $!'
    shell = subprocess.Popen(host.argv(["bash", "-c", script, "sh", LAUNCHER, "serve",
                                        *serve_flags], cwd=str(REPO)),
                             stdout=subprocess.PIPE, stderr=stderr, text=True)
    pid = None
    try:
        lines = _lines(shell.stdout)
        first = _next_line(lines, stderr, timeout=60)
        assert first.startswith("launcher-pid "), first
        pid = int(first.split()[1])
        ready = json.loads(_next_line(lines, stderr))
        _assert_is_the_server(pid)
        os.kill(pid, signal.SIGKILL)
        assert shell.wait(timeout=60) == 128 + signal.SIGKILL     # the shell's `wait $!` status
        _assert_nothing_serves(pid, ready["port"], serve_flags)
    finally:
        _kill(([pid] if pid else []) + _serving_processes(serve_flags))
        if shell.poll() is None:
            shell.kill()
            shell.wait()
        stderr.close()
