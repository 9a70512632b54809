"""The main job on the built-in default data: synthesise, run the pipeline, report, point at the push.

Steps: synthetic radiographs from two sites -> TFRecords (span 1) -> the local pipeline ->
evaluation per site slice -> where the blessed model was pushed -> gRPC predictions from the
served models (serving/demo.py) -> the time each stage took.

The radiographs are drawn at 384 px by default: the models see 128 px crops of the U-Net's
256 px box either way, so every stage shows what it shows at full size (`--full`: each site's own
1024-1280 px and TFMA's bootstrap CIs, several times slower). A set is drawn once per (n, seed,
size) and kept in the user's cache (synthetic_cache).
"""
from __future__ import annotations

import glob
import hashlib
import os
import shutil
import time
from typing import Callable

from cardio.data import convert
from cardio.pipeline import configs, local_runner, outputs, preflight, report
from cardio.serving import demo as serving_demo

# realpath: src/cardio/pipeline is a link to the checkout's pipeline/ folder.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
DEMO_SIZE = 384                                   # px, the synthetic radiographs' default
FULL = {"ci_method": "bootstrap"}                 # --full: with size None (each site's own)


def default_weights() -> str | None:
    """ImageNet weights for the demo's MobileNet: $CARDIO_WEIGHTS, the shared folder beside the
    repository, or Keras's own cache (trainer.model looks there too). None if there are none."""
    for candidate in (os.environ.get("CARDIO_WEIGHTS"),
                      os.path.join(os.path.dirname(REPO_ROOT), "shared", "weights")):
        if candidate and os.path.exists(candidate):
            return candidate
    from cardio.trainer import model
    try:   # Keras's own cache, ~/.keras/models
        return model.resolve_weights("mobilenet_025", 128, None)
    except model.WeightsNotFound:
        return None


# Measured at the suite's size (240 radiographs, 5 epochs; tests/test_demo_random_init.py, a slow
# check): from random initialisation the MobileNets fit their 108 training images but score
# 0.40-0.62 AUC per site, below the demo gate's 0.6 on at least one site each.
NO_WEIGHTS = (
    "NO IMAGENET WEIGHTS: the models train from random initialisation (--random-init, or no "
    "mobilenet_2_5_224_tf_no_top.h5 in --weights, $CARDIO_WEIGHTS, ../shared/weights or "
    "~/.keras/models). On the demo's few hundred radiographs such models do not generalise "
    "(measured on 240: AUC 0.40-0.62 per site), so the gate is expected to reject them: nothing "
    "will be pushed or served. For the full demo, put that file in ~/.keras/models and run it again.")


def make_data(data_root: str, n: int, seed: int, size: int | None, config, progress) -> dict:
    summary = convert.write_synthetic(data_root, n, seed, size, span=1,
                                      external_sites=(config.external_site,), progress=progress)
    return summary["splits"]


def synthetic_cache(n: int, seed: int, size: int | None, external_site: str) -> str:
    """Where a drawn set is kept: $CARDIO_DATA_CACHE or ~/.cache/cardio/synthetic, keyed on the
    arguments and on the code that draws and writes it (a change there draws it again)."""
    code = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(os.path.dirname(convert.__file__), "*.py"))):
        with open(path, "rb") as f:
            code.update(f.read())
    root = os.environ.get("CARDIO_DATA_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "cardio", "synthetic")
    return os.path.join(root, f"n{n}-seed{seed}-{size or 'full'}px-{external_site}-"
                              f"{code.hexdigest()[:12]}")


def cached_data(data_root: str, n: int, seed: int, size: int | None, config, progress,
                echo: Callable[[str], None]) -> dict:
    """The synthetic span in data_root: copied from the cache, or drawn into the cache first
    (drawn straight into data_root when the cache cannot be written)."""
    cache = synthetic_cache(n, seed, size, config.external_site)
    if not os.path.exists(os.path.join(cache, "span-1", "summary.json")):
        partial = f"{cache}.partial-{os.getpid()}"
        try:
            os.makedirs(partial)
        except OSError as error:
            echo(f"Cannot keep the synthetic radiographs in {cache} ({error.strerror}); drawing them here")
            return make_data(data_root, n, seed, size, config, progress)
        try:
            make_data(partial, n, seed, size, config, progress)
            os.replace(partial, cache)           # complete, or not there at all
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    else:
        echo(f"Reusing the synthetic radiographs drawn before for this n, seed and size ({cache})")
    shutil.copytree(cache, data_root, dirs_exist_ok=True)
    return report.read_counts(data_root)


def run(workdir: str, n: int, seed: int, size: int | None, weights: str | None,
        echo: Callable[[str], None], progress_factory, **overrides) -> dict:
    """Runs the demo; `overrides` replace fields of the demo's PipelineConfig (e.g. epochs)."""
    started = time.time()
    config = configs.demo_config(weights, seed=seed, **overrides)
    data_root = os.path.join(workdir, "data")
    pipeline_root = os.path.join(workdir, "pipeline")
    serving_root = os.path.join(workdir, "serving")

    from cardio.components import evaluator
    random_init = weights in (None, "random")
    # First, and loud: without ImageNet weights the demo is a different demo, on purpose.
    used = None if random_init else weights_used(config)
    echo(NO_WEIGHTS if random_init else f"ImageNet weights: {used}")
    echo(evaluator.describe_gate(config.gate, config.external_site, config.ci_description))
    if not os.path.exists(os.path.join(data_root, "span-1", "summary.json")):
        with progress_factory(n, "synthesising radiographs") as bar:
            counts = cached_data(data_root, n, seed, size, config, bar.update, echo)
    else:
        echo(f"Reusing the synthetic data in {data_root}")
        counts = report.read_counts(data_root)
    echo(report.format_counts(counts))

    found = preflight.check(config, data_root)   # too few positives: stop before training
    data_seconds = time.time() - started
    summary = run_and_report(config, data_root, pipeline_root, serving_root, echo, started)
    summary["stage_seconds"] = [("synthetic radiographs", data_seconds), *summary["stage_seconds"]]
    summary["splits"] = preflight.split_totals(found)
    summary["imagenet_weights"] = used
    if random_init and not summary["serving"].get("served"):
        echo("No model was pushed, as expected without ImageNet weights (see the first line).")
    echo(format_stage_seconds(summary["stage_seconds"], time.time() - started))
    return summary


def format_stage_seconds(stages: list, total: float) -> str:
    """The run's time table: each stage (each pipeline component, as MLMD timed it) and the total."""
    width = max(len(name) for name, _ in stages)
    lines = ["\nTime per stage (seconds)"] + [f"  {name:<{width}} {seconds:7.1f}"
                                              for name, seconds in stages]
    return "\n".join(lines + [f"  {'total':<{width}} {total:7.1f}"])


def weights_used(config) -> str | dict | None:
    """The ImageNet weights file the models start from (or {model name: file} when they differ),
    None when every model starts from random initialisation: what the run uses, not what the
    configuration said (a directory, `imagenet`, or nothing for Keras's cache)."""
    from cardio.trainer import model as model_lib

    used = {}
    for cell in config.grid:
        try:
            used[cell.name] = model_lib.resolve_weights(cell.backbone, config.image_size,
                                                        config.weights)
        except model_lib.WeightsNotFound:   # the Trainer failed on it; nothing was used
            used[cell.name] = None
    if not any(used.values()):
        return None
    return next(iter(used.values())) if len(set(used.values())) == 1 else used


def run_and_report(config, data_root: str, pipeline_root: str, serving_root: str,
                   echo: Callable[[str], None], started: float) -> dict:
    """Runs the pipeline locally, then reports what a reviewer reads: crop QC, every cell's
    evaluation per slice and push, the comparison and the served models' answers."""
    echo(f"Running the pipeline (LocalDagRunner, Beam FnApiRunner); root {pipeline_root}")
    pipeline_started = time.time()
    local_runner.run(config, data_root, pipeline_root, serving_root)

    store = outputs.open_store(local_runner.metadata_path(pipeline_root))
    stages = outputs.stage_seconds(store, config.pipeline_name, since=pipeline_started)
    reporting_started = time.time()
    summary = {"seconds": round(time.time() - started, 1), "models": {}}
    figures = report.crop_report(store, config)
    if figures:
        echo(f"\nSite separability (AUC of a classifier telling the sites apart, 0.5 = alike): "
             f"raw {figures['site_auc_raw']:.3f}, cropped {figures['site_auc_cropped']:.3f}; "
             f"t-SNE: {figures['plot']}")
        summary["site_auc"] = {"raw": figures["site_auc_raw"], "cropped": figures["site_auc_cropped"]}
    qc = report.crop_qc_counts(store, config)
    if qc:
        flagged = sum(c.get("flagged", 0) for c in qc.values())
        echo(f"Crop QC: {flagged} of {sum(c.get('images', 0) for c in qc.values())} radiographs "
             f"flagged and centre-cropped instead; per split: {qc}")
        summary["crop_qc"] = qc
    for cell in config.grid:
        result = report.cell_result(store, config, cell, serving_root)
        summary["models"][cell.name] = result
        echo(report.format_cell(cell.name, result))
    # Every model compared on the same images; the champion is chosen on internal data only.
    comparison = report.model_comparison(store, config)
    if comparison:
        echo(report.format_comparison(comparison))
        summary["comparison"] = comparison
    serving_started = time.time()
    # The main job ends in serving: the pushed models answer over TF Serving's gRPC API.
    summary["serving"] = serving_demo.serve_and_predict(serving_root, data_root, echo)
    summary["stage_seconds"] = [
        *stages, ("pipeline, besides its components", reporting_started - pipeline_started -
                  sum(seconds for _, seconds in stages)),
        ("reports (crop QC, evaluation, comparison)", serving_started - reporting_started),
        ("serving over gRPC", time.time() - serving_started)]
    return summary


def machine_summary(summary: dict) -> dict:
    """The one-line JSON summary both `cardio demo` and `cardio pipeline run` end with."""
    return {
        "seconds": summary["seconds"], "site_auc": summary.get("site_auc"),
        "crop_qc": summary.get("crop_qc"), "serving": summary.get("serving"),
        "comparison": summary.get("comparison"),
        "imagenet_weights": summary.get("imagenet_weights"),
        "splits": summary.get("splits"),
        "models": {k: {"blessed": v["blessed"], "pushed_to": v["pushed_to"],
                       "gate_failures": v.get("gate_failures", []),
                       "model_card": v.get("model_card")}
                   for k, v in summary["models"].items()}}
