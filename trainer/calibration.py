"""Platt scaling, fitted on the validation split and baked into the export.

The class weighting (75-25) and the training set's imbalance push the network's probabilities
away from the observed frequencies, and a few epochs saturate them (0.0000 for most images).
Platt scaling maps the network's logit z to sigmoid(a * z + b), with a and b the maximum-likelihood
fit on validation; the slope a is constrained positive, so the map is increasing and the ranking
(AUC) is unchanged, and the operating threshold is chosen on the calibrated probability. It works on
the logit (the Dense layer's output before its sigmoid), never on a saturated float32 probability,
so no ordering is lost.

`calibrate` refuses the fit (identity scaling, and reasons the gate fails the model with) when
validation cannot support it: fewer positives than the configured minimum, or raw logits that rank
validation backwards (AUC < 0.5): an unconstrained fit would flip such a model into a good-looking
one on a handful of images.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Platt:
    a: float = 1.0
    b: float = 0.0

    def __call__(self, logits) -> np.ndarray:
        z = self.a * np.asarray(logits, dtype=np.float64) + self.b
        return np.exp(-np.logaddexp(0.0, -z))      # sigmoid without overflow


def log_loss(labels, logits, a: float, b: float) -> float:
    z = a * np.asarray(logits, dtype=np.float64) + b
    y = np.asarray(labels, dtype=np.float64)
    return float(np.mean(y * np.logaddexp(0.0, -z) + (1 - y) * np.logaddexp(0.0, z)))


def fit_platt(labels, logits) -> Platt:
    """Maximum-likelihood (a, b) on these labels and logits; the identity when a class is missing.
    Platt's smoothed targets ((n+ + 1)/(n+ + 2), 1/(n- + 2)) keep a separable split finite."""
    from scipy.optimize import minimize

    y = np.asarray(labels, dtype=np.float64)
    z = np.asarray(logits, dtype=np.float64)
    positives, negatives = int(y.sum()), int(len(y) - y.sum())
    if not positives or not negatives:
        return Platt()
    targets = np.where(y > 0.5, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    scale = float(np.std(z)) or 1.0

    x = z / scale

    def loss_and_gradient(params):
        t = params[0] * x + params[1]
        loss = np.mean(targets * np.logaddexp(0.0, -t) + (1 - targets) * np.logaddexp(0.0, t))
        residual = np.exp(-np.logaddexp(0.0, -t)) - targets          # sigmoid(t) - target
        return float(loss), np.array([np.mean(residual * x), np.mean(residual)])

    # The slope stays positive: the served probability is increasing in the logit.
    result = minimize(loss_and_gradient, x0=[1.0, 0.0], jac=True, method="L-BFGS-B",
                      bounds=[(MIN_SLOPE, None), (None, None)],
                      options={"gtol": 1e-10, "ftol": 1e-15, "maxiter": 1000})
    return Platt(a=float(result.x[0] / scale), b=float(result.x[1]))


MIN_SLOPE = 1e-6   # in units of the logits' standard deviation: at it, the logits carry no ranking


def calibrate(labels, logits, min_positives: int) -> tuple[Platt, dict]:
    """(the Platt scaling to serve, the record the metadata and model card carry).

    The record's `refused` lists why validation cannot support calibration and the operating
    threshold; the Evaluator fails a model whose record has any (components/evaluator.py)."""
    from cardio.evaluation import statistics as S

    # In a fixed order (by logit, then label): the fit is a function of the validation set, not
    # of the order Beam wrote it in (floating-point sums depend on order).
    order = np.lexsort((np.asarray(labels, dtype=np.float64), np.asarray(logits, dtype=np.float64)))
    y = np.asarray(labels, dtype=np.float64)[order]
    z = np.asarray(logits, dtype=np.float64)[order]
    positives, negatives = int(y.sum()), int(len(y) - y.sum())
    record = {"method": "platt", "fitted_on": "validation", "validation_positives": positives,
              "validation_negatives": negatives, "min_validation_positives": min_positives,
              "refused": []}
    if positives < min_positives:
        record["refused"].append(
            f"validation has {positives} positive(s), fewer than min_validation_positives="
            f"{min_positives}: too few to calibrate or to choose the operating threshold")
    if len(z) and np.ptp(z) == 0:
        record["refused"].append("the logits are the same for every validation image: they "
                                 "rank nothing")
    raw_auc = S.auc_with_ci(y, z)["auc"]
    record["validation_raw_auc"] = raw_auc
    if raw_auc is not None and raw_auc < 0.5:
        record["refused"].append(
            f"the raw logits rank validation backwards (AUC {raw_auc:.3f} < 0.5): calibration "
            f"would invert the model")
    platt = Platt() if record["refused"] else fit_platt(y, z)
    if not record["refused"] and positives and negatives and \
            platt.a <= 1.001 * MIN_SLOPE / (float(np.std(z)) or 1.0):
        record["refused"].append("the Platt slope sits at its lower bound: the logits carry no "
                                 "ranking of validation")
        platt = Platt()
    record.update(a=platt.a, b=platt.b)
    return platt, record
