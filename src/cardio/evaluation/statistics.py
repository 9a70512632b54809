"""The statistics behind model comparison, operating points and the fairness review.

Plain functions on arrays (labels in {0, 1}, scores = predicted probabilities); no TFX here.

- AUC with a 95% CI from DeLong's variance (the pROC default), computed by the fast midrank
  algorithm (Sun & Xu 2014) and validated in tests against MLstatkit and a bootstrap.
- Paired comparison of two models on the same images: DeLong's test as MLstatkit implements it.
- Unpaired comparison of two disjoint groups (a slice vs its complement): each AUC's DeLong
  variance, z = (AUC_1 - AUC_2) / sqrt(V_1 + V_2).
- Confusion-matrix metrics at a threshold with Wilson 95% CIs; PPV/NPV at a chosen prevalence
  (Bayes), because a test set's precision holds only at its own prevalence, not a ward's.
- Holm's step-down correction (statsmodels).
"""
from __future__ import annotations

import math

import numpy as np
import scipy.stats

LEVEL = 0.95

# Which AUC, which interval: said here once, and printed beside every interval.
#   The gate and the model card read TFMA's AUC (2,000 thresholds) per site slice, on the
#   served calibrated probability. The gate
#   compares its point estimate; the CI beside it is TFMA's (Poisson bootstrap or jackknife, as
#   configured), reported only.
#   Comparisons between models or slices (the comparison report, the champion, the fairness
#   review) read the exact rank AUC with DeLong's CI and tests: authoritative whenever a claim
#   is that one model or slice differs from another. Sensitivity and specificity there carry
#   Wilson intervals. Both AUCs are computed on the same images: tests/test_e2e.py asserts
#   they agree within TFMA's threshold resolution.
BOOTSTRAP_CI = "95% CI: TFMA Poisson bootstrap"
JACKKNIFE_CI = "95% CI: TFMA jackknife"
NO_CI = "no confidence intervals computed"
# The configuration's `ci_method` -> what every table that shows TFMA's intervals says.
TFMA_CI = {"bootstrap": BOOTSTRAP_CI, "jackknife": JACKKNIFE_CI}
DELONG_CI = "95% CI: DeLong"
WILSON_CI = "95% CI: Wilson"


def auc_thresholds(count: int = 2000, max_logit: float = 20.0) -> list:
    """Thresholds for a thresholded AUC (the Trainer's Keras AUC) spaced evenly in logit, not in
    probability: evenly spaced probabilities put every saturated score (1e-6 against 1e-4) in
    the first bucket, and a model whose exact AUC is 0.995 read 0.81. Logits -20..20 reach
    2e-9; 7 significant digits are float32's precision. Within 5e-4 of the exact AUC on
    simulated scores of every saturation."""
    logits = np.linspace(-max_logit, max_logit, count)
    return sorted({float(f"{p:.7g}") for p in 1.0 / (1.0 + np.exp(-logits))})


AUC_THRESHOLDS = auc_thresholds()


def _z(level: float = LEVEL) -> float:
    return float(scipy.stats.norm.ppf(0.5 + level / 2))


def _check(labels, scores):
    labels = np.asarray(labels).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.size} labels but {scores.size} scores")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1, got {sorted(set(labels.tolist()) - {0, 1})[:5]}")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    return labels.astype(int), scores


def class_counts(labels) -> tuple[int, int]:
    """(positives, negatives)."""
    labels = np.asarray(labels).astype(int)
    return int(labels.sum()), int(labels.size - labels.sum())


def delong_auc_variance(labels, scores) -> tuple[float, float]:
    """(AUC, DeLong variance of the AUC). Ties count one half (midranks)."""
    labels, scores = _check(labels, scores)
    m, n = class_counts(labels)
    if m == 0 or n == 0:
        raise ValueError(f"AUC needs both classes; got {m} positive and {n} negative")
    positives, negatives = scores[labels == 1], scores[labels == 0]
    overall = scipy.stats.rankdata(np.concatenate([positives, negatives]))
    # Per positive: the share of negatives scored below it; per negative: the share of positives
    # scored above it (DeLong's structural components).
    v10 = (overall[:m] - scipy.stats.rankdata(positives)) / n
    v01 = 1.0 - (overall[m:] - scipy.stats.rankdata(negatives)) / m
    auc = float(v10.mean())
    variance = (np.var(v10, ddof=1) if m > 1 else 0.0) / m + (np.var(v01, ddof=1) if n > 1 else 0.0) / n
    return auc, float(variance)


def auc_with_ci(labels, scores, level: float = LEVEL) -> dict:
    """{"auc", "ci": [low, high], "se"}; the normal-approximation CI is clipped to [0, 1].
    {"auc": None, ...} when the group lacks a class (AUC is undefined there)."""
    m, n = class_counts(labels)
    if m == 0 or n == 0:
        return {"auc": None, "ci": [None, None], "se": None}
    auc, variance = delong_auc_variance(labels, scores)
    se = math.sqrt(max(variance, 0.0))
    half = _z(level) * se
    return {"auc": auc, "ci": [max(0.0, auc - half), min(1.0, auc + half)], "se": se}


def delong_paired(labels, scores_a, scores_b, seed: int = 0) -> dict:
    """DeLong's test of AUC_a == AUC_b for two models scored on the same images (MLstatkit).

    Returns {"auc_a", "auc_b", "z", "p", "method"}; z > 0 when b ranks better. MLstatkit falls
    back to a bootstrap when the variance of the difference degenerates; equal AUCs (identical
    or identically ranked scores) are no difference at all (p = 1), where that bootstrap would
    report p = 0.
    """
    from MLstatkit import Delong_test

    labels, scores_a = _check(labels, scores_a)
    _, scores_b = _check(labels, scores_b)
    auc_a, auc_b = delong_auc_variance(labels, scores_a)[0], delong_auc_variance(labels, scores_b)[0]
    if auc_a == auc_b:
        return {"auc_a": auc_a, "auc_b": auc_b, "z": 0.0, "p": 1.0, "method": "equal AUCs"}
    z, p, _, _, auc_a, auc_b, info = Delong_test(labels, scores_a, scores_b, return_ci=True,
                                                 return_auc=True, n_boot=2000, random_state=seed)
    return {"auc_a": float(auc_a), "auc_b": float(auc_b), "z": float(z), "p": float(p),
            "method": info["method"]}


def delong_unpaired(labels_1, scores_1, labels_2, scores_2) -> dict:
    """Two AUCs from disjoint groups (independent samples): {"auc_1", "auc_2", "z", "p"}, z < 0
    when group 1 ranks worse; p is two-sided."""
    auc_1, var_1 = delong_auc_variance(labels_1, scores_1)
    auc_2, var_2 = delong_auc_variance(labels_2, scores_2)
    se = math.sqrt(var_1 + var_2)
    if se == 0.0:   # both AUCs exact (0 or 1): equal or maximally different
        z, p = 0.0, (1.0 if auc_1 == auc_2 else 0.0)
    else:
        z = (auc_1 - auc_2) / se
        p = float(2 * scipy.stats.norm.sf(abs(z)))
    return {"auc_1": auc_1, "auc_2": auc_2, "z": float(z), "p": float(p)}


def wilson_ci(successes: int, total: int, level: float = LEVEL) -> list:
    """Wilson score interval for a proportion; [None, None] for an empty denominator."""
    from statsmodels.stats.proportion import proportion_confint

    if total == 0:
        return [None, None]
    low, high = proportion_confint(successes, total, alpha=1 - level, method="wilson")
    share = successes / total   # the interval holds the estimate (rounding aside, e.g. at 1.0)
    return [float(max(0.0, min(low, share))), float(min(1.0, max(high, share)))]


def _ratio(a: int, b: int):
    return a / b if b else None


def threshold_metrics(labels, scores, threshold: float) -> dict:
    """Sensitivity, specificity, accuracy, precision (PPV), NPV and F1 of `score >= threshold`
    (the serving rule), each proportion with its Wilson 95% CI, and the confusion counts."""
    from sklearn.metrics import confusion_matrix

    labels, scores = _check(labels, scores)
    predicted = (scores >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(labels, predicted, labels=[0, 1]).ravel())
    precision, sensitivity = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return {
        "threshold": float(threshold), "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "sensitivity": sensitivity, "sensitivity_ci": wilson_ci(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp), "specificity_ci": wilson_ci(tn, tn + fp),
        "accuracy": _ratio(tp + tn, labels.size), "accuracy_ci": wilson_ci(tp + tn, labels.size),
        "precision": precision, "precision_ci": wilson_ci(tp, tp + fp),
        "npv": _ratio(tn, tn + fn), "npv_ci": wilson_ci(tn, tn + fn),
        "f1": f1,
    }


def predictive_values(sensitivity, specificity, prevalence: float) -> dict:
    """PPV and NPV a test with this sensitivity and specificity has where the disease has
    `prevalence` (Bayes' rule): what a clinician on a ward with that prevalence would see."""
    if not 0.0 < prevalence < 1.0:
        raise ValueError(f"prevalence must be strictly between 0 and 1, got {prevalence}")
    if sensitivity is None or specificity is None:
        return {"prevalence": prevalence, "ppv": None, "npv": None}
    true_pos = sensitivity * prevalence
    false_pos = (1 - specificity) * (1 - prevalence)
    true_neg = specificity * (1 - prevalence)
    false_neg = (1 - sensitivity) * prevalence
    return {"prevalence": prevalence, "ppv": _ratio(true_pos, true_pos + false_pos),
            "npv": _ratio(true_neg, true_neg + false_neg)}


def holm(p_values) -> list:
    """Holm-adjusted p-values (family-wise error), in the order given."""
    from statsmodels.stats.multitest import multipletests

    p_values = list(p_values)
    if not p_values:
        return []
    return [float(p) for p in multipletests(p_values, method="holm")[1]]
