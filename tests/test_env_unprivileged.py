"""The Debian 13 root needs no root privileges: tools/check-unprivileged.sh, run on the host (where
./cardio's caller runs), has a throwaway unprivileged user build a small root with the project's
own tools/environment.sh (mmdebstrap --mode=unshare) and run python3.13 and a console script in
it through the project's own entering path (unshare --user --map-root-user, enter-root.sh)."""
from __future__ import annotations

import os

import pytest

from test_launcher import REPO, host  # noqa: F401  (fixture)


def test_an_unprivileged_user_builds_and_enters_the_root(host):
    if host.pid is None and os.getuid() != 0:
        pytest.skip("creating the throwaway user needs root, and this test runs as uid "
                    f"{os.getuid()} on the host")
    result = host.run(["bash", f"{REPO}/tools/check-unprivileged.sh"], cwd="/", timeout=900)
    if result.returncode == 77:
        pytest.skip(result.stderr.strip().splitlines()[-1])
    assert result.returncode == 0, result.stderr[-4000:]
    assert "passed: a user without privileges built the root" in result.stderr
    assert "inside: uid 0 3.13" in result.stderr
