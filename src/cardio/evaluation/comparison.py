"""Model comparison, operating points and the fairness review, from predictions to one dict.

Plain functions: the ModelComparison component (components/model_comparison.py) scores every
model and hands the arrays here; `analyse` returns what `comparison.json` holds and the report
(cardio/evaluation/comparison_report.py) draws.

Groups of images, never mixing sites across the internal/external line:
  validation            internal sites (chooses the operating threshold and the champion)
  test                  internal sites, the source's prevalence: reports, never chooses
  test site=<s>         each internal site, when there are several
  external              the external site: gates and reports, never chooses
"""
from __future__ import annotations

import itertools

import numpy as np

from cardio import features as F
from cardio.evaluation import calibration, statistics as S

VALIDATION, TEST, EXTERNAL = F.VALIDATION, F.TEST, F.EXTERNAL
STUDY_THRESHOLD = 0.5    # the study reported its metrics at 0.5
ALPHA = 0.05


def groups(cases: dict, internal_sites, external_site: str) -> dict:
    """{group name: boolean mask over the cases}; `cases` holds one array per feature."""
    split, site = np.asarray(cases["split"]), np.asarray(cases[F.SITE])
    result = {VALIDATION: split == VALIDATION, TEST: split == TEST}
    if len(internal_sites) > 1:
        for s in internal_sites:
            result[f"{TEST} site={s}"] = (split == TEST) & (site == s)
    result[EXTERNAL] = (split == EXTERNAL) & (site == external_site)
    return {name: mask for name, mask in result.items() if mask.any()}


def roc_points(labels, scores) -> dict:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=True)
    return {"fpr": [round(float(v), 5) for v in fpr], "tpr": [round(float(v), 5) for v in tpr]}


def group_summary(labels, scores, threshold: float, prevalence: float) -> dict:
    """AUC with its CI, and metrics at the model's operating threshold and at the study's 0.5,
    with PPV/NPV at the deployment prevalence for both."""
    positives, negatives = S.class_counts(labels)
    summary = {"n": int(len(labels)), "positives": positives, "negatives": negatives,
               **S.auc_with_ci(labels, scores)}
    # The served probabilities are calibrated (Platt, on validation): how well, per group.
    summary["calibration"] = {**calibration.summary(labels, scores),
                              "reliability": calibration.reliability(labels, scores)}
    for key, t in (("operating", threshold), ("study_0.5", STUDY_THRESHOLD)):
        metrics = S.threshold_metrics(labels, scores, t)
        metrics["deployment"] = S.predictive_values(metrics["sensitivity"],
                                                    metrics["specificity"], prevalence)
        summary[key] = metrics
    if positives and negatives:
        summary["roc"] = roc_points(labels, scores)
    return summary


def pair_kind(a: dict, b: dict) -> str:
    if a.get("backbone") == b.get("backbone"):
        return "weighting"          # 75-25 vs 50-50 of one backbone
    if a.get("weighting") == b.get("weighting"):
        return "backbone"           # two backbones, same class weighting
    return "other"


def pairwise_delong(labels_by_group: dict, scores: dict, models: dict) -> list:
    """DeLong's test for every pair of models on every group, Holm-adjusted per group."""
    rows = []
    for group, labels in labels_by_group.items():
        if min(S.class_counts(labels)) == 0:
            continue
        group_rows = []
        for a, b in itertools.combinations(sorted(scores), 2):
            test = S.delong_paired(labels, scores[a][group], scores[b][group])
            group_rows.append({"group": group, "model_a": a, "model_b": b,
                               "kind": pair_kind(models[a], models[b]), **test})
        for row, adjusted in zip(group_rows, S.holm([r["p"] for r in group_rows])):
            row["p_holm"] = adjusted
        rows += group_rows
    return rows


def delong_p(delong: list, group: str, a: str, b: str):
    for row in delong:
        if row["group"] == group and {row["model_a"], row["model_b"]} == {a, b}:
            return row["p"]
    return None


def _auc_text(group: dict) -> str:
    """An AUC with its DeLong CI, or why there is none (a split without both classes)."""
    if group.get("auc") is None:
        return "undefined (the split lacks a class)"
    lower, upper = group["ci"]
    return f"{group['auc']:.3f} ({S.DELONG_CI} {lower:.3f}-{upper:.3f})"


# The tie rule, fixed before any evaluation: the study's class weighting first, then the model
# with fewer parameters (ImageNet backbones without their top, Keras applications), then the
# higher validation AUC, then the name. Never the test split: its AUC is reported, and a choice
# made on it would bias the one figure a reviewer must be able to trust.
WEIGHTING_PREFERENCE = ("75-25", "50-50")
BACKBONE_PARAMETERS = {"mobilenet_025": 218_544, "mobilenet": 3_228_864,
                       "densenet121": 7_037_504, "efficientnetb2": 7_768_569,
                       "xception": 20_861_480, "inceptionv3": 21_802_784}
TIE_RULE = ("the study's class weighting (75-25) first, then the smaller backbone, then the "
            "higher validation AUC")


def tie_break_key(info: dict, validation_auc: float) -> tuple:
    """Smaller is preferred; reads nothing measured but validation."""
    weighting = info.get("weighting")
    return (WEIGHTING_PREFERENCE.index(weighting) if weighting in WEIGHTING_PREFERENCE
            else len(WEIGHTING_PREFERENCE),
            BACKBONE_PARAMETERS.get(info.get("backbone"), float("inf")), -validation_auc)


def choose_champion(models: dict, delong: list, alpha: float = ALPHA,
                    external_site: str | None = "configured") -> dict:
    """The model to push, chosen on validation only.

    Among blessed models (those that passed their Evaluator's gate): the highest validation AUC;
    models validation cannot tell apart from it (DeLong p >= alpha) are ranked by a rule fixed
    beforehand (TIE_RULE). Neither the internal test split nor the external site enters the
    choice.
    """
    def auc(name, group):
        value = models[name]["groups"].get(group, {}).get("auc")
        return -1.0 if value is None else value

    not_external = ("The external site was not used to choose, nor the internal test split: "
                    "both report only (the external site also gates)." if external_site else
                    "The internal test split was not used to choose; it reports only. No "
                    "external site is configured: the champion has not been measured on "
                    "another hospital's data.")
    blessed = sorted(m for m, info in models.items() if info.get("blessed"))
    if not blessed:
        return {"model_name": None, "reason": "No model was blessed by its Evaluator's gate, so "
                "none may be pushed. " + not_external, "candidates": []}
    best = max(blessed, key=lambda m: (auc(m, VALIDATION), m))
    tied = [m for m in blessed if m == best or
            (delong_p(delong, VALIDATION, best, m) or 0.0) >= alpha]
    champion = min(tied, key=lambda m: (tie_break_key(models[m], auc(m, VALIDATION)), m))
    v = models[champion]["groups"][VALIDATION]
    if len(tied) == 1:
        reason = (f"Highest validation AUC among {len(blessed)} blessed model(s): "
                  f"{_auc_text(v)}")
        if len(blessed) > 1:
            reason += f"; every other blessed model is lower with DeLong p < {alpha}"
        reason += "."
    else:
        reason = (f"Validation AUC could not separate {', '.join(tied)} (DeLong p >= {alpha} "
                  f"against the best, {best}); of these, by the rule fixed beforehand "
                  f"({TIE_RULE}): validation {_auc_text(v)}.")
    unblessed = sorted(set(models) - set(blessed))
    if unblessed:
        reason += f" Not blessed, so not eligible: {', '.join(unblessed)}."
    return {"model_name": champion, "reason": f"{reason} {not_external}", "candidates": tied,
            "blessed": blessed}


def fairness(cases: dict, scores, threshold: float, sites, min_per_class: int,
             alpha: float = ALPHA) -> list:
    """Per-slice AUC, sensitivity and specificity with CIs on the test and external splits.

    Each site is a reference row. Within a site, each sex, age band and view is tested against
    the rest of that site (its complement; never against another site): DeLong for independent
    groups, two-sided, Holm-adjusted across every tested slice. A slice is flagged when its AUC is
    significantly below its complement's. A slice or complement with fewer than
    `min_per_class` positives or negatives is marked too small to judge, and not tested. A
    feature with one value in a site (a PA-only cohort's view) is that site's row, and skipped.
    """
    labels = np.asarray(cases[F.LABEL])
    scores = np.asarray(scores)
    evaluated = np.isin(np.asarray(cases["split"]), (TEST, EXTERNAL))
    rows = []
    for site in sites:
        in_site = evaluated & (np.asarray(cases[F.SITE]) == site)
        if not in_site.any():
            continue
        rows.append(_slice_row(f"{F.SITE}={site}", site, None, None, labels[in_site],
                               scores[in_site], threshold, status="site"))
        for feature in F.SUBGROUPS:
            values = np.asarray(cases[feature])
            present = sorted(set(values[in_site]), key=_slice_order)
            for value in present if len(present) > 1 else ():
                mask, rest = in_site & (values == value), in_site & (values != value)
                row = _slice_row(f"{F.SITE}={site}, {feature}={value}", site, feature, value,
                                 labels[mask], scores[mask], threshold, status="ok")
                row["complement_n"] = int(rest.sum())
                counts = {what: S.class_counts(labels[group])
                          for what, group in (("slice", mask), ("complement", rest))}
                if min(min(c) for c in counts.values()) < min_per_class:
                    row.update(status="too small", note=", ".join(
                        f"{what} {pos}+/{neg}-" for what, (pos, neg) in counts.items()) +
                        f" (needs >= {min_per_class} of each class in both)")
                else:
                    test = S.delong_unpaired(labels[mask], scores[mask], labels[rest], scores[rest])
                    row.update(complement_auc=test["auc_2"], z=test["z"], p=test["p"])
                rows.append(row)
    tested = [r for r in rows if "p" in r]
    for row, adjusted in zip(tested, S.holm([r["p"] for r in tested])):
        row["p_holm"] = adjusted
        if adjusted < alpha and row["auc"] < row["complement_auc"]:
            row["status"] = "flagged"
    return rows


def _slice_order(value):
    """Age bands youngest first, then anything else alphabetically, "unknown" last."""
    bands = [name for _, _, name in F.AGE_BANDS]
    if value == F.UNKNOWN:
        return (2, value)
    return (0, f"{bands.index(value):02d}") if value in bands else (1, value)


def _slice_row(name, site, feature, value, labels, scores, threshold, status) -> dict:
    positives, negatives = S.class_counts(labels)
    metrics = S.threshold_metrics(labels, scores, threshold)
    return {"slice": name, F.SITE: site, "feature": feature, "value": value,
            "n": int(len(labels)), "positives": positives, "negatives": negatives,
            **{k: v for k, v in S.auc_with_ci(labels, scores).items() if k != "se"},
            "sensitivity": metrics["sensitivity"], "sensitivity_ci": metrics["sensitivity_ci"],
            "specificity": metrics["specificity"], "specificity_ci": metrics["specificity_ci"],
            "status": status}


# The CTR's own rule: cardiomegaly when the ratio is above 0.5 (cardio.imaging.ctr.CARDIOMEGALY;
# threshold_metrics counts `score >= threshold`, so the next float above it).
CTR_ABOVE = float(np.nextafter(0.5, 1.0))


def agreement(truth, measured) -> dict:
    """A measured ratio against its ground truth: n, mean absolute error, bias, Pearson r and
    the largest error (the comparison's CTR rows and `benchmarks ctr` alike)."""
    truth, measured = np.asarray(truth, float), np.asarray(measured, float)
    error = measured - truth
    return {"n": int(truth.size), "mae": float(np.abs(error).mean()), "bias": float(error.mean()),
            "pearson_r": float(np.corrcoef(truth, measured)[0, 1]),
            "max_abs_error": float(np.abs(error).max())}


def ctr_reference(labels_by_group: dict, measured_by_group: dict, truth_by_group: dict,
                  champion_by_group: dict | None) -> dict:
    """The cardiothoracic ratio the served graph measures (cardio.imaging.ctr), as a score beside
    the champion on the test and external groups: per group, over the images it measured (a
    ratio of -1 or NaN is not measured, and counted), its AUC with DeLong's CI, `ctr > 0.5`'s
    sensitivity and specificity (Wilson CIs), DeLong's paired test against the champion on the
    same images (z > 0: the champion ranks better), and where the examples carry a ground-truth
    ratio (synthetic radiographs, Wingspan's measured one) the agreement with it."""
    rows = {}
    for group, labels in labels_by_group.items():
        if group == VALIDATION or group not in measured_by_group:
            continue
        ratio = np.asarray(measured_by_group[group], float)
        ok = np.isfinite(ratio) & (ratio >= 0)
        labels = np.asarray(labels)[ok]
        positives, negatives = S.class_counts(labels)
        row = {"n": int(ok.sum()), "not_measured": int((~ok).sum()), "positives": positives,
               "negatives": negatives}
        if positives and negatives:
            row.update({k: v for k, v in S.auc_with_ci(labels, ratio[ok]).items() if k != "se"})
            at = S.threshold_metrics(labels, ratio[ok], CTR_ABOVE)
            row["above_0.5"] = {k: at[k] for k in ("sensitivity", "sensitivity_ci",
                                                  "specificity", "specificity_ci")}
            if champion_by_group is not None:
                row["vs_champion"] = S.delong_paired(
                    labels, ratio[ok], np.asarray(champion_by_group[group])[ok])
        truth = np.asarray(truth_by_group.get(group, []), float)
        known = ok & np.isfinite(truth) if truth.size else np.zeros_like(ok)
        if known.sum() > 2:
            row["agreement"] = agreement(truth[known], ratio[known])
        rows[group] = row
    return rows


def analyse(cases: dict, scores: dict, models: dict, internal_sites, external_site: str,
            prevalence: float, min_per_class: int, alpha: float = ALPHA, ctr: dict | None = None) -> dict:
    """Everything comparison.json holds.

    cases:  {"split", "site", "sex", "age_band", "view", "label", "image_id": array per case}
    scores: {model name: probabilities aligned with `cases`}
    models: {model name: {"threshold", "blessed", "backbone", "weighting", ...}}
    ctr:    {"measured": the served CTR per case (NaN where not scored), "truth": the examples'
            ground-truth ratio (NaN where none), "segmenter": the heart U-Net's card}, or None
    """
    masks = groups(cases, internal_sites, external_site)
    labels = np.asarray(cases[F.LABEL]).astype(int)
    labels_by_group = {g: labels[m] for g, m in masks.items()}
    scores_by_group = {name: {g: np.asarray(s)[m] for g, m in masks.items()}
                       for name, s in scores.items()}
    out_models = {}
    for name, info in models.items():
        out_models[name] = {**info, "groups": {
            g: group_summary(labels_by_group[g], scores_by_group[name][g], info["threshold"],
                             prevalence) for g in masks}}
    delong = pairwise_delong(labels_by_group, scores_by_group, models)
    champion = choose_champion(out_models, delong, alpha, external_site)
    if champion["model_name"]:   # where serving finds it (version to label `stable`)
        champion["pushed"] = models[champion["model_name"]].get("pushed")
    ctr_section = None
    if ctr is not None:
        champion_scores = (scores_by_group[champion["model_name"]] if champion["model_name"]
                           else None)
        ctr_section = {"segmenter": ctr.get("segmenter"), "groups": ctr_reference(
            labels_by_group, {g: np.asarray(ctr["measured"])[m] for g, m in masks.items()},
            {g: np.asarray(ctr["truth"])[m] for g, m in masks.items()}, champion_scores)}
    sites = tuple(internal_sites) + ((external_site,) if external_site else ())
    for name, info in models.items():
        out_models[name]["fairness"] = fairness(cases, scores[name], info["threshold"], sites,
                                                min_per_class, alpha)
    return {"champion": champion, "models": out_models, "delong": delong, "ctr": ctr_section,
            "groups": {g: {"n": int(m.sum()), "positives": S.class_counts(labels[m])[0],
                           "sites": sorted(set(np.asarray(cases[F.SITE])[m]))}
                       for g, m in masks.items()},
            "settings": {"deployment_prevalence": prevalence, "alpha": alpha,
                         "fairness_min_per_class": min_per_class,
                         "study_threshold": STUDY_THRESHOLD,
                         "internal_sites": list(internal_sites), "external_site": external_site}}
