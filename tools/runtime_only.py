"""Lists the locked distributions the project's runtime does not need (the `dev` extra's test
tools and what only they pull in), or with --uninstall removes them: the production image installs
requirements.lock as is, then drops these (Dockerfile).

The runtime set is the closure of pyproject.toml's [project].dependencies (no extras) over the
installed distributions' own requirements, with their environment markers evaluated for this
interpreter; an extra a requirement asks for (`apache-beam[gcp]`) is followed too.

    python tools/runtime_only.py [--uninstall]
"""
from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _wanted(requirement: Requirement, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in (extras or {""}))


def runtime_closure() -> set[str]:
    """Canonical names of every distribution the runtime dependencies need."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pending = [(Requirement(r), set()) for r in project["dependencies"]]
    seen: dict[str, set[str]] = {}
    while pending:
        requirement, _ = pending.pop()
        name = canonicalize_name(requirement.name)
        extras = set(requirement.extras)
        if name in seen and extras <= seen[name]:
            continue
        seen[name] = seen.get(name, set()) | extras
        try:
            requires = metadata.requires(requirement.name) or []
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{requirement.name}: required by the runtime but not installed")
        for line in requires:
            child = Requirement(line)
            if _wanted(child, seen[name]):
                pending.append((child, set()))
    return set(seen)


def locked() -> set[str]:
    lines = (ROOT / "requirements.lock").read_text().splitlines()
    return {canonicalize_name(line.split("==")[0]) for line in lines
            if line[:1].isalnum()}   # not comments, not the indented `--hash=` lines


def dev_only() -> list[str]:
    return sorted(locked() - runtime_closure())


if __name__ == "__main__":
    names = dev_only()
    if "--uninstall" in sys.argv[1:]:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "--yes", "--quiet", *names],
                       check=True)
    print("\n".join(names))
