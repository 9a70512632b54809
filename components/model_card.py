"""The model card of each evaluated model (Markdown + JSON), as a pipeline artifact.

`ModelCard.<cell>` runs after the cell's Pusher and writes `model_card.md` and `model_card.json`:
status (blessed, pushed where), licences (the embedded lung U-Net's non-commercial licence
first), intended use, the data (sites, counts per split, site and class, a fingerprint of the
evaluated examples), the training configuration, the gate and its outcome, metrics per slice with
95% bootstrap CIs, the operating point, lineage (git commit, container image digest when known,
U-Net weights sha256, MLMD ids) and limitations. Models the gate rejected get a card too, headed
NOT PUSHED, so a reviewer sees why.

`build(...)` gathers the card from artifact locations and `write(out_dir, card)` writes both
files, so the serving side can put a card beside a pushed model without the pipeline.
The short card inside every export (trainer/export.py, assets.extra/MODEL_CARD.md) stays.
"""

import collections
import hashlib
import json
import os
import subprocess

import tensorflow as tf
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types.artifact import Artifact
from tfx.types.standard_artifacts import (
    Examples,
    Model,
    ModelBlessing,
    ModelEvaluation,
    ModelRun,
    PushedModel,
)

from cardio import features as F
from cardio.components import gate as gate_lib
from cardio.evaluation import statistics as S

MARKDOWN = "model_card.md"
JSON = "model_card.json"
PROJECT_LICENCE = "Apache-2.0 (the project's code)"
UNET_CARD = "src/cardio/imaging/assets/MODEL_CARD.md"
# Figures shown per slice, in this order; every one with its 95% bootstrap CI.
CARD_METRICS = ("example_count", "auc", "sensitivity", "specificity", "precision", "f1",
                "brier_score", "calibration", "tp", "fp", "tn", "fn")
NO_INTERVALS = ("no confidence intervals were computed (the run set confidence_intervals: "
                "false)")
SMALL_SLICE = 30    # fewer examples than this: the card warns the figure is unstable

INTENDED_USE = (
    "Research on detecting cardiomegaly on adult PA chest radiographs, and a reference for "
    "validating such models across sites. Not a medical device; not for clinical decisions or "
    "for triage without a prospective, site-specific validation and regulatory clearance.")
LIMITATIONS = (
    "PA projections only; the training and test populations are those of the sites listed "
    "under Data, and performance elsewhere is unknown until measured on that site's own slice.",
    "Labels come from report text mining or synthetic ground truth, not from echocardiography; "
    "the cardiothoracic ratio threshold behind the label is a proxy.",
    "Slices with few examples have wide confidence intervals; the gate compares point "
    "estimates, so read the interval before trusting a slice.",
    "The operating threshold was chosen on the internal validation split; sensitivity and "
    "specificity at another site's prevalence and acquisition may differ.",
    "The lung crop falls back to a centre crop when the U-Net's mask is implausible (QC flags "
    "are returned by serving); such images were seen in training and evaluation too.",
    "The same configuration, records and seed give the same model; another seed gives another "
    "model, and that seed-to-seed spread is not measured: the interval is the test images' "
    "sampling uncertainty only.",
)


class ModelCardArtifact(Artifact):
    """A model card (Markdown for people, JSON for machines)."""
    TYPE_NAME = "cardio.ModelCard"  # KFP schema title: cardio/__init__.py resolves it


def source_revision(repo_dir: str | None = None) -> str:
    """The git commit of the running code: $CARDIO_GIT_COMMIT (set it in images built without
    .git), else `git` ("-dirty" when tracked files have uncommitted changes), else
    .git/HEAD read directly (environments without a git binary), else "unknown"."""
    if os.environ.get("CARDIO_GIT_COMMIT"):
        return os.environ["CARDIO_GIT_COMMIT"]
    repo_dir = repo_dir or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "-C", repo_dir, "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", repo_dir, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return _read_git_head(os.path.join(repo_dir, ".git")) or "unknown"


def _read_git_head(git_dir: str) -> str | None:
    try:
        head = open(os.path.join(git_dir, "HEAD")).read().strip()
        if not head.startswith("ref: "):
            return head                                   # detached HEAD: the commit itself
        ref = head[len("ref: "):]
        if os.path.exists(os.path.join(git_dir, ref)):
            return open(os.path.join(git_dir, ref)).read().strip()
        for line in open(os.path.join(git_dir, "packed-refs")):
            if line.rstrip().endswith(" " + ref):
                return line.split()[0]
    except OSError:
        return None
    return None


def _read_json(path: str) -> dict | None:
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def data_summary(examples_uri: str, splits=F.SPLITS) -> dict:
    """Counts per split, site and class, and a fingerprint of the examples: sha256 over the sorted
    (split, image id, site, label) lines, so the same records give the same fingerprint whatever
    their order or sharding."""
    spec = {name: tf.io.FixedLenFeature([], dtype) for name, dtype in
            ((F.IMAGE_ID, tf.string), (F.SITE, tf.string), (F.LABEL, tf.int64))}
    counts, lines = {}, []
    for split in splits:
        files = tf.io.gfile.glob(os.path.join(examples_uri, f"Split-{split}", "*"))
        if not files:
            continue
        tally = collections.Counter()
        dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(256).map(
            lambda raw: tf.io.parse_example(raw, spec))
        for batch in dataset:
            for image_id, site, label in zip(batch[F.IMAGE_ID].numpy(), batch[F.SITE].numpy(),
                                             batch[F.LABEL].numpy()):
                site = site.decode()
                tally[(site, "cardiomegaly" if label == 1 else "normal")] += 1
                lines.append(f"{split}\t{image_id.decode()}\t{site}\t{int(label)}")
        per_site = collections.defaultdict(dict)
        for (site, name), n in sorted(tally.items()):
            per_site[site][name] = n
        counts[split] = dict(per_site)
    fingerprint = hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()
    return {"counts": counts, "examples": len(lines), "fingerprint_sha256": fingerprint,
            "sites": sorted({site for split in counts.values() for site in split})}


def build(*, cell: str, model_uri: str, model_run_uri: str | None, evaluation_uri: str,
          blessed: bool, examples_uri: str, gate: dict, pushed_to: str | None = None,
          baseline: dict | None = None, lineage: dict | None = None,
          git_commit: str = "unknown", image_digest: str | None = None) -> dict:
    """The card as a dict, from the locations of a model, its evaluation and its data."""
    from cardio.components import evaluator

    serving_dir = os.path.join(model_uri, "Format-Serving")
    metadata = _read_json(os.path.join(serving_dir, "assets.extra", "cardio_metadata.json")) or {}
    training = _read_json(os.path.join(model_run_uri, "training_summary.json")) if model_run_uri else None
    segmenter = metadata.get("segmenter")
    metrics = evaluator.metrics_with_intervals(evaluator.load(evaluation_uri))
    ci = evaluator.ci_description(evaluation_uri)
    licences = {"code": PROJECT_LICENCE,
                "backbone_initialisation": (
                    "ImageNet-pretrained Keras applications weights (their own terms; ImageNet's "
                    "terms of access cover the images they were trained on)"
                    if (training or {}).get("config", {}).get("weights") not in (None, "random")
                    else "random initialisation")}
    if segmenter:
        licences["lung_unet"] = segmenter.get("licence")
        licences["lung_unet_card"] = UNET_CARD
    return {
        "model": cell,
        "status": {"blessed": blessed, "pushed_to": pushed_to},
        "licences": licences,
        "non_commercial": bool(segmenter and "non-commercial" in str(segmenter.get("licence", "")).lower()),
        "intended_use": INTENDED_USE,
        "limitations": list(LIMITATIONS),
        "model_details": {"backbone": metadata.get("backbone"), "weighting": metadata.get("weighting"),
                          "image_size": metadata.get("image_size"), "crop_size": metadata.get("crop_size")},
        "training": training and {k: training.get(k) for k in (
            "config", "train_examples", "steps_per_epoch", "epochs_run")},
        "data": data_summary(examples_uri),
        "calibration": metadata.get("calibration"),
        "ctr": ({"outputs": (metadata.get("ctr") or {}).get("outputs"),
                 "heart_segmenter": metadata["heart_segmenter"]}
                if metadata.get("heart_segmenter") else None),
        "external_site": external_site(gate, metrics),
        "operating_point": {
            "threshold": metadata.get("operating_threshold"),
            "chosen_on": "validation split",
            "target_sensitivity": (training or {}).get("config", {}).get("target_sensitivity"),
            "per_site": {name: {m: row[m] for m in ("sensitivity", "specificity") if m in row}
                         for name, row in metrics.items() if name.count("=") == 1}},
        "evaluation": {"gate": gate, "compares": "point estimates per site slice; " + (
                           f"{ci} (a t interval over 20 samples, clipped to the metric's range), "
                           "reported, not gated on" if ci != S.NO_CI else NO_INTERVALS),
                       "ci": ci,
                       "failures": evaluator.validation_failures(evaluation_uri),
                       "baseline": baseline, "slices": metrics},
        "lineage": {"git_commit": git_commit, "container_image_digest": image_digest,
                    "unet_weights_sha256": (segmenter or {}).get("weights_sha256"),
                    "evaluation_uri": evaluation_uri, "model_uri": model_uri,
                    **(lineage or {})},
    }


STUDY_EXTERNAL_AUC = gate_lib.GATE_PROFILES["study"].external_auc_min   # the study's 0.85


def external_site(gate: dict, metrics: dict) -> dict | None:
    """The external site's own slice (AUC, sensitivity, specificity with their CIs) against the
    gate's external criterion and the study's 0.85; None without an external site."""
    site = gate.get("external_site")
    if not site:
        return None
    row = metrics.get(f"{F.SITE}={site}") or {}
    auc = (row.get("auc") or {}).get("value")
    return {"site": site, "slice": {m: row.get(m) for m in ("example_count", "auc", "sensitivity",
                                                            "specificity", "tp", "fn")},
            "gate_auc_min": gate.get("external_auc_min"),
            "gate_met": None if auc is None else auc >= gate.get("external_auc_min", 0.0),
            "study_auc_min": STUDY_EXTERNAL_AUC,
            "study_met": None if auc is None else auc >= STUDY_EXTERNAL_AUC}


def render_external(external: dict | None) -> list:
    if external is None:
        return ["No external site is configured: this model has not been measured on another "
                "hospital's radiographs."]
    row = external["slice"]
    if row.get("auc") is None:
        return [f"Site `{external['site']}`: no evaluated slice (its split is empty or lacks a "
                "class)."]
    positives = (row["tp"]["value"] + row["fn"]["value"]) if row.get("tp") and row.get("fn") else None

    def met(flag):
        return "met" if flag else "NOT met"

    return [f"Site `{external['site']}`, never trained, calibrated or chosen on: "
            f"{_figure(row.get('example_count'), count=True)} radiographs"
            + (f", {positives:.0f} cardiomegaly" if positives is not None else "")
            + f"; AUC {_figure(row['auc'])}, sensitivity {_figure(row.get('sensitivity'))}, "
            f"specificity {_figure(row.get('specificity'))} at the operating threshold.", "",
            f"- This gate's criterion, AUC >= {external['gate_auc_min']}: "
            f"{met(external['gate_met'])}.",
            f"- The study's criterion, AUC >= {external['study_auc_min']}: "
            f"{met(external['study_met'])}.",
            "- Its labels may be defined differently from the training site's (e.g. a measured "
            "cardiothoracic ratio against report text mining) and its prevalence differs: the "
            "AUC says how well this score ranks that site's own label."]


def render_ctr(ctr: dict | None) -> list:
    if ctr is None:
        return ["Not served: the export has no heart U-Net beside its lung U-Net."]
    heart = ctr["heart_segmenter"]
    held = heart.get("held_out") or {}
    agreement = heart.get("ctr_held_out")
    return [f"Served beside the probability: {', '.join(f'`{o}`' for o in ctr['outputs'] or [])}"
            f". The heart U-Net `{str(heart.get('weights_sha256', ''))[:12]}` has a held-out "
            f"Dice of {_figure({'value': held['dice']}) if 'dice' in held else 'unknown'} "
            f"(n={held.get('n', '-')}); trained on {heart.get('training_data', 'unknown data')}. "
            + (f"CTR agreement on those held-out radiographs: MAE {agreement['mae']:.3f}, bias "
               f"{agreement['bias']:+.3f}, Pearson r {agreement['pearson_r']:.2f} "
               f"(n={agreement['n']}; {agreement.get('measured_by', 'measured')}). "
               if agreement else "No CTR agreement was measured for these weights. ")
            + "The CTR's AUC beside this model's on the same images, and its agreement on this "
            "run's sites where they carry a ground-truth ratio, are in the model comparison "
            "report (section 'Cardiothoracic ratio beside the champion')."]


COUNTS = ("example_count", "tp", "fp", "tn", "fn")   # shown without an interval


def _figure(cell: dict | None, count: bool = False) -> str:
    if cell is None:
        return "-"
    if count:
        return f"{cell['value']:.0f}"
    text = f"{cell['value']:.3f}"
    if cell.get("lower") is not None:
        text += f" [{cell['lower']:.3f}, {cell['upper']:.3f}]"
    return text


def render_calibration(calibrated: dict | None) -> str:
    """The card's calibration paragraph: the Platt fit, or why the Trainer refused it."""
    if not calibrated:
        return ("Not calibrated: this export predates Platt scaling; probabilities are the "
                "network's own.")
    counts = (f" Validation: {calibrated['validation_positives']} cardiomegaly, "
              f"{calibrated['validation_negatives']} normal (minimum "
              f"{calibrated['min_validation_positives']} positives)."
              if "validation_positives" in calibrated else "")
    if calibrated.get("refused"):
        return ("**Calibration and operating threshold REFUSED**; the gate fails this model: "
                + "; ".join(calibrated["refused"]) + ". Served probabilities are the network's "
                "own (identity scaling)." + counts)
    before, after = calibrated["validation_before"], calibrated["validation_after"]
    return (f"Served probabilities are Platt-scaled: sigmoid({calibrated['a']:.4f} x logit "
            f"{calibrated['b']:+.4f}), slope constrained positive, fitted on the "
            f"{calibrated['fitted_on']} split. Validation ECE {before['ece']:.4f} -> "
            f"{after['ece']:.4f}, Brier {before['brier']:.4f} -> {after['brier']:.4f} "
            f"(n={after['n']}).{counts} Per site slice: `brier_score` and `calibration` (mean "
            "probability / observed frequency) in the table below; reliability diagrams in the "
            "model comparison.")


def render_markdown(card: dict) -> str:
    status = card["status"]
    lines = [f"# Model card: {card['model']}", ""]
    lines.append(f"**Status**: {'BLESSED' if status['blessed'] else 'NOT BLESSED'}; "
                 + (f"pushed to `{status['pushed_to']}`." if status["pushed_to"] else "NOT PUSHED."))
    lines.append("")
    if card["non_commercial"]:
        lines += [f"**Licence restriction**: this model embeds the lung U-Net "
                  f"({card['licences']['lung_unet']}); it is for non-commercial use only. "
                  f"See `{UNET_CARD}`.", ""]
    lines += ["## Intended use", "", card["intended_use"], "", "## Licences", ""]
    lines += [f"- {name.replace('_', ' ')}: {text}" for name, text in card["licences"].items()]
    details = card["model_details"]
    lines += ["", "## Model", "",
              f"- Backbone {details['backbone']}, class weighting {details['weighting']}, "
              f"{details['image_size']} px input" + (f" on {details['crop_size']} px lung crops"
                                                    if details.get("crop_size") else "")]
    if card["training"]:
        config = card["training"]["config"] or {}
        lines.append(f"- Training: {card['training']['train_examples']} examples, "
                     f"{len(card['training']['epochs_run'] or [])} epochs run, "
                     + ", ".join(f"{k} {config.get(k)}" for k in (
                         "epochs", "batch_size", "learning_rate", "seed", "deterministic")))
    point = card["operating_point"]
    lines += ["", "## Operating point", "",
              f"Threshold {point['threshold']:.4f} on the probability, chosen on the "
              f"{point['chosen_on']} for sensitivity >= {point['target_sensitivity']}."
              if point["threshold"] is not None else "Threshold unknown.", ""]
    for name, row in sorted(point["per_site"].items()):
        lines.append(f"- {name}: " + ", ".join(f"{m} {_figure(v)}" for m, v in row.items()))
    lines += ["", "## Calibration", "", render_calibration(card.get("calibration"))]
    data = card["data"]
    lines += ["", "## Data", "",
              f"Sites: {', '.join(data['sites'])}. {data['examples']} examples; fingerprint "
              f"(sha256 of split, image id, site, label) `{data['fingerprint_sha256']}`.", "",
              "| split | site | normal | cardiomegaly |", "|---|---|---|---|"]
    for split, sites in data["counts"].items():
        for site, n in sites.items():
            lines.append(f"| {split} | {site} | {n.get('normal', 0)} | {n.get('cardiomegaly', 0)} |")
    evaluation = card["evaluation"]
    gate = evaluation["gate"]
    external = (f"external-site AUC >= {gate['external_auc_min']}"
                if gate.get("external_site", True) else
                "no external site configured: internal criteria only")
    lines += ["", "## Evaluation", "",
              f"Gate profile `{gate['name']}`: {external}, "
              f"internal AUC >= {gate['internal_auc_min']}, sensitivity >= {gate['sensitivity_min']}, "
              f"AUC drop vs the cell's last blessed model <= {gate['auc_regression_tolerance']}; "
              f"{evaluation['compares']}.", ""]
    baseline = evaluation["baseline"]
    lines.append(f"Baseline: {baseline['uri']} (MLMD id {baseline['id']})." if baseline
                 else "Baseline: none (the cell's first blessed candidate).")
    lines += [""] + ([f"- FAILED: {f}" for f in evaluation["failures"]] or ["All criteria passed."])
    lines += ["", "Every slice is keyed by site: no figure mixes internal and external data. "
              + (f"Values are point estimates [{evaluation['ci']}]." if evaluation['ci'] != S.NO_CI
                 else f"Values are point estimates; {NO_INTERVALS}."), "",
              "| slice | " + " | ".join(CARD_METRICS) + " |",
              "|---" * (len(CARD_METRICS) + 1) + "|"]
    for name, row in sorted(evaluation["slices"].items()):
        small = row.get("example_count", {}).get("value", 0) < SMALL_SLICE
        lines.append(f"| {name}{' (small)' if small else ''} | "
                     + " | ".join(_figure(row.get(m), m in COUNTS) for m in CARD_METRICS) + " |")
    lines += ["", "## External site", ""] + render_external(card.get("external_site"))
    lines += ["", "## Cardiothoracic ratio", ""] + render_ctr(card.get("ctr"))
    lines += ["", "## Limitations", ""] + [f"- {text}" for text in card["limitations"]]
    lines += ["", "## Lineage", ""] + [f"- {k.replace('_', ' ')}: `{v}`"
                                       for k, v in card["lineage"].items()]
    return "\n".join(lines) + "\n"


def write(out_dir: str, card: dict) -> tuple[str, str]:
    """Writes model_card.md and model_card.json into `out_dir`; returns their paths."""
    tf.io.gfile.makedirs(out_dir)
    md_path, json_path = os.path.join(out_dir, MARKDOWN), os.path.join(out_dir, JSON)
    with tf.io.gfile.GFile(md_path, "w") as f:
        f.write(render_markdown(card))
    with tf.io.gfile.GFile(json_path, "w") as f:
        json.dump(card, f, indent=2, sort_keys=True)
    return md_path, json_path


def _custom(artifact, name):
    return artifact.get_custom_property(name) if artifact.has_custom_property(name) else None


@component
def ModelCard(model: InputArtifact[Model], model_run: InputArtifact[ModelRun],
              evaluation: InputArtifact[ModelEvaluation], blessing: InputArtifact[ModelBlessing],
              pushed_model: InputArtifact[PushedModel], examples: InputArtifact[Examples],
              card: OutputArtifact[ModelCardArtifact], grid_cell: Parameter[str],
              gate: Parameter[str]):
    blessed = tf.io.gfile.exists(os.path.join(blessing.uri, "BLESSED"))
    pushed = _custom(pushed_model, "pushed") == 1
    baseline_uri = _custom(blessing, "baseline_model")
    built = build(
        cell=grid_cell, model_uri=model.uri, model_run_uri=model_run.uri,
        evaluation_uri=evaluation.uri, blessed=blessed, examples_uri=examples.uri,
        gate=json.loads(gate), pushed_to=_custom(pushed_model, "pushed_destination") if pushed else None,
        baseline={"uri": baseline_uri, "id": _custom(blessing, "baseline_model_id")}
        if baseline_uri else None,
        lineage={"mlmd_ids": {"model": model.id, "model_run": model_run.id,
                              "evaluation": evaluation.id, "blessing": blessing.id,
                              "pushed_model": pushed_model.id, "examples": examples.id},
                 "examples_span": _custom(examples, "span")},
        # Resolved when the card is written, i.e. in the run that evaluated this model (a
        # parameter would rerun the card on every commit and stamp old models with new commits).
        git_commit=source_revision(), image_digest=os.environ.get("CARDIO_IMAGE_DIGEST"))
    write(card.uri, built)
    card.set_int_custom_property("blessed", int(blessed))
    card.set_int_custom_property("pushed", int(pushed))


def create(trainer, evaluator, pusher, examples, config, cell_name: str):
    import dataclasses

    return ModelCard(
        model=trainer.outputs["model"], model_run=trainer.outputs["model_run"],
        evaluation=evaluator.outputs["evaluation"], blessing=evaluator.outputs["blessing"],
        pushed_model=pusher.outputs["pushed_model"], examples=examples, grid_cell=cell_name,
        gate=json.dumps({**dataclasses.asdict(config.gate),
                         "external_site": config.external_site})).with_id(f"ModelCard.{cell_name}")
