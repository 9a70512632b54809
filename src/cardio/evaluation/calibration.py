"""Calibration figures: expected calibration error, Brier score and the reliability table.

Used by the Trainer (on validation, before and after Platt scaling) and by the model comparison
(per site slice). Equal-width probability bins, as TFMA's CalibrationPlot and sklearn's
calibration_curve use.
"""
from __future__ import annotations

import numpy as np

BINS = 10


def expected_calibration_error(labels, probabilities, bins: int = BINS) -> float:
    """ECE: the bin-weighted mean |observed frequency - mean probability| over equal-width bins."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probabilities, dtype=np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.sum() * abs(y[mask].mean() - p[mask].mean())
    return float(total / max(len(y), 1))


def brier(labels, probabilities) -> float:
    return float(np.mean((np.asarray(probabilities, np.float64) - np.asarray(labels, np.float64)) ** 2))


def reliability(labels, probabilities, bins: int = BINS) -> list[dict]:
    """Per non-empty bin: its range, count, mean probability and observed frequency."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probabilities, dtype=np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    return [{"bin": [b / bins, (b + 1) / bins], "n": int((which == b).sum()),
             "mean_probability": float(p[which == b].mean()),
             "observed": float(y[which == b].mean())}
            for b in range(bins) if (which == b).any()]


def summary(labels, probabilities) -> dict:
    return {"ece": expected_calibration_error(labels, probabilities),
            "brier": brier(labels, probabilities), "n": int(len(labels))}
