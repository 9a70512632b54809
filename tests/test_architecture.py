"""The house rules: one import name, and imports that only run downhill.

import-linter checks the `layers` contract in pyproject.toml; a copy of the package with one
uphill import must break it, so the check is known to bite. The wheel that `pip install .`
builds must put nothing in site-packages but the `cardio` package.
"""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import REPO

LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def _lint_imports(source_root: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(source_root))
    return subprocess.run([LINT_IMPORTS, "--config", str(REPO / "pyproject.toml"), "--no-cache"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_the_layers_contract_is_kept():
    result = _lint_imports(REPO / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout
    # Every package of the house is in the graph: the symlinked folders are followed.
    analysed = int(result.stdout.split("Analyzed ")[1].split(" files")[0])
    assert analysed >= len(list((REPO / "src" / "cardio").rglob("*.py")))


def test_an_uphill_import_breaks_the_contract(tmp_path):
    # A real copy (links resolved), with imaging importing the CLI: the bottom reaching the top.
    copy = tmp_path / "src" / "cardio"
    shutil.copytree(REPO / "src" / "cardio", copy, symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__", "assets"))
    decode = copy / "imaging" / "decode.py"
    decode.write_text(decode.read_text() + "\nfrom cardio import cli  # noqa\n")
    result = _lint_imports(tmp_path / "src")
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and "cardio.imaging.decode -> cardio.cli" in result.stdout


def test_pip_install_exposes_only_the_cardio_namespace(tmp_path):
    # Build the wheel offline with the environment's setuptools from a copy of what the build
    # reads (the checkout stays clean), then install it into a fresh venv exactly as
    # `pip install .` would, dependencies aside: the environment has them.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    for name in ("src", "pipeline", "components", "trainer", "serving", "schemas"):
        shutil.copytree(REPO / name, source / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    clean = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}   # no PYTHONPATH to the checkout
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "--no-index", "-q", "-w", str(tmp_path / "dist"), str(source)],
                           capture_output=True, text=True, timeout=300, env=clean)
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("cardio-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"cardio", wheel.name.split("-py3")[0] + ".dist-info"}
    for expected in ("cardio/pipeline/pipeline.py", "cardio/components/pusher.py",
                     "cardio/trainer/task.py", "cardio/serving/server.py",
                     "cardio/schemas/schema.pbtxt", "cardio/imaging/assets/unet_lungs.weights.h5"):
        assert expected in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, env=clean)
    python = str(venv / "bin" / "python")
    before = set(os.listdir(_purelib(python, clean)))
    install = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                              str(wheel)], capture_output=True, text=True, timeout=300, env=clean)
    assert install.returncode == 0, install.stderr
    added = set(os.listdir(_purelib(python, clean))) - before
    assert {n for n in added if not n.endswith(".dist-info")} == {"cardio"}, added
    # The command points at the package's CLI, and the package imports from site-packages.
    assert "from cardio.cli import main" in (venv / "bin" / "cardio").read_text()
    where = subprocess.run([python, "-c", "import cardio, cardio.features as F; "
                            "print(cardio.__file__, F.SERVING_DEFAULT)"],
                           capture_output=True, text=True, cwd=tmp_path, env=clean)
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(_purelib(python, clean))
    assert where.stdout.split()[1] == "serving_default"


def _purelib(python: str, env: dict) -> str:
    return subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True, env=env).stdout.strip()
