"""`cardio`: the command-line interface. Commands are thin wrappers over library functions;
long work shows progress on stderr; machine-readable summaries are one JSON object on the last
line of stdout."""
from __future__ import annotations

import json
import os
import sys

# Keras 2 for TFX/TFT/TFMA, set before anything imports TensorFlow.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import click  # noqa: E402


def _progress(total: int, label: str):
    return click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True,
                             show_eta=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name=None, version=__import__("cxr").__version__, prog_name="cardio")
def main():
    """Cardiomegaly detection on chest radiographs: a TFX / Kubeflow pipeline."""


@main.command()
@click.option("--workdir", default="cardio-demo", show_default=True, type=click.Path(),
              help="Where data, pipeline artifacts, MLMD and pushed models go.")
@click.option("--n", "n", default=600, show_default=True, help="Synthetic radiographs to make.")
@click.option("--seed", default=0, show_default=True)
@click.option("--size", default=None, type=int,
              help="Image size in pixels (default: each site's own, 1024-1280).")
@click.option("--weights", default=None, type=click.Path(),
              help="ImageNet weights file or directory (default: $CARDIO_WEIGHTS, ../shared/weights).")
@click.option("--random-init", is_flag=True, help="Train from random initialisation on purpose.")
@click.option("--epochs", default=None, type=int, help="Training epochs (demo default: 8).")
@click.option("--deterministic", is_flag=True, help="Op determinism: reruns give the same model.")
def demo(workdir, n, seed, size, weights, random_init, epochs, deterministic):
    """Run the main job end to end on the built-in synthetic data."""
    from pipeline import demo as demo_lib

    weights = "random" if random_init else (weights or demo_lib.default_weights() or "random")
    overrides = {"deterministic": deterministic}
    if epochs:
        overrides["epochs"] = epochs
    summary = demo_lib.run(os.path.abspath(workdir), n, seed, size, weights, click.echo, _progress,
                           **overrides)
    click.echo(json.dumps(summary["models"] and {
        "seconds": summary["seconds"],
        "models": {k: {"blessed": v["blessed"], "pushed_to": v["pushed_to"]}
                   for k, v in summary["models"].items()}}))


@main.group()
def data():
    """Make and convert datasets."""


@data.command()
@click.option("--out", required=True, type=click.Path(), help="Output directory for TFRecords.")
@click.option("--n", "n", default=400, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--size", default=None, type=int, help="Image size (default: each site's own).")
@click.option("--span", default=1, show_default=True)
@click.option("--external-site", default="site-b", show_default=True)
def synth(out, n, seed, size, span, external_site):
    """Synthetic PA chest radiographs as TFRecords (the built-in default dataset)."""
    from cxr import convert

    with _progress(n, "synthesising radiographs") as bar:
        records = (r for r, _ in convert.synthetic_records(seed, n, size))
        counts = convert.write_span(records, out, span, (external_site,), seed, progress=bar.update)
    click.echo(json.dumps({"out": os.path.abspath(out), "span": span, "counts": counts}))


@main.group()
def pipeline():
    """Run or compile the pipeline."""


@pipeline.command("compile")
@click.option("--output", required=True, type=click.Path(), help="PipelineJob JSON to write.")
@click.option("--profile", type=click.Choice(["study", "demo"]), default="study", show_default=True)
@click.option("--image", default=None, help="Container image for every component.")
@click.option("--pipeline-root", default="gs://YOUR_BUCKET/cardio/pipeline-root", show_default=True)
@click.option("--data-root", default="gs://YOUR_BUCKET/cardio/data", show_default=True)
@click.option("--serving-root", default="gs://YOUR_BUCKET/cardio/serving", show_default=True)
def compile_(output, profile, image, pipeline_root, data_root, serving_root):
    """Compile the pipeline for Kubeflow Pipelines 2.x with KubeflowV2DagRunner."""
    from pipeline import configs, kubeflow_runner

    config = configs.demo_config(weights=None) if profile == "demo" else configs.PipelineConfig()
    path = kubeflow_runner.compile_pipeline(
        config, os.path.abspath(output), data_root=data_root, pipeline_root=pipeline_root,
        serving_root=serving_root, image=image or kubeflow_runner.DEFAULT_IMAGE)
    click.echo(json.dumps({"pipeline_job": path, "profile": profile}))


@main.command()
def versions():
    """Print the versions of the stack this environment runs."""
    from cxr import stack

    click.echo(json.dumps(stack.versions()))


if __name__ == "__main__":
    main()
