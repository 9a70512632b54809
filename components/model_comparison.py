"""ModelComparison: every trained model scored on the same images, compared, one champion chosen.

After the Evaluators (and Pushers): each grid cell's exported SavedModel scores the `validation`,
`test` and `external` splits through its `serving_examples` signature, exactly as TFMA and
serving see it. cardio.evaluation.comparison turns the predictions into AUCs with DeLong CIs, DeLong's test
for every pair of models, metrics at each model's operating threshold and at the study's 0.5,
PPV/NPV at the deployment prevalence, and the fairness review; cardio.evaluation.comparison_report draws the
report. The champion is chosen on internal data only; the external site never chooses.

Output artifact (`comparison`, type cardio.ModelComparison):
  comparison.json   {"champion": {"model_name", "reason", ...}, "models": {...}, "delong": [...],
                     "ctr": the served cardiothoracic ratio beside the champion, or null}
  report.md, report.html and their PNGs; predictions.csv (every model's probability per image);
  overlays/<model>/ (Grad-CAM and guided backprop, when cardio.evaluation.explain is available)

TFX channels have one producer each, so the component's spec is built per grid: for every cell
`<cell>` (hyphens as underscores) it takes `model_<cell>`, `model_run_<cell>`,
`blessing_<cell>` and `pushed_model_<cell>`.
"""
from __future__ import annotations

import concurrent.futures
import csv
import json
import logging
import os
import tempfile

import numpy as np
import tensorflow as tf
from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.artifact import Artifact
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.utils import path_utils

from cardio import features as F
from cardio.components import crop_report as crop_report_lib
from cardio.evaluation import comparison, comparison_report

NODE_ID = "ModelComparison"
OUTPUT_KEY = "comparison"
COMPARISON_JSON = "comparison.json"
PREDICTIONS_CSV = "predictions.csv"
SCORED_SPLITS = (F.VALIDATION, F.TEST, F.EXTERNAL)
CASE_FEATURES = (F.IMAGE_ID, F.LABEL, F.SITE, *F.SUBGROUPS)
ROLES = {"model": standard_artifacts.Model, "model_run": standard_artifacts.ModelRun,
         "blessing": standard_artifacts.ModelBlessing, "pushed_model": standard_artifacts.PushedModel}
BATCH = 32


class ModelComparisonArtifact(Artifact):
    """comparison.json, the comparison report and its figures."""
    TYPE_NAME = "cardio.ModelComparison"   # KFP schema title: cardio/__init__.py resolves it


def input_key(role: str, cell_name: str) -> str:
    return f"{role}_{cell_name.replace('-', '_')}"


# ---------------------------------------------------------------------------------- reading

def _feature(example, name):
    feature = example.features.feature.get(name)
    if feature is None:
        return None
    kind = feature.WhichOneof("kind")
    values = getattr(feature, kind).value if kind else []
    if not values:
        return None
    value = values[0]
    return value.decode() if isinstance(value, bytes) else value


def split_files(examples_uri: str, split: str) -> list:
    files = sorted(tf.io.gfile.glob(os.path.join(examples_uri, f"Split-{split}", "*")))
    if not files:
        raise FileNotFoundError(f"no records for split '{split}' under {examples_uri}")
    return files


def records(examples_uri: str, split: str):
    if not tf.io.gfile.glob(os.path.join(examples_uri, f"Split-{split}", "*")):
        return   # a span without that split (no external site)
    for raw in tf.data.TFRecordDataset(split_files(examples_uri, split), compression_type="GZIP"):
        yield raw.numpy()


def read_cases(examples_uri: str, splits=SCORED_SPLITS) -> dict:
    """{"split": [...], feature: [...]} for every example of the splits, in file order."""
    cases = {"split": [], **{name: [] for name in CASE_FEATURES}}
    for split in splits:
        for index, raw in enumerate(records(examples_uri, split)):
            example = tf.train.Example.FromString(raw)
            cases["split"].append(split)
            for name in CASE_FEATURES:
                value = _feature(example, name)
                if name == F.LABEL and value not in (0, 1):
                    raise ValueError(f"split '{split}', record {index} "
                                     f"(image_id {_feature(example, F.IMAGE_ID)}): label "
                                     f"{value!r} is not 0 or 1")
                cases[name].append(F.UNKNOWN if value is None else value)
    return {name: np.asarray(values) for name, values in cases.items()}


def score(loaded, examples_uri: str, splits=SCORED_SPLITS) -> np.ndarray:
    """Probabilities from the export's serving_examples signature (`loaded`: its
    tf.saved_model.load), in read_cases' order."""

    signature = loaded.signatures[F.SERVING_EXAMPLES]
    probabilities = []
    for split in splits:
        batch = []
        for raw in records(examples_uri, split):
            batch.append(raw)
            if len(batch) == BATCH:
                probabilities.append(signature(examples=tf.constant(batch))[F.PROBABILITY].numpy())
                batch = []
        if batch:
            probabilities.append(signature(examples=tf.constant(batch))[F.PROBABILITY].numpy())
    return np.concatenate(probabilities).astype(np.float64)


CTR_SPLITS = (F.TEST, F.EXTERNAL)   # the CTR reports beside the champion; nothing chooses on it


def measure_ctr(loaded, raw_uri: str, cases: dict) -> dict | None:
    """The served cardiothoracic ratio of every test and external radiograph, by the export's
    serving_default (`loaded`: its tf.saved_model.load) on the stored (uncropped) image as a
    client sends it, aligned with `cases` by image id: {"measured", "truth" (the examples'
    ground-truth `ctr`, NaN where none)}. None when the export serves no CTR (no heart U-Net
    beside its segmenter)."""
    signature = loaded.signatures[F.SERVING_DEFAULT]
    if F.CTR not in signature.structured_outputs:
        return None
    by_id = {}
    for split in CTR_SPLITS:
        ids, images, truths = [], [], []

        def flush():
            ratio = signature(**{F.IMAGE_BYTES: tf.constant(images)})[F.CTR].numpy()
            by_id.update({(split, i): (float(r), t) for i, r, t in zip(ids, ratio, truths)})
            ids.clear(), images.clear(), truths.clear()

        for raw in records(raw_uri, split):
            example = tf.train.Example.FromString(raw)
            truth = _feature(example, F.CTR)
            ids.append(_feature(example, F.IMAGE_ID))
            images.append(example.features.feature[F.IMAGE].bytes_list.value[0])
            truths.append(np.nan if truth is None else float(truth))
            if len(ids) == BATCH:
                flush()
        if ids:
            flush()
    pairs = [by_id.get((split, image_id), (np.nan, np.nan))
             for split, image_id in zip(cases["split"], cases[F.IMAGE_ID])]
    return {"measured": np.array([p[0] for p in pairs]), "truth": np.array([p[1] for p in pairs])}


def _read_json(path: str) -> dict | None:
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def model_info(cell_name: str, model, model_run, blessing, pushed) -> dict:
    """Threshold and cell from the export's metadata (what serving applies), the training target,
    blessing and push state."""

    model_dir = path_utils.serving_model_path(model.uri)
    metadata_path = os.path.join(model_dir, F.ASSETS_EXTRA, F.METADATA_FILE)
    metadata = _read_json(metadata_path)
    if metadata is None or "operating_threshold" not in metadata:
        raise ValueError(f"model {cell_name}: {metadata_path} is missing or has no "
                         "operating_threshold; was it exported by trainer.export?")
    info = {"model_dir": model_dir, "threshold": float(metadata["operating_threshold"]),
            "backbone": metadata.get("backbone"), "weighting": metadata.get("weighting"),
            "heart_segmenter": metadata.get("heart_segmenter"),
            "target_sensitivity": None, "blessed": None, "pushed": None}
    if model_run is not None:
        summary = _read_json(os.path.join(model_run.uri, "training_summary.json")) or {}
        info["target_sensitivity"] = summary.get("config", {}).get("target_sensitivity")
    if blessing is not None:
        info["blessed"] = bool(blessing.get_int_custom_property("blessed")) or \
            tf.io.gfile.exists(os.path.join(blessing.uri, "BLESSED"))
    if pushed is not None:
        properties = pushed.mlmd_artifact.custom_properties
        info["pushed"] = {
            "pushed": bool(pushed.get_int_custom_property("pushed")),
            "destination": properties["pushed_destination"].string_value
            if "pushed_destination" in properties else None,
            "version": properties["pushed_version"].string_value
            if "pushed_version" in properties else None}
    return info


# ---------------------------------------------------------------------------------- overlays

OVERLAY_IMAGES = 2     # cardiomegaly images per split; plus one normal image


def overlay_images(examples_uri: str, splits=(F.TEST, F.EXTERNAL)) -> list:
    """A few images per split (the first cardiomegaly images and the first normal one, in file
    order), as (name, encoded image bytes) for cardio.evaluation.explain."""
    chosen = []
    for split in splits:
        wanted = {1: OVERLAY_IMAGES, 0: 1}
        for raw in records(examples_uri, split):
            example = tf.train.Example.FromString(raw)
            label = _feature(example, F.LABEL)
            if wanted.get(label, 0) > 0:
                wanted[label] -= 1
                name = f"{split}-{'cardiomegaly' if label == 1 else 'normal'}-" \
                       f"{_feature(example, F.IMAGE_ID)}"
                chosen.append((name, example.features.feature[F.IMAGE].bytes_list.value[0]))
            if not any(wanted.values()):
                break
    return chosen


def explain_module():
    """cardio.evaluation.explain, or None in a build without it."""
    try:
        from cardio.evaluation import explain
    except ImportError:
        return None
    return explain


def explain_images(name: str, model_dir: str, loaded, images: list):
    """(the explain module's model, its explanations of `images`) from the already loaded
    export, or (None, a failure note): an explanation failure must not hide the comparison."""
    explain = explain_module()
    try:
        model = explain.load(model_dir, loaded)
        return model, explain.explain(model, images)
    except Exception as error:
        logging.exception("overlays for %s failed", name)
        return None, f"{name}: {type(error).__name__}: {error}"


def write_overlays(models: dict, explained: dict, out_dir: str) -> tuple[dict, str | None]:
    """{figure title or model: [paths relative to out_dir]} and a note for the report when some
    or all are missing. `explained`: {model: explain_images' result}, each model explained once
    for its own figures and for the side-by-side one."""
    explain = explain_module()
    if explain is None:
        return {}, ("Grad-CAM and guided-backprop overlays are not available in this build "
                    "(the module cardio.evaluation.explain is not installed yet); the report has none.")
    overlays, failures = {}, []
    for name, (model, explanations) in sorted(explained.items()):
        if model is None:
            failures.append(explanations)
            continue
        try:
            target = os.path.join(out_dir, "overlays", name)
            paths = explain.write_figures(model, explanations, target)
        except Exception as error:   # a drawing failure must not hide the comparison either
            logging.exception("overlays for %s failed", name)
            failures.append(f"{name}: {type(error).__name__}: {error}")
            continue
        overlays[name] = [os.path.relpath(p, out_dir) for p in paths]
    # The study's Figure 6: per backbone, its class weightings side by side on the same images
    # (shown first in the report).
    figures, by_backbone = {}, {}
    for name, info in sorted(models.items()):
        model, explanations = explained.get(name, (None, None))
        if model is not None:
            by_backbone.setdefault(info.get("backbone"), {})[info.get("weighting") or name] = \
                explanations
    for backbone, per_model in sorted(by_backbone.items(), key=lambda item: str(item[0])):
        if len(per_model) < 2:
            continue
        path = os.path.join(out_dir, "overlays", f"weightings_{backbone}.png")
        try:
            explain.comparison_figure(per_model, path)
        except Exception as error:
            logging.exception("weighting figure for %s failed", backbone)
            failures.append(f"{backbone} weightings: {type(error).__name__}: {error}")
            continue
        figures[f"{backbone}: class weightings side by side"] = [os.path.relpath(path, out_dir)]
    note = ("Overlays could not be drawn for " + "; ".join(failures)) if failures else None
    return {**figures, **overlays}, note


# ---------------------------------------------------------------------------------- executor

def write_predictions(path: str, cases: dict, scores: dict):
    names = sorted(scores)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["split", *CASE_FEATURES, *names])
        for i in range(len(cases["split"])):
            writer.writerow([cases["split"][i], *(cases[c][i] for c in CASE_FEATURES),
                             *(f"{scores[n][i]:.6f}" for n in names)])


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict, output_dict, exec_properties):
        cells = json.loads(exec_properties["cells"])
        settings = json.loads(exec_properties["settings"])
        examples = artifact_utils.get_single_instance(input_dict["examples"])
        raw = input_dict.get("raw_examples") or [examples]
        output = artifact_utils.get_single_instance(output_dict[OUTPUT_KEY])

        def single(role, cell):
            artifacts = input_dict.get(input_key(role, cell)) or []
            return artifacts[0] if artifacts else None

        cases = read_cases(examples.uri)
        images = overlay_images(raw[0].uri) if explain_module() else []
        models, scores, explained, ctr_future = {}, {}, {}, None
        # Each export is loaded once, for everything it is asked here, and released before the
        # next: a whole grid's exports at once would not fit a small pod. The served CTR (three
        # U-Net passes a radiograph, the longest part here) is measured on a thread beside the
        # rest, TensorFlow releasing the GIL: at most two exports are held, its own and the next.
        with tempfile.TemporaryDirectory() as local, \
                concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ctr") as background:
            for cell in cells:
                models[cell] = model_info(cell, single("model", cell), single("model_run", cell),
                                          single("blessing", cell), single("pushed_model", cell))
                loaded = tf.saved_model.load(models[cell]["model_dir"])
                # From the segmenters, the same in every export of a run: any one serves.
                if ctr_future is None and models[cell].get("heart_segmenter"):
                    logging.info("measuring the served CTR on %s", ", ".join(CTR_SPLITS))
                    ctr_future = background.submit(measure_ctr, loaded, raw[0].uri, cases)
                    segmenter = models[cell]["heart_segmenter"]
                logging.info("scoring %s on %s", cell, ", ".join(SCORED_SPLITS))
                scores[cell] = score(loaded, examples.uri)
                if images:
                    explained[cell] = explain_images(cell, models[cell]["model_dir"], loaded,
                                                     images)
                del loaded
            overlays, note = write_overlays(models, explained, local)
            ctr = ctr_future.result() if ctr_future else None
            if ctr is not None:
                ctr["segmenter"] = segmenter
            result = comparison.analyse(
                cases, scores, models, settings["internal_sites"], settings["external_site"],
                prevalence=settings["deployment_prevalence"],
                min_per_class=settings["fairness_min_per_class"], ctr=ctr)
            if input_dict.get("crop_report"):
                result["sites"] = copy_site_figure(input_dict["crop_report"][0].uri, local)
            comparison_report.write(result, local, overlays, note)
            write_predictions(os.path.join(local, PREDICTIONS_CSV), cases, scores)
            with open(os.path.join(local, COMPARISON_JSON), "w") as f:
                json.dump(result, f, indent=1)
            copy_tree(local, output.uri)
        logging.info("champion: %s (%s)", result["champion"]["model_name"],
                     result["champion"]["reason"])


def copy_site_figure(report_uri: str, local: str) -> dict:
    """The CropReport's t-SNE by site (before and after the crop) and its separability AUCs,
    copied beside the comparison report: {"site_auc_raw", "site_auc_cropped", "images", "plot"}."""
    figures = _read_json(os.path.join(report_uri, crop_report_lib.REPORT_JSON))
    tf.io.gfile.copy(os.path.join(report_uri, crop_report_lib.REPORT_PNG),
                     os.path.join(local, crop_report_lib.REPORT_PNG), overwrite=True)
    return {**figures, "plot": crop_report_lib.REPORT_PNG}


def copy_tree(local: str, destination: str):
    """The report files to the artifact's URI (a local path or gs://, s3://)."""
    for root, _, files in os.walk(local):
        target = os.path.join(destination, os.path.relpath(root, local))
        tf.io.gfile.makedirs(target)
        for name in files:
            tf.io.gfile.copy(os.path.join(root, name), os.path.join(target, name), overwrite=True)


# ---------------------------------------------------------------------------------- component

def create(examples, trained: dict, config, raw_examples=None,
           crop_report=None) -> base_component.BaseComponent:
    """The ModelComparison node for this grid; `crop_report` (the CropReport's output, when the
    run has two sites and a crop) puts its site t-SNE and separability into the report.

    trained: {cell name: {"model": channel, "model_run": channel, "blessing": channel,
    "pushed_model": channel}}; `blessing`, `model_run` and `pushed_model` may be left out.
    """
    inputs = {"examples": ChannelParameter(type=standard_artifacts.Examples),
              "raw_examples": ChannelParameter(type=standard_artifacts.Examples, optional=True),
              "crop_report": ChannelParameter(type=crop_report_lib.DatasetReport, optional=True)}
    arguments = {"examples": examples}
    if raw_examples is not None:
        arguments["raw_examples"] = raw_examples
    if crop_report is not None:
        arguments["crop_report"] = crop_report
    for cell, channels in trained.items():
        if "model" not in channels:
            raise ValueError(f"ModelComparison: cell {cell} has no model channel")
        for role, artifact_type in ROLES.items():
            inputs[input_key(role, cell)] = ChannelParameter(type=artifact_type,
                                                             optional=role != "model")
            if role in channels:
                arguments[input_key(role, cell)] = channels[role]
    spec_class = type("ModelComparisonSpec", (types.ComponentSpec,), {
        "PARAMETERS": {"cells": ExecutionParameter(type=str),
                       "settings": ExecutionParameter(type=str)},
        "INPUTS": inputs,
        "OUTPUTS": {OUTPUT_KEY: ChannelParameter(type=ModelComparisonArtifact)}})
    component_class = type("ModelComparison", (base_component.BaseComponent,), {
        "SPEC_CLASS": spec_class, "EXECUTOR_SPEC": executor_spec.ExecutorClassSpec(Executor),
        "__module__": __name__})
    settings = {"internal_sites": list(config.internal_sites),
                "external_site": config.external_site,
                "deployment_prevalence": config.deployment_prevalence,
                "fairness_min_per_class": config.fairness_min_per_class}
    spec = spec_class(cells=json.dumps(list(trained)), settings=json.dumps(settings),
                      **{OUTPUT_KEY: types.Channel(type=ModelComparisonArtifact)}, **arguments)
    return component_class(spec=spec).with_id(NODE_ID)
