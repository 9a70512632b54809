"""The demo as a new user without ImageNet weights runs it: it says so first, trains from random
initialisation, and ends, as it announced, with nothing pushed or served. A slow check
(`python -m benchmarks checks`): a second demo run does not fit the suite's budget. Where
../shared/weights is absent, the suite's own end-to-end run is this run (tests/test_e2e.py)."""
import json

import pytest

from conftest import run_demo
from cardio.pipeline import demo


@pytest.mark.slow
def test_without_imagenet_weights_the_demo_says_so_first_and_pushes_nothing(tmp_path):
    result, command = run_demo(tmp_path, cut_network=False, random_init=True)
    lines = result.stdout.strip().splitlines()
    assert lines[0] == demo.NO_WEIGHTS
    summary = json.loads(lines[-1])
    assert summary["imagenet_weights"] is None
    assert summary["models"] and all(not m["blessed"] and m["pushed_to"] is None and m["gate_failures"]
                                     for m in summary["models"].values())
    assert summary["serving"] == {"served": False}
    assert summary["comparison"]["champion"] is None
    assert not (tmp_path / "serving" / "models.config").exists()
    assert "No model was pushed, as expected without ImageNet weights" in result.stdout
