"""Platt scaling, fitted on the validation split and baked into the export.

The class weighting (75-25) and the training set's imbalance push the network's probabilities
away from the observed frequencies, and a few epochs saturate them (0.0000 for most images).
Platt scaling maps the network's logit z to sigmoid(a * z + b), with a and b the maximum-likelihood
fit on validation; it is monotone, so the ranking (AUC) is unchanged and the operating threshold
is chosen on the calibrated probability. It works on the logit (the Dense layer's output before
its sigmoid), never on a saturated float32 probability, so no ordering is lost.
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

    result = minimize(loss_and_gradient, x0=[1.0, 0.0], jac=True, method="BFGS",
                      options={"gtol": 1e-10})
    return Platt(a=float(result.x[0] / scale), b=float(result.x[1]))
