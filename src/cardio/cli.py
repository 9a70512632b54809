"""`cardio`: the command-line interface. Commands are thin wrappers over library functions;
long work shows progress on stderr; machine-readable summaries are one JSON object on the last
line of stdout."""
from __future__ import annotations

import glob
import json
import os
import sys
import tempfile

# Keras 2 for TFX/TFT/TFMA, set before anything imports TensorFlow.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# Log levels the caller set in the environment win over both the quiet default and --verbose.
_CALLER_LOG_LEVELS = {name: os.environ.get(name)
                      for name in ("TF_CPP_MIN_LOG_LEVEL", "GRPC_VERBOSITY")}
# Quiet by default (`cardio --verbose` shows them): TensorFlow's C++ INFO and WARNING lines (the
# oneDNN notice, CPU features, ...) and gRPC's below ERROR. Environment variables, set before
# TensorFlow is imported, so that Beam and TFX subprocesses inherit them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import click  # noqa: E402

from cardio import tf_noise  # noqa: E402

def _set_log_levels(verbose: bool):
    """Quiet (the default): the environment above, absl's Python warnings hidden (TFX's
    deprecation and fallback notices; errors still show) and TensorFlow's load-time noise
    dropped. --verbose: every TensorFlow C++ log line, gRPC's default, absl's warnings."""
    if verbose:
        if _CALLER_LOG_LEVELS["TF_CPP_MIN_LOG_LEVEL"] is None:
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        if _CALLER_LOG_LEVELS["GRPC_VERBOSITY"] is None:
            os.environ.pop("GRPC_VERBOSITY", None)
        return
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
    tf_noise.install()


def _progress(total: int, label: str):
    return click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True,
                             show_eta=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name=None, version=__import__("cardio").__version__, prog_name="cardio")
@click.option("--verbose", is_flag=True,
              help="Show TensorFlow's start-up and C++ log lines, gRPC's and absl's warnings "
                   "(hidden by default).")
def main(verbose):
    """Cardiomegaly detection on chest radiographs: a TFX / Kubeflow pipeline."""
    _set_log_levels(verbose)


@main.command()
@click.option("--workdir", default="cardio-demo", show_default=True, type=click.Path(),
              help="Where data, pipeline artifacts, MLMD and pushed models go.")
@click.option("--n", "n", default=600, show_default=True, help="Synthetic radiographs to make.")
@click.option("--seed", default=0, show_default=True)
@click.option("--size", default=None, type=int,
              help="Image size in pixels (default: 384; with --full each site's own, 1024-1280).")
@click.option("--full", is_flag=True,
              help="The full-size demo: radiographs at each site's own size (1024-1280 px) and "
                   "TFMA's bootstrap CIs (several times slower).")
@click.option("--weights", default=None, type=click.Path(),
              help="ImageNet weights file or directory (default: $CARDIO_WEIGHTS, ../shared/weights).")
@click.option("--random-init", is_flag=True, help="Train from random initialisation on purpose.")
@click.option("--epochs", default=None, type=int, help="Training epochs (demo default: 8).")
@click.option("--deterministic/--nondeterministic", default=True, show_default=True,
              help="Seeded, content-ordered, op-deterministic training: reruns give the same "
                   "model (--nondeterministic may be faster on GPUs).")
@click.option("--segmenter", default=None, type=click.Path(exists=True, file_okay=False),
              help="Directory holding unet_lungs.weights.h5 (default: the shipped U-Net).")
def demo(workdir, n, seed, size, full, weights, random_init, epochs, deterministic, segmenter):
    """Run the main job end to end on the built-in synthetic data."""
    from cardio.pipeline import demo as demo_lib

    weights = "random" if random_init else (weights or demo_lib.default_weights() or "random")
    overrides = {"deterministic": deterministic, **(demo_lib.FULL if full else {})}
    if size is None and not full:
        size = demo_lib.DEMO_SIZE
    if segmenter:
        overrides["segmenter_uri"] = os.path.abspath(segmenter)
    if epochs:
        overrides["epochs"] = epochs
    from cardio.pipeline import preflight

    try:
        summary = demo_lib.run(os.path.abspath(workdir), n, seed, size, weights, click.echo,
                               _progress, **overrides)
    except preflight.SpanError as error:   # e.g. too few positives in a small --n
        raise click.ClickException(str(error))
    click.echo(json.dumps(demo_lib.machine_summary(summary)))


@main.group()
def data():
    """Make and convert datasets."""


def _convert_or_dry_run(selection, loader, out, span, external_sites, dry_run, seed,
                        quarantine=None, quarantine_limit=None, salt=None, id_map=None,
                        notes=None):
    """Shared tail of the converters: a dry run prints the selection; otherwise convert.
    `notes` (what a source assumed, e.g. a view it does not record) go to stderr and into the
    summary JSON."""
    from cardio.data import convert, records

    for note in notes or []:
        click.echo(f"note: {note}", err=True)

    salt = salt or records.patient_salt()
    if not salt:
        raise click.UsageError("set CARDIO_PATIENT_SALT: patient ids are replaced by salted hashes "
                               "and the salt must come from your deployment's configuration")
    if dry_run:
        click.echo(json.dumps({**convert.dry_run_summary(selection, external_sites, seed, salt),
                               **({"notes": notes} if notes else {})}))
        return
    if id_map:
        _check_writable(id_map)
    convert.exit_on_sigterm()
    with _progress(len(selection.candidates), "converting radiographs") as bar:
        try:
            summary = convert.convert(
                selection, loader, out, span, external_sites, salt, seed, quarantine=quarantine,
                quarantine_limit=(convert.DEFAULT_QUARANTINE_LIMIT if quarantine_limit is None
                                  else quarantine_limit), progress=bar.update, id_map=id_map)
        except convert.QuarantineLimitExceeded as error:
            raise click.ClickException(
                f"{error}; no span was written; see {convert.failed_dir(out, span)}/quarantine.csv")
        except FileExistsError as error:
            raise click.ClickException(str(error))
    for name in summary["removed"]:
        click.echo(f"removed {os.path.join(out, name)}, left by an interrupted or failed "
                   f"conversion of span {span}", err=True)
    click.echo(f"quarantined {summary['quarantined']} record(s): {summary['quarantine_reasons']}",
               err=True)
    click.echo(json.dumps({"out": os.path.abspath(out), "span": span, **summary,
                           **({"notes": notes} if notes else {})}))


_out = click.option("--out", type=click.Path(), help="Output directory (span-N/<split>/ TFRecords).")
_span = click.option("--span", default=1, show_default=True, help="Span number to write.")
_dry_run = click.option("--dry-run", is_flag=True,
                        help="Read only the metadata; print the selection as JSON.")
_seed = click.option("--seed", default=0, show_default=True, help="Split seed.")
_limit = click.option("--quarantine-limit", default=0.05, show_default=True,
                      help="Fail when more than this fraction of records is quarantined.")
_bits_stored = click.option(
    "--bits-stored", type=click.IntRange(8, 16), default=None,
    help="Bits the site's 16-bit PNGs really use (12 for a 12-bit detector), when the files "
         "carry no sBIT chunk: they are scaled to 16 bits as a DICOM of that depth is, so both "
         "reach the model alike. Default: the sBIT chunk, else the values as stored.")
_id_map = click.option("--id-map", type=click.Path(dir_okay=False),
                       help="Where to write the salted image id -> source image table (keep it "
                            "with the source data; default: beside the metadata file).")


def _check_writable(id_map: str):
    """Before any image is read: the id map's place (by default beside the source metadata,
    which a hospital often mounts read-only) must take the file."""
    directory = os.path.dirname(os.path.abspath(id_map))
    try:   # a real write: permission bits say nothing for root or on a read-only mount
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".id-map-check-"):
            pass
        writable = not os.path.exists(id_map) or os.access(id_map, os.W_OK)
    except OSError:
        writable = False
    if not writable:
        raise click.UsageError(
            f"cannot write the image-id map {id_map} (its directory is missing or read-only); "
            f"pass --id-map PATH to write it elsewhere (keep it with the source data, never with "
            f"the span)")


def _id_map_path(id_map, metadata_path):
    return id_map or f"{os.path.splitext(metadata_path.removesuffix('.gz'))[0]}.image-ids.csv"


@data.command()
@click.option("--out", required=True, type=click.Path(), help="Output directory for TFRecords.")
@click.option("--n", "n", default=600, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--size", default=None, type=int, help="Image size (default: each site's own).")
@_span
@click.option("--external-site", default="site-b", show_default=True)
@click.option("--files", is_flag=True,
              help="Write image files as each site stores them (PNG; DICOM MONOCHROME1), masks and "
                   "an export.csv for `cardio data csv`, instead of TFRecords.")
def synth(out, n, seed, size, span, external_site, files):
    """Synthetic PA chest radiographs as TFRecords (the built-in default dataset)."""
    from cardio.data import convert, synth as synth_lib

    if files:
        with _progress(n, "writing synthetic radiograph files") as bar:
            click.echo(json.dumps(synth_lib.export_files(out, n, seed, size, progress=bar.update)))
        return
    with _progress(n, "synthesising radiographs") as bar:
        summary = convert.write_synthetic(out, n, seed, size, span, (external_site,),
                                          progress=bar.update)
    click.echo(json.dumps({"out": os.path.abspath(out), "span": span, **summary}))


@data.command()
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG file to write.")
@click.option("--n", "n", default=8, show_default=True)
@click.option("--seed", default=0, show_default=True)
def preview(out, n, seed):
    """A contact sheet of synthetic radiographs with their lung and heart outlines."""
    from cardio.data import preview as preview_lib

    click.echo(json.dumps({"out": os.path.abspath(preview_lib.contact_sheet(out, n, seed))}))


@data.command()
@click.option("--labels", required=True, type=click.Path(exists=True, dir_okay=False),
              help="PadChest label CSV (.csv or .csv.gz).")
@click.option("--images", type=click.Path(exists=True, file_okay=False),
              help="Image root holding <ImageDir>/<ImageID> 16-bit PNGs.")
@_out
@_span
@_dry_run
@_seed
@_limit
@_id_map
@_bits_stored
def padchest(labels, images, out, span, dry_run, seed, quarantine_limit, id_map, bits_stored):
    """PadChest -> the study's cohort (PA, physician-labelled, no external objects)."""
    import functools

    from cardio.data import convert
    from cardio.data.sources import padchest as source

    if not dry_run and not (images and out):
        raise click.UsageError("--images and --out are required unless --dry-run")
    selection = source.select(labels)
    _convert_or_dry_run(selection, functools.partial(convert.file_loader, images or "",
                                                     bits_stored=bits_stored), out, span,
                        ("openi",), dry_run, seed, quarantine_limit=quarantine_limit,
                        id_map=_id_map_path(id_map, labels))


@data.command()
@click.option("--reports", required=True, type=click.Path(exists=True),
              help="OpenI report XMLs: the .tgz or its extracted directory.")
@click.option("--dicom-metadata", required=True, type=click.Path(exists=True, dir_okay=False),
              help="DICOM metadata table (.csv or .csv.gz) with imageid and View Position.")
@click.option("--images", type=click.Path(exists=True, file_okay=False),
              help="Image root holding <image id>.png.")
@_out
@_span
@_dry_run
@_seed
@_limit
@_id_map
def openi(reports, dicom_metadata, images, out, span, dry_run, seed, quarantine_limit, id_map):
    """OpenI / Indiana -> the external site (PA; MeSH normal vs cardiomegaly)."""
    import functools

    from cardio.data import convert
    from cardio.data.sources import openi as source

    if not dry_run and not (images and out):
        raise click.UsageError("--images and --out are required unless --dry-run")
    selection = source.select(reports, dicom_metadata)
    _convert_or_dry_run(selection, functools.partial(convert.file_loader, images or ""), out, span,
                        (source.SITE,), dry_run, seed, quarantine_limit=quarantine_limit,
                        id_map=_id_map_path(id_map, dicom_metadata))


@data.command("csv")
@click.option("--csv", "csv_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="CSV with path,label,patient_id[,sex,age,view,site].")
@click.option("--images", required=True, type=click.Path(exists=True, file_okay=False),
              help="Root the CSV's paths are relative to (PNG, JPEG or DICOM files).")
@click.option("--external-site", "external_sites", multiple=True,
              help="Site(s) that form the external split (repeatable).")
@click.option("--site", "default_site",
              help="Site of rows without one (a site of the schema); rows with neither are "
                   "quarantined.")
@click.option("--view", "views", multiple=True, default=("PA",), show_default=True,
              help="Projection(s) to keep (repeatable: --view PA --view AP); other rows are "
                   "excluded and counted. List the same in the configuration's `views`.")
@click.option("--wingspan", "wingspan_dir", type=click.Path(exists=True, file_okay=False),
              help="Also convert the Wingspan set in this directory (labels.csv, images/) into "
                   "the same span, as site `wingspan` (label: measured CTR > 0.5; its unrecorded "
                   "view taken as PA, and said). Add --external-site wingspan to make it the "
                   "external split.")
@_out
@_span
@_dry_run
@_seed
@_limit
@_id_map
@_bits_stored
def csv_(csv_path, images, external_sites, default_site, views, wingspan_dir, out, span, dry_run,
         seed, quarantine_limit, id_map, bits_stored):
    """Any other hospital's export, described by a CSV."""
    import functools

    from cardio.data import convert

    if not dry_run and not out:
        raise click.UsageError("--out is required unless --dry-run")
    try:
        selection = convert.csv_selection(csv_path, default_site, views)
    except ValueError as error:
        raise click.ClickException(str(error))
    loader = functools.partial(convert.file_loader, images, bits_stored=bits_stored)
    notes = []
    if wingspan_dir:
        from cardio.data.sources import wingspan
        if any(c.site == wingspan.SITE for c in selection.candidates):
            raise click.UsageError(f"{csv_path} has rows of site {wingspan.SITE!r} already; "
                                   f"--wingspan adds that site")
        if "PA" not in [v.strip().upper() for v in views]:
            raise click.UsageError("--wingspan needs --view PA: its radiographs are taken as PA")
        extra, assumed_pa = wingspan.select(os.path.join(wingspan_dir, "labels.csv"))
        selection = convert.merge_selections(selection, extra)
        loader = convert.loader_by_site(loader, {wingspan.SITE: convert.with_ground_truth(
            functools.partial(convert.file_loader, os.path.join(wingspan_dir, "images")),
            wingspan.ground_truth(os.path.join(wingspan_dir, "labels.csv")))})
        if assumed_pa:
            notes.append(f"{wingspan.VIEW_NOTE}: {assumed_pa} radiograph(s)")
    _convert_or_dry_run(selection, loader, out, span, tuple(external_sites), dry_run, seed,
                        quarantine_limit=quarantine_limit, id_map=_id_map_path(id_map, csv_path),
                        notes=notes)


@main.group()
def unet():
    """Lung- and heart-segmentation U-Nets: train (one-off, resumable) and evaluate."""


_TARGET = click.option("--target", type=click.Choice(["lungs", "heart"]), default="lungs",
                       show_default=True,
                       help="What the U-Net segments: the lungs (the crop) or the heart (the "
                            "cardiothoracic ratio; half the filters, 25% held out).")


@unet.command("train")
@click.option("--images", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--masks", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Weights file to write.")
@click.option("--epochs", default=None, type=int,
              help="Epochs (default: 60).")
@click.option("--batch-size", default=8, show_default=True)
@click.option("--checkpoint-dir", default=None, type=click.Path(file_okay=False),
              help="Where epochs are checkpointed for resuming (default: <out>.checkpoints).")
@_TARGET
def unet_train(images, masks, out, epochs, batch_size, checkpoint_dir, target):
    """Train on (image, mask) pairs; a rerun resumes from the last completed epoch."""
    from cardio.imaging import unet as unet_lib

    result = unet_lib.train(images, masks, out, epochs, batch_size, checkpoint_dir,
                            log=lambda m: click.echo(m, err=True), target=target)
    click.echo(json.dumps({"weights": os.path.abspath(out), "held_out": result}))


@unet.command("evaluate")
@click.option("--images", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--masks", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--weights", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Weights file (default: the shipped U-Net).")
@click.option("--held-out-only", is_flag=True, help="Only the images training held out.")
@_TARGET
def unet_evaluate(images, masks, weights, held_out_only, target):
    """Mean Dice against the masks (overall and per subset), as JSON."""
    from cardio.imaging import unet as unet_lib

    click.echo(json.dumps(unet_lib.evaluate(images, masks, weights, held_out_only, target)))


@main.command("crop")
@click.option("--images", required=True, type=click.Path(exists=True, file_okay=False),
              help="Folder of radiographs: PNG (8/16-bit), JPEG or DICOM, any size.")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--weights", default=None, type=click.Path(exists=True, dir_okay=False),
              help="U-Net weights (default: the shipped U-Net).")
@click.option("--size", default=512, show_default=True, help="Side of the cropped PNGs.")
@click.option("--overlays", default=8, show_default=True, help="Review overlays to draw.")
def crop_(images, out, weights, size, overlays):
    """Crop radiographs to the chest cavity: PNGs, a CSV of boxes and QC flags, overlays."""
    import glob

    from cardio.imaging import crop_folder

    total = len(glob.glob(os.path.join(images, "*")))
    with _progress(total, "cropping") as bar:
        counts = crop_folder.crop_folder(images, out, weights, size, overlays, bar.update)
    click.echo(json.dumps(counts))


@main.command("explain")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A pushed model, <serving root>/<model> (its newest version) or "
                   "<serving root>/<model>/<version>, or an export.")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", default="explain", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the figures (one PNG per image).")
def explain_(model_dir, images, out):
    """Where the model looks: Grad-CAM and guided backprop for radiographs (PNG, JPEG, DICOM)."""
    from cardio.evaluation import explain as explain_lib

    try:
        model = explain_lib.load(model_dir)
    except explain_lib.ExplainError as error:
        raise click.ClickException(str(error))
    with _progress(len(images), "explaining") as bar:
        summary = explain_lib.explain_files(model, list(images), out, bar.update, click.echo)
    click.echo(json.dumps(summary))
    if summary["failed"]:
        sys.exit(1)


@main.group()
def pipeline():
    """Run or compile the pipeline."""


@pipeline.command("compile")
@click.option("--output", required=True, type=click.Path(dir_okay=False),
              help="PipelineJob JSON to write (Vertex); the PipelineSpec YAML for Kubeflow "
                   "Pipelines and schema.pbtxt are written beside it.")
@click.option("--profile", type=click.Choice(["study", "demo"]), default="study", show_default=True,
              help="Grid and gate: they shape the DAG, so each profile is its own pipeline.")
@click.option("--config", "config_file", default=None,
              help="Pipeline configuration file (YAML) instead of --profile: its grid, gate, "
                   "sites and recipe; its data_root/serving_root unless given here. Shipped: "
                   "study, demo, nih.")
@click.option("--image", default=None, help="The CPU image in full, e.g. "
              "REGISTRY/cardio:0.1.0@sha256:... (every component but the Trainers); with "
              "--gpu-image, instead of --image-repository/--image-tag.")
@click.option("--gpu-image", default=None, help="The GPU image in full (the Trainers, the "
              "TFJob replicas), e.g. REGISTRY/cardio:0.1.0-gpu@sha256:...")
@click.option("--image-repository", default="ghcr.io/cardio-pipeline/cardio", show_default=True)
@click.option("--image-tag", default=None, help="Image tag (default: the package version); the "
              "Trainers run TAG-gpu. No digest here: use --image and --gpu-image.")
@click.option("--pipeline-root", default="gs://YOUR_BUCKET/cardio/pipeline-root", show_default=True)
@click.option("--data-root", default="gs://YOUR_BUCKET/cardio/data", show_default=True,
              help="Default of the data_root runtime parameter.")
@click.option("--serving-root", default="gs://YOUR_BUCKET/cardio/serving", show_default=True)
@click.option("--segmenter-uri", default="gs://YOUR_BUCKET/cardio/unet", show_default=True,
              help="Object-store directory holding unet_lungs.weights.h5 (upload "
                   "src/cardio/imaging/assets/ there); with --config, the file's unless given.")
@click.option("--weights", default="image", show_default=True,
              help="ImageNet weights: 'image' (baked into the pipeline image at "
                   "/opt/cardio/weights), a gs:// URI, or 'random'; with --config, the file's "
                   "unless given. Local paths and 'imagenet' (a download in the pod) are refused.")
@click.option("--beam-runner", type=click.Choice(["in-pod", "portable", "dataflow"]),
              default="in-pod", show_default=True)
@click.option("--beam-job-endpoint", default=None, help="HOST:PORT of the Beam job server "
              "(portable runner: Flink or Spark).")
@click.option("--beam-arg", "beam_extra", multiple=True,
              help="Extra beam_pipeline_args, e.g. --beam-arg=--project=P (repeatable).")
@click.option("--training", type=click.Choice(["in-pod", "tfjob"]), default="in-pod",
              show_default=True, help="Train in the Trainer's pod, or launch a multi-worker TFJob.")
@click.option("--trainer-gpus", default=1, show_default=True, help="GPUs per Trainer pod or replica.")
@click.option("--tfjob-workers", default=2, show_default=True, help="TFJob replicas (chief included).")
@click.option("--gpu-type", default="nvidia.com/gpu", show_default=True,
              help="GPU resource name (Kubernetes) or accelerator type (Vertex, e.g. NVIDIA_L4).")
def compile_(output, profile, config_file, image, gpu_image, image_repository, image_tag,
             pipeline_root, data_root, serving_root, segmenter_uri, weights, beam_runner,
             beam_job_endpoint, beam_extra, training, trainer_gpus, tfjob_workers, gpu_type):
    """Compile the pipeline for Kubeflow Pipelines 2.x with KubeflowV2DagRunner."""
    from cardio.pipeline import kubeflow_runner

    source = click.get_current_context().get_parameter_source
    default = click.core.ParameterSource.DEFAULT
    if (image or gpu_image) and (image_tag or source("image_repository") != default):
        raise click.UsageError("give the images either in full (--image and --gpu-image) or as "
                               "--image-repository and --image-tag, not both")

    config = None
    if config_file:   # the file's values, except options given on the command line
        run_config = _load_config(config_file)
        config = run_config.config
        if source("data_root") == default and run_config.data_root:
            data_root = run_config.data_root
        if source("serving_root") == default and run_config.serving_root:
            serving_root = run_config.serving_root
        segmenter_uri = None if source("segmenter_uri") == default else segmenter_uri
        weights = None if source("weights") == default else weights
    try:
        summary = kubeflow_runner.compile_profile(
            profile, os.path.abspath(output), data_root=data_root, pipeline_root=pipeline_root,
            serving_root=serving_root, segmenter_uri=segmenter_uri,
            repository=image_repository, tag=image_tag or kubeflow_runner.DEFAULT_TAG,
            weights=weights, beam_runner=beam_runner, beam_job_endpoint=beam_job_endpoint,
            beam_extra=beam_extra, training=training, trainer_gpus=trainer_gpus,
            tfjob_workers=tfjob_workers, gpu_type=gpu_type, config=config, image=image,
            gpu_image=gpu_image)
    except ValueError as error:
        raise click.UsageError(str(error))
    click.echo(f"upload {summary['schema']} to {summary['schema_uri']} before the first run",
               err=True)
    click.echo(json.dumps(summary))


def _load_config(path: str):
    from cardio.pipeline import config_file

    try:
        return config_file.load(path)
    except config_file.ConfigError as error:
        raise click.UsageError(str(error))


@pipeline.command("run")
@click.option("--config", "config_file", required=True,
              help="Pipeline configuration file (YAML), or a shipped one: study, demo, nih.")
@click.option("--data-root", default=None, type=click.Path(exists=True, file_okay=False),
              help="Converted spans (span-N/<split>/); default: the file's data_root.")
@click.option("--workdir", default=None, type=click.Path(file_okay=False),
              help="Pipeline artifacts, MLMD and (unless the file says) pushed models; "
                   "default: the file's workdir.")
def run_(config_file, data_root, workdir):
    """Run a configuration file's pipeline on this machine (LocalDagRunner)."""
    from cardio.pipeline import demo as demo_lib, preflight, run as run_lib

    run_config = run_lib.with_places(_load_config(config_file), data_root, workdir)
    try:
        summary = run_lib.run(run_config, click.echo)
    except preflight.SpanError as error:
        raise click.ClickException(str(error))
    click.echo(json.dumps({"config": summary["config"], **demo_lib.machine_summary(summary)}))


_kfp_host = click.option("--host", required=True, envvar="KFP_HOST",
                         help="Kubeflow Pipelines API endpoint ($KFP_HOST).")
_kfp_package = click.option("--package", required=True, type=click.Path(exists=True, dir_okay=False),
                            help="PipelineSpec YAML written by `cardio pipeline compile`.")
_kfp_experiment = click.option("--experiment", default="cardio-retraining", show_default=True)
_kfp_namespace = click.option("--namespace", default=None, help="Kubeflow profile namespace.")
_kfp_root = click.option("--pipeline-root", "root", default=None,
                         help="Override the compiled spec's pipeline root for this submission.")
_kfp_token = click.option(
    "--token-file", default=None, envvar="KF_PIPELINES_SA_TOKEN_PATH",
    help="File holding the bearer token for the KFP API, re-read before every request (a "
         "projected service account token, audience pipelines.kubeflow.org; "
         "$KF_PIPELINES_SA_TOKEN_PATH; default: kfp's mount point when present, else none).")


def _kfp_call(call):
    """Runs a submission: bad input is a usage error (exit 2); a cluster that is not there or
    refuses the call is one line naming the host and the cause (exit 1)."""
    from cardio.pipeline import scheduling

    try:
        return call()
    except ValueError as error:
        raise click.UsageError(str(error))
    except scheduling.ClusterError as error:
        raise click.ClickException(str(error))


@pipeline.command("submit")
@_kfp_host
@_kfp_package
@_kfp_experiment
@_kfp_namespace
@_kfp_root
@_kfp_token
@click.option("--run-name", default=None)
def submit(host, package, experiment, namespace, root, token_file, run_name):
    """Start one run of a compiled pipeline on Kubeflow Pipelines."""
    from cardio.pipeline import scheduling

    click.echo(json.dumps(_kfp_call(lambda: scheduling.submit(
        host, package, experiment, namespace, run_name, root=root, token_file=token_file))))


@pipeline.command("schedule")
@_kfp_host
@_kfp_package
@_kfp_experiment
@_kfp_namespace
@click.option("--cron", default="0 0 3 * * 1", show_default=True,
              help="KFP cron, six fields with seconds first (default: Mondays 03:00 UTC).")
@click.option("--job-name", default="cardio-retraining", show_default=True)
@_kfp_root
@_kfp_token
def schedule(host, package, experiment, namespace, cron, job_name, root, token_file):
    """Create a recurring run: scheduled retraining on the newest data span."""
    from cardio.pipeline import scheduling

    click.echo(json.dumps(_kfp_call(lambda: scheduling.schedule(
        host, package, cron, job_name, experiment, namespace, root=root,
        token_file=token_file))))


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                "help_option_names": ["-h", "--help"]})
@click.argument("flags", nargs=-1, type=click.UNPROCESSED)
def serve(flags):
    """A drop-in for tensorflow_model_server (gRPC and REST) on one machine.

    Takes its flags: --port, --rest_api_port, --rest_api_timeout_in_ms, --rest_api_num_threads,
    --model_name, --model_base_path, --model_config_file, --model_config_file_poll_wait_seconds,
    --file_system_poll_wait_seconds, --enable_batching, --batching_parameters_file,
    --grpc_channel_arguments, --grpc_max_threads, --enable_model_warmup,
    --num_request_iterations_for_warmup, --enable_signature_method_name_check,
    --max_num_load_retries, --load_retry_interval_micros, --monitoring_config_file. Its other
    flags are refused by name. Hardening (cardio serve only): --bind_address,
    --allow_reload_config_request, --reload_config_allowed_roots, --max_tensor_elements,
    --max_tensor_bytes, --memory_limit_bytes, --grpc_max_concurrent_rpcs,
    --rest_api_max_body_bytes, --rest_api_header_timeout_in_ms, --rest_api_body_timeout_in_ms,
    --rest_api_max_connections.
    """
    from cardio.serving import server

    try:
        sys.exit(server.main(list(flags), echo=lambda line: click.echo(line)))
    except server.FlagError as error:
        raise click.UsageError(str(error))


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--server", "target", default=None, help="HOST:PORT of TF Serving's gRPC API.")
@click.option("--rest", "rest_url", default=None,
              help="http://HOST:PORT of TF Serving's REST API (instead of --server).")
@click.option("--model", default="default", show_default=True, help="Model name.")
@click.option("--version", "version", type=int, default=None, help="Model version.")
@click.option("--label", default=None, help="Version label (stable, canary); not with --version.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image.")
@click.option("--timeout", default=30.0, show_default=True, help="Deadline per request (s).")
@click.option("--retries", default=4, show_default=True, help="Retries on UNAVAILABLE.")
@click.option("--batch-size", default=1, show_default=True, help="Images per request.")
@click.option("--tls", is_flag=True, help="TLS channel (server certificate checked).")
@click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False),
              help="CA certificate (PEM) for --tls (default: the system's roots).")
def predict(images, target, rest_url, model, version, label, as_json, timeout, retries,
            batch_size, tls, tls_ca):
    """Send radiographs (PNG, JPEG, DICOM files or folders) to TF Serving (gRPC or REST)."""
    from cardio.serving import client as client_lib

    if version is not None and label is not None:
        raise click.UsageError("--version and --label are exclusive")
    if bool(target) == bool(rest_url):
        raise click.UsageError("name exactly one of --server (gRPC) and --rest (HTTP)")
    try:
        files = client_lib.image_files(images)
    except client_lib.ImageError as error:
        raise click.UsageError(str(error))
    ca = open(tls_ca, "rb").read() if tls_ca else None
    failed = 0
    with (client_lib.RestClient(rest_url, timeout, retries) if rest_url else
          client_lib.Client(target, timeout, retries, tls or bool(ca), ca)) as client:
        for path, result in client_lib.predict_files(client, files, model, version, label,
                                                     batch_size):
            failed += isinstance(result, str)
            if as_json:
                click.echo(json.dumps({"file": path, **({"error": result}
                                                        if isinstance(result, str) else result)}))
            else:
                click.echo(client_lib.format_row(path, result))
    if not as_json:
        click.echo(json.dumps({"images": len(files), "failed": failed}))
    if failed:
        sys.exit(1)


@main.group()
def release():
    """Move version labels (stable, canary) in <serving root>/models.config."""


_root = click.option("--serving-root", required=True, type=click.Path(exists=True, file_okay=False),
                     help="Where the Pusher writes <model>/<version>/ and models.config.")
_label = click.option("--label", default="stable", show_default=True)
_reason = click.option("--reason", default="", help="Recorded in release_history.jsonl.")


@release.command("promote")
@_root
@click.option("--model", default=None, help="Model name (or --comparison).")
@click.option("--comparison", type=click.Path(exists=True, dir_okay=False),
              help="comparison.json of a model comparison: promote the exact version of its "
                   "champion it evaluated (refused if not pushed or not loadable).")
@click.option("--version", "version", type=int, default=None,
              help="Version (default: the canary version; for --label canary the newest push).")
@_label
@_reason
def release_promote(serving_root, model, comparison, version, label, reason):
    """Point a label at a version; the server picks it up at its next config poll."""
    from cardio.serving import releases

    if bool(model) == bool(comparison):
        raise click.UsageError("name exactly one of --model and --comparison")
    if comparison and version is not None:
        raise click.UsageError("--comparison promotes the version it evaluated; no --version")
    try:
        if comparison:
            move = releases.promote_champion(serving_root, comparison, label, reason)
        else:
            move = releases.promote(serving_root, model, label, version, reason)
    except releases.ReleaseError as error:
        raise click.ClickException(str(error))
    click.echo(json.dumps(move))


@release.command("rollback")
@_root
@click.option("--model", required=True)
@_label
@_reason
def release_rollback(serving_root, model, label, reason):
    """Point a label back at the version it held before its last promotion."""
    from cardio.serving import releases

    try:
        click.echo(json.dumps(releases.rollback(serving_root, model, label, reason)))
    except releases.ReleaseError as error:
        raise click.ClickException(str(error))


@main.command()
def versions():
    """Print the versions of the stack this environment runs."""
    from cardio import stack

    click.echo(json.dumps(stack.versions()))


if __name__ == "__main__":
    main()
