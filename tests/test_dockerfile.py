"""The pipeline image's Dockerfile, checked statically (benchmarks/image_build.sh builds it for
real with buildah; too slow for the suite): Debian 13 as a build argument, the lock installed as
is and the dev extra's test tools dropped, Keras 2 set in the image, a numeric non-root user, a
GPU target with the locked CUDA wheels, and the names the compiled pipeline and the manifests
use."""
import importlib.util
import os
import re
import tomllib
from pathlib import Path

import yaml
from importlib import metadata
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from cardio.pipeline import kubeflow_runner

ROOT = Path(__file__).resolve().parents[1]


def stages() -> dict[str, list[str]]:
    """{stage name: its instructions}, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    result, current = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if match:
            current = match.group(2) or match.group(1)
            result[current] = [line]
        elif current:
            result[current].append(line)
    return result


def chain(all_stages, name) -> list[str]:
    """A stage's instructions after those of the stages it is built FROM."""
    base = all_stages[name][0].split()[1]
    return (chain(all_stages, base) if base in all_stages else []) + all_stages[name]


def test_stages_and_base_image():
    all_stages = stages()
    assert list(all_stages)[-1] == "cpu", "a plain `docker build .` must give the CPU image"
    assert {"cpu", "gpu", "build", "build-gpu", "runtime", "weights"} <= set(all_stages)
    base = re.search(r"^ARG DEBIAN_IMAGE=(\S+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE).group(1)
    assert re.fullmatch(r"debian:13(\.\d+)?-slim(@sha256:[0-9a-f]{64})?", base), base
    for name in ("build", "runtime"):
        assert all_stages[name][0].split()[1] == "${DEBIAN_IMAGE}"


def test_runtime_sets_keras_2_and_a_numeric_non_root_user():
    all_stages = stages()
    for target in ("cpu", "gpu"):
        instructions = chain(all_stages, target)
        env = " ".join(i for i in instructions if i.startswith("ENV "))
        assert "TF_USE_LEGACY_KERAS=1" in env, target
        user = [i for i in instructions if i.startswith("USER ")][-1].split()[1]
        uid, gid = user.split(":")
        assert uid.isdigit() and int(uid) >= 1000 and gid.isdigit(), user
        assert any(i.startswith("COPY --from=build") and "/opt/cardio-venv" in i
                   for i in all_stages[target]), target
        # KFP's launcher copies artifacts under /gcs, /minio or /s3 (LocalPathForURI) as this
        # user: each must exist and be the user's, since / is not.
        setup = " ".join(i for i in instructions if i.startswith("RUN "))
        assert f"mkdir /gcs /minio /s3 && chown {uid}:{gid} /gcs /minio /s3" in setup, target


def _pins(path: Path) -> dict[str, str]:
    """{name: version} of a lock; hash lines (indented `--hash=...`) and comments skipped."""
    return dict(line.split()[0].split("==") for line in path.read_text().splitlines()
                if line[:1].isalnum())


def test_the_lock_is_installed_as_is_and_gpu_adds_the_locked_cuda_wheels():
    all_stages = stages()
    build = " ".join(all_stages["build"])
    # pip, the lock and the GPU lock hash-checked; pip pinned; the base pinned by digest or the
    # build stops (the escape is explicit: a base built locally).
    assert "pip install --no-deps --require-hashes -r /tmp/requirements.lock" in build
    pin = re.search(r"pip==(\S+) --hash=sha256:([0-9a-f]{64})", build)
    assert pin and "pip install --no-deps --require-hashes -r /tmp/pip.lock" in build
    assert "--upgrade pip" not in build
    assert re.search(r'case "\$DEBIAN_IMAGE" in\s+\*@sha256:\*\) ;;.*exit 1', build)
    assert "ALLOW_UNPINNED_BASE=1" in (ROOT / "benchmarks" / "image_build.sh").read_text()
    assert "pip install --no-deps /src" in build and "pip check" in build
    # The test tools go again, before pip check.
    assert build.index("tools/runtime_only.py --uninstall") < build.rindex("pip check")
    gpu = " ".join(all_stages["build-gpu"])
    assert "pip install --no-deps --require-hashes -r /tmp/requirements-gpu.lock" in gpu
    for lock in ("requirements.lock", "requirements-gpu.lock"):   # every pin with its hash
        text = (ROOT / lock).read_text()
        pins = re.findall(r"^[A-Za-z0-9][^\s=]*==\S+ \\\n((?: +--hash=sha256:[0-9a-f]{64}(?: \\)?\n)+)",
                          text, re.MULTILINE)
        assert len(pins) == len(_pins(ROOT / lock)) > 0, lock
    assert any("ENV NVIDIA_VISIBLE_DEVICES=all" in i for i in all_stages["gpu"])
    # Every CUDA wheel of the locked TensorFlow's `and-cuda` extra is pinned, within its range.
    assert _pins(ROOT / "requirements.lock")["tensorflow"] == metadata.version("tensorflow")
    gpu_pins = _pins(ROOT / "requirements-gpu.lock")
    cuda = [Requirement(r) for r in metadata.requires("tensorflow")
            if Requirement(r).marker and Requirement(r).marker.evaluate({"extra": "and-cuda"})
            and not Requirement(r).marker.evaluate({"extra": ""})]
    assert len(cuda) >= 10
    for requirement in cuda:
        assert requirement.specifier.contains(gpu_pins[requirement.name]), requirement
    assert set(gpu_pins) == {r.name for r in cuda}


def test_the_production_image_drops_the_test_tools_and_keeps_the_runtime():
    spec = importlib.util.spec_from_file_location("runtime_only", ROOT / "tools" / "runtime_only.py")
    runtime_only = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runtime_only)
    dropped = set(runtime_only.dev_only())
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["dev"]
    assert {Requirement(r).name.lower() for r in dev} <= dropped
    assert not dropped & {"tensorflow", "tfx", "apache-beam", "kfp", "tensorflow-serving-api",
                          "grpcio", "pydicom", "pylibjpeg", "click", "numpy", "protobuf"}
    assert dropped <= {canonicalize_name(n) for n in _pins(ROOT / "requirements.lock")}


def test_dockerignore_admits_exactly_the_installed_packages():
    ignore = [line for line in (ROOT / ".dockerignore").read_text().splitlines()
              if line and not line.startswith("#")]
    assert ignore[0] == "*"
    admitted = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]
    # The package's source root, and every top-level folder it links in as a subpackage.
    linked = {os.path.normpath(os.path.join("src/cardio", os.readlink(p)))
              for p in (ROOT / "src" / "cardio").iterdir() if p.is_symlink()}
    assert linked == {"pipeline", "components", "trainer", "serving", "schemas"}
    assert set(find["where"]) | linked <= admitted
    assert {"requirements.lock", "requirements-gpu.lock", "pyproject.toml", "README.md", "LICENSE",
            "tools/runtime_only.py"} <= admitted
    assert not admitted & {"tests", "cardio-demo", ".git", "data"}


def test_the_compiled_pipeline_and_the_manifests_name_the_images_the_targets_build():
    cpu, gpu = kubeflow_runner.images("registry.example/cardio", "2.0.0")
    assert (cpu, gpu) == ("registry.example/cardio:2.0.0", "registry.example/cardio:2.0.0-gpu")
    kustomization = yaml.safe_load((ROOT / "kubernetes/base/kustomization.yaml").read_text())
    tags = {image["name"]: image["newTag"] for image in kustomization["images"]}
    assert tags[kubeflow_runner.DEFAULT_REPOSITORY] == kubeflow_runner.DEFAULT_TAG
    env = dict(line.split("=", 1) for line in
               (ROOT / "kubernetes/base/retraining.env").read_text().splitlines()
               if line and not line.startswith("#"))
    assert (env["IMAGE"], env["GPU_IMAGE"]) == kubeflow_runner.images(
        kubeflow_runner.DEFAULT_REPOSITORY, kubeflow_runner.DEFAULT_TAG)
