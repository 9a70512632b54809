"""The slow checks: tests marked `slow` (the crop stage on Beam's portable and multi-process
runners, two-worker MultiWorkerMirroredStrategy, the demo without ImageNet weights, the compiled
Kubeflow spec's whole grid run twice under the open-source backend's semantics, the second run
finding the first run's blessed models, two whole demo runs giving the same models), which the
default suite leaves out to stay within its time budget. Runs them with pytest and prints one row
per check."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "slow.xml")
        result = subprocess.run([sys.executable, "-m", "pytest", "-m", "slow", "-q",
                                 "-p", "no:cacheprovider", f"--junitxml={report}"], cwd=REPO)
        cases = ET.parse(report).getroot().iter("testcase")
        rows = []
        for case in cases:
            outcome = next((child.tag for child in case
                            if child.tag in ("failure", "error", "skipped")), "passed")
            rows.append((f"{case.get('classname').split('.')[-1]}::{case.get('name')}",
                         outcome, float(case.get("time", 0))))
    print(f"\nSlow checks ({os.cpu_count()} cores)")
    width = max(len(r[0]) for r in rows) + 2 if rows else 10
    print(f"{'check':<{width}}{'result':>8}{'seconds':>10}")
    for name, outcome, seconds in rows:
        print(f"{name:<{width}}{outcome:>8}{seconds:>10.0f}")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
