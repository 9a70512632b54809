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


def _inverted(n=400, seed=0):
    """Logits that rank validation backwards (AUC about 0.2)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(int)
    return labels, rng.normal(0, 1, n) - 1.5 * labels


def test_the_slope_stays_positive_and_an_inverted_model_is_refused():
    labels, logits = _inverted()
    # The constrained fit never flips the ranking, even where the likelihood would.
    assert calibration.fit_platt(labels, logits).a > 0
    platt, record = calibration.calibrate(labels, logits, min_positives=10)
    assert record["validation_raw_auc"] < 0.5
    assert any("backwards" in reason for reason in record["refused"])
    assert platt == calibration.Platt()              # served as the network's own scores
    # Served probability increasing in the logit: the inverted model stays visibly inverted.
    served = platt(np.sort(logits))
    assert np.all(np.diff(served) >= 0)
    assert metrics.summary(labels, platt(logits))["n"] == len(labels)
    from cardio.evaluation import statistics as S
    assert S.auc_with_ci(labels, platt(logits))["auc"] < 0.5


def test_too_few_validation_positives_refuse_calibration_naming_the_count():
    rng = np.random.default_rng(1)
    labels = np.r_[np.zeros(60), np.ones(4)]
    logits = rng.normal(0, 1, 64) + 2 * labels
    platt, record = calibration.calibrate(labels, logits, min_positives=5)
    assert record["refused"] == [
        "validation has 4 positive(s), fewer than min_validation_positives=5: too few to "
        "calibrate or to choose the operating threshold"]
    assert platt == calibration.Platt()
    fitted, record = calibration.calibrate(labels, logits, min_positives=4)
    direct = calibration.fit_platt(labels, logits)
    assert record["refused"] == [] and fitted.a > 0
    assert (fitted.a, fitted.b) == pytest.approx((direct.a, direct.b), rel=1e-9)
    # The fit is a function of the validation set, not of its order.
    order = np.random.default_rng(2).permutation(len(labels))
    assert calibration.calibrate(labels[order], logits[order], 4)[0] == fitted


def test_an_inverted_model_is_never_blessed(tmp_path):
    """The Trainer's refusal travels in the export's metadata; the Evaluator turns a blessing
    TFMA gave (its metrics judged the model alone) into NOT_BLESSED, naming the reason, and the
    model card says so."""
    import json

    from tfx.types import standard_artifacts

    from cardio.components import evaluator, model_card

    labels, logits = _inverted()
    _, record = calibration.calibrate(labels, logits, min_positives=10)
    extra = tmp_path / "model" / "Format-Serving" / "assets.extra"
    extra.mkdir(parents=True)
    (extra / "cardio_metadata.json").write_text(json.dumps({"calibration": record}))
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = str(tmp_path / "blessing")
    (tmp_path / "blessing").mkdir()
    (tmp_path / "blessing" / "BLESSED").write_text("")
    blessing.set_int_custom_property("blessed", 1)
    (tmp_path / "evaluation").mkdir()
    reasons = evaluator.fail_refused(str(tmp_path / "model"), blessing, str(tmp_path / "evaluation"))
    assert reasons and "backwards" in reasons[0]
    assert blessing.get_int_custom_property("blessed") == 0
    assert not (tmp_path / "blessing" / "BLESSED").exists()
    assert (tmp_path / "blessing" / "NOT_BLESSED").exists()
    assert json.loads((tmp_path / "evaluation" / evaluator.REFUSALS_FILE).read_text()) == reasons
    # A model the Trainer calibrated keeps TFMA's verdict.
    _, fine = calibration.calibrate(labels, -logits, min_positives=10)
    (extra / "cardio_metadata.json").write_text(json.dumps({"calibration": fine}))
    kept = standard_artifacts.ModelBlessing()
    kept.uri = str(tmp_path / "blessing2")
    (tmp_path / "blessing2").mkdir()
    (tmp_path / "blessing2" / "BLESSED").write_text("")
    assert evaluator.fail_refused(str(tmp_path / "model"), kept, str(tmp_path / "evaluation2")) == []
    assert (tmp_path / "blessing2" / "BLESSED").exists()
    text = model_card.render_calibration({**record, "validation_before": metrics.summary(
        labels, calibration.Platt()(logits)), "validation_after": metrics.summary(
        labels, calibration.Platt()(logits))})
    assert "REFUSED" in text and "backwards" in text
