"""Platt scaling fitted on validation and baked into the export; ECE, Brier and reliability."""
import numpy as np
import pytest

from cardio.evaluation import calibration as metrics
from cardio.trainer import calibration


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_platt_recovers_a_known_miscalibration():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, 20000)
    labels = rng.random(20000) < _sigmoid(0.5 * logits - 1.0)   # the network is overconfident
    platt = calibration.fit_platt(labels, logits)
    assert platt.a == pytest.approx(0.5, abs=0.05) and platt.b == pytest.approx(-1.0, abs=0.08)
    before, after = _sigmoid(logits), platt(logits)
    assert metrics.expected_calibration_error(labels, after) < 0.02
    assert metrics.expected_calibration_error(labels, before) > 0.15
    assert metrics.brier(labels, after) < metrics.brier(labels, before)
    table = metrics.reliability(labels, after)
    assert sum(row["n"] for row in table) == len(labels)
    assert all(abs(row["observed"] - row["mean_probability"]) < 0.05 for row in table
               if row["n"] > 500)


def test_saturated_logits_keep_their_order_and_a_missing_class_is_the_identity():
    """Logits of +-60 are probabilities 0.0000 / 1.0000 in float32; Platt works on the logits."""
    logits = np.concatenate([np.linspace(-60, -20, 50), np.linspace(-25, 40, 10)])
    labels = np.r_[np.zeros(50), np.ones(10)]
    probabilities = calibration.fit_platt(labels, logits)(logits)
    assert np.all(np.isfinite(probabilities)) and np.all(np.diff(probabilities[:50]) > 0)
    assert np.float32(_sigmoid(-40)) < 1e-16 < probabilities[25]   # no longer saturated
    assert calibration.fit_platt(np.zeros(5), np.arange(5.0)) == calibration.Platt()


def test_ece_is_the_bin_weighted_gap():
    labels = np.array([0, 0, 1, 1])
    probabilities = np.array([0.05, 0.05, 0.95, 0.55])   # bins 0, 9 and 5
    expected = (2 * 0.05 + 1 * 0.05 + 1 * 0.45) / 4
    assert metrics.expected_calibration_error(labels, probabilities) == pytest.approx(expected)


def test_the_comparison_reports_calibration_per_group():
    from cardio.evaluation import comparison

    rng = np.random.default_rng(2)
    scores = rng.random(200)
    labels = (rng.random(200) < scores).astype(int)
    summary = comparison.group_summary(labels, scores, threshold=0.5, prevalence=0.17)
    assert summary["calibration"]["ece"] == pytest.approx(
        metrics.expected_calibration_error(labels, scores))
    assert summary["calibration"]["brier"] == pytest.approx(np.mean((scores - labels) ** 2))
    assert sum(r["n"] for r in summary["calibration"]["reliability"]) == 200
