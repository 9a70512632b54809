"""Turns a run's artifacts into what a reviewer reads: counts, per-slice metrics, push status."""
from __future__ import annotations

import json
import os

import tensorflow as tf

from cardio import features as F
from cardio.components import evaluator
from cardio.evaluation import statistics as S
from cardio.pipeline import outputs

METRICS = ("example_count", "auc", "sensitivity", "specificity", "accuracy", "precision", "f1",
           "brier_score")
CI_METRICS = ("auc", "sensitivity", "specificity")   # printed with their bootstrap CI


def read_counts(data_root: str, span: int = 1) -> dict:
    with open(os.path.join(data_root, f"span-{span}", "summary.json")) as f:
        return json.load(f)["splits"]


def format_counts(counts: dict) -> str:
    lines = ["split        normal  cardiomegaly"]
    for split in F.SPLITS:
        c = counts.get(split, {})
        lines.append(f"{split:<12} {c.get('normal', 0):>6}  {c.get('cardiomegaly', 0):>12}")
    return "\n".join(lines)


def slice_name(slice_key) -> str:
    return ", ".join(f"{k}={v}" for k, v in slice_key) or "overall"


def slice_metrics(eval_result) -> dict:
    """{slice name: {metric: point estimate}} from a tfma.EvalResult."""
    return {name: {metric: v["value"] for metric, v in row.items()}
            for name, row in evaluator.metrics_with_intervals(eval_result).items()}


def slice_intervals(eval_result) -> dict:
    """{slice name: {metric: [lower, upper]}}: the 95% bootstrap CIs."""
    return {name: {metric: [v["lower"], v["upper"]] for metric, v in row.items()
                   if v["lower"] is not None}
            for name, row in evaluator.metrics_with_intervals(eval_result).items()}


def cell_result(store, config, cell, serving_root: str) -> dict:
    evaluation = outputs.latest_output(store, config.pipeline_name, f"Evaluator.{cell.name}",
                                       "evaluation")
    blessing = outputs.latest_output(store, config.pipeline_name, f"Evaluator.{cell.name}",
                                     "blessing")
    pushed = outputs.latest_output(store, config.pipeline_name, f"Pusher.{cell.name}",
                                   "pushed_model")
    card = outputs.latest_output(store, config.pipeline_name, f"ModelCard.{cell.name}", "card")
    result = {"slices": {}, "blessed": False, "pushed_to": None}
    if evaluation is not None:
        eval_result = evaluator.load(evaluation.uri)   # the candidate's, baseline or not
        result["slices"] = slice_metrics(eval_result)
        result["intervals"] = slice_intervals(eval_result)
        result["gate_failures"] = evaluator.validation_failures(evaluation.uri)
        result["evaluation_uri"] = evaluation.uri
        result["ci"] = evaluator.ci_description(evaluation.uri)
    if card is not None:
        result["model_card"] = os.path.join(card.uri, "model_card.md")
    if blessing is not None:
        result["blessed"] = tf.io.gfile.exists(os.path.join(blessing.uri, "BLESSED"))
    if pushed is not None and pushed.custom_properties["pushed"].int_value == 1:
        result["pushed_to"] = pushed.custom_properties["pushed_destination"].string_value
    return result


def crop_report(store, config) -> dict | None:
    """The CropReport's figures and picture, when the pipeline crops."""
    artifact = outputs.latest_output(store, config.pipeline_name, "CropReport", "report")
    if artifact is None:
        return None
    with tf.io.gfile.GFile(os.path.join(artifact.uri, "site_separability.json")) as f:
        figures = json.load(f)
    return {**figures, "plot": os.path.join(artifact.uri, "tsne_sites.png")}


def crop_qc_counts(store, config) -> dict | None:
    """{split: {"images": n, "flagged": n, flag: n, ...}} over the LungCrop stage's output."""
    import collections

    artifact = outputs.latest_output(store, config.pipeline_name, "LungCrop", "cropped_examples")
    if artifact is None:
        return None
    counts = {}
    for split in F.SPLITS:
        files = tf.io.gfile.glob(os.path.join(artifact.uri, f"Split-{split}", "*"))
        tally = collections.Counter()
        for raw in tf.data.TFRecordDataset(files, compression_type="GZIP"):
            flags = tf.train.Example.FromString(raw.numpy()).features.feature[F.CROP_QC].bytes_list.value
            tally["images"] += 1
            tally["flagged"] += bool(flags)
            tally.update(flag.decode() for flag in flags)
        counts[split] = dict(tally)
    return counts


def format_cell(name: str, result: dict) -> str:
    def cell(values, intervals, m):
        width = 22 if m in CI_METRICS else 13
        if values.get(m) is None:
            return f"{'-':>{width}}"
        text = f"{values[m]:.3f}"
        if m in CI_METRICS and m in intervals:
            text += " [{:.2f}, {:.2f}]".format(*intervals[m])
        return f"{text:>{width}}"

    header = f"{'slice':<34}" + "".join(f"{m:>{22 if m in CI_METRICS else 13}}" for m in METRICS)
    computed = any(result.get("intervals", {}).values())
    lines = [f"\nModel {name}: evaluation per slice (test + external splits), "
             + (f"point estimate [{result['ci']}]" if computed and result.get("ci") else
                "point estimate (no confidence intervals computed)"), header]
    for slice_, values in sorted(result["slices"].items()):
        intervals = result.get("intervals", {}).get(slice_, {})
        lines.append(f"{slice_:<34}" + "".join(cell(values, intervals, m) for m in METRICS))
    if result["blessed"]:
        lines.append(f"BLESSED; pushed to {result['pushed_to']}")
    else:
        lines.append("NOT BLESSED: the model failed the gate and was not pushed")
        lines += [f"  failed: {failure}" for failure in result.get("gate_failures", [])]
    if result.get("model_card"):
        lines.append(f"Model card: {result['model_card']}")
    return "\n".join(lines)


def model_comparison(store, config) -> dict | None:
    """The ModelComparison's champion, AUCs, flagged slices and where its report is."""
    from cardio.components import model_comparison as comparison_lib

    artifact = outputs.latest_output(store, config.pipeline_name, comparison_lib.NODE_ID,
                                     comparison_lib.OUTPUT_KEY)
    if artifact is None:
        return None
    path = os.path.join(artifact.uri, comparison_lib.COMPARISON_JSON)
    with tf.io.gfile.GFile(path) as f:
        result = json.load(f)
    return {"champion": result["champion"]["model_name"], "reason": result["champion"]["reason"],
            "auc": {name: {group: s["auc"] for group, s in model["groups"].items()}
                    for name, model in result["models"].items()},
            "flagged_slices": {name: [r["slice"] for r in model["fairness"]
                                      if r["status"] == "flagged"]
                               for name, model in result["models"].items()},
            "json": path, "report": os.path.join(artifact.uri, "report.html"),
            "markdown": os.path.join(artifact.uri, "report.md"),
            "roc": os.path.join(artifact.uri, "roc_curves.png")}


def format_comparison(comparison: dict) -> str:
    lines = ["\nModel comparison (exact AUC; DeLong CIs and tests in the report; the champion is "
             "chosen on validation, ties by a rule fixed beforehand; the test split and the "
             "external site never choose)"]
    for name, aucs in sorted(comparison["auc"].items()):
        figures = ", ".join(f"{group} {'-' if auc is None else f'{auc:.3f}'}"
                            for group, auc in aucs.items())
        flagged = comparison["flagged_slices"][name]
        lines.append(f"  {name}: {figures}" + (f"; fairness flags: {', '.join(flagged)}"
                                                 if flagged else ""))
    lines.append(f"Champion: {comparison['champion'] or 'none'}. {comparison['reason']}")
    lines.append(f"Comparison report (ROC curves, DeLong tests, operating point, fairness): "
                 f"{comparison['report']}")
    return "\n".join(lines)
