"""What a new user waits for, measured: set-up from nothing, the demo, the test suite.

  python3 -m benchmarks newcomer [--no-suite] [--no-setup]

Run it on the host (any python3; it imports nothing but the standard library), from the
repository: set-up must start outside the environment it builds.
  set-up  tools/environment.sh ensure with a throwaway CARDIO_CACHE: the Debian 13 root (or venv)
          and the locked wheels from the network, as on a new machine (the host's mmdebstrap,
          when already installed, is not counted); the throwaway cache is removed afterwards
  demo    ./cardio demo in a new workdir with an empty synthetic-data cache (the radiographs
          are drawn, as on a first run), then once more reusing them (a second run in a new
          workdir: cached data, every component run again)
  suite   ./cardio exec pytest, as .ci/run runs it
Targets (issue: set-up <= 90 s, demo <= 4 min after set-up, suite <= 12 min) are printed beside.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = {"set-up, from nothing": 90, "demo, first run (draws the radiographs)": 240,
           "demo, radiographs cached": 240, "test suite": 720}


def _timed(command: list, env: dict | None = None, log: str | None = None) -> tuple[float, str]:
    started = time.monotonic()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if log:
        with open(log, "w") as f:
            f.write(result.stdout + result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}); "
                         f"its output ends:\n{(result.stdout + result.stderr)[-3000:]}")
    return seconds, result.stdout + result.stderr


def _host_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CARDIO_IN_ENV", "VIRTUAL_ENV")}
    env.update(extra)
    return env


def main() -> int:
    if os.environ.get("CARDIO_IN_ENV") == "1":
        raise SystemExit("run this benchmark on the host (python3 -m benchmarks newcomer), not "
                         "through ./cardio exec: set-up starts outside the environment it builds")
    rows = []
    scratch = tempfile.mkdtemp(prefix="cardio-newcomer-", dir="/var/tmp")
    try:
        if "--no-setup" not in sys.argv:
            cache = os.path.join(scratch, "cache")
            seconds, output = _timed(["bash", "tools/environment.sh", "ensure"],
                                     _host_env(CARDIO_CACHE=cache))
            lines = [line for line in output.splitlines() if line.strip()]
            rows.append(("set-up, from nothing", seconds, f"{len(lines)} lines printed"))
            shutil.rmtree(cache, ignore_errors=True)
        _timed(["./cardio", "exec", "true"], _host_env())       # the usual environment, built once
        data_cache = tempfile.mkdtemp(prefix="cardio-newcomer-data-", dir="/tmp")
        try:
            for name in ("demo, first run (draws the radiographs)", "demo, radiographs cached"):
                workdir = tempfile.mkdtemp(prefix="demo-", dir=data_cache)
                seconds, output = _timed(["./cardio", "demo", "--workdir", workdir],
                                         _host_env(CARDIO_DATA_CACHE=os.path.join(data_cache, "synthetic")))
                pushed = output.count("BLESSED; pushed to")
                rows.append((name, seconds, f"{pushed} of 2 models blessed and pushed"))
        finally:
            shutil.rmtree(data_cache, ignore_errors=True)
        if "--no-suite" not in sys.argv:
            seconds, output = _timed(["./cardio", "exec", "pytest", "-p", "no:cacheprovider"],
                                     _host_env())
            summary = re.findall(r"=+ (.*(?:passed|failed).*) in [\d.]+s", output)
            rows.append(("test suite", seconds, summary[-1] if summary else ""))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"\nA newcomer's wait ({os.cpu_count()} cores)")
    print(f"{'step':<44}{'seconds':>9}{'target':>8}  {'met':<5}note")
    for name, seconds, note in rows:
        target = TARGETS[name]
        print(f"{name:<44}{seconds:>9.0f}{target:>8}  {'yes' if seconds <= target else 'NO':<5}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
