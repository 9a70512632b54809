"""Model comparison on fixed predictions: metrics vs scikit-learn, DeLong pairs, the champion
rule (internal data only), the operating point, the fairness review and the report files."""
import json
import os

import numpy as np
import pytest
from sklearn import metrics as skm

from cardio import features as F
from cardio.evaluation import comparison as C, comparison_report as R, statistics as S

INTERNAL, EXTERNAL_SITE = ("site-a",), "site-b"


def _cases(seed=0, n=(200, 240, 200)):
    """Validation and test from site-a, external from site-b; sexes and age bands mixed."""
    rng = np.random.default_rng(seed)
    split = np.repeat([C.VALIDATION, C.TEST, C.EXTERNAL], n)
    total = sum(n)
    return {"split": split,
            F.SITE: np.where(split == C.EXTERNAL, EXTERNAL_SITE, "site-a"),
            F.SEX: rng.choice(["F", "M"], total),
            F.AGE_BAND: rng.choice(["<40", "40-59", "60-79", "80+"], total, p=[.1, .4, .47, .03]),
            F.VIEW: rng.choice(["PA", "AP"], total, p=[.8, .2]),
            F.LABEL: rng.integers(0, 2, total),
            F.IMAGE_ID: np.array([f"img{i:04d}" for i in range(total)])}


def _model(cases, strength, seed, weak_mask=None):
    rng = np.random.default_rng(seed)
    signal = np.where(cases[F.LABEL] == 1, strength, 0.0)
    if weak_mask is not None:
        signal = np.where(weak_mask, 0.0, signal)     # no signal at all in this slice
    return 1 / (1 + np.exp(-(signal + rng.normal(0, 1, len(signal)) - strength / 2)))


def _info(backbone, weighting, threshold=0.4, blessed=True):
    return {"backbone": backbone, "weighting": weighting, "threshold": threshold,
            "blessed": blessed, "target_sensitivity": 0.9}


def _analyse(cases, scores, models, **kw):
    return C.analyse(cases, scores, models, INTERNAL, EXTERNAL_SITE,
                     prevalence=kw.get("prevalence", 0.1), min_per_class=kw.get("min", 10))


def test_group_metrics_match_sklearn_on_fixed_predictions():
    cases = _cases()
    scores = {"cardio-a-75-25": _model(cases, 2.0, 1)}
    out = _analyse(cases, scores, {"cardio-a-75-25": _info("a", "75-25", threshold=0.43)})
    external = cases["split"] == C.EXTERNAL
    y, p = cases[F.LABEL][external], scores["cardio-a-75-25"][external]
    g = out["models"]["cardio-a-75-25"]["groups"][C.EXTERNAL]
    assert g["auc"] == pytest.approx(skm.roc_auc_score(y, p))
    for key, t in (("operating", 0.43), ("study_0.5", 0.5)):
        predicted = (p >= t).astype(int)
        assert g[key]["sensitivity"] == pytest.approx(skm.recall_score(y, predicted))
        assert g[key]["specificity"] == pytest.approx(skm.recall_score(y, predicted, pos_label=0))
        assert g[key]["accuracy"] == pytest.approx(skm.accuracy_score(y, predicted))
        assert g[key]["precision"] == pytest.approx(skm.precision_score(y, predicted))
        assert g[key]["f1"] == pytest.approx(skm.f1_score(y, predicted))
    assert set(out["groups"]) == {C.VALIDATION, C.TEST, C.EXTERNAL}
    assert out["groups"][C.EXTERNAL]["sites"] == [EXTERNAL_SITE]
    assert out["delong"] == []       # one model: no pair


def test_ppv_at_the_deployment_prevalence_differs_from_the_balanced_test_precision():
    cases = _cases()
    out = _analyse(cases, {"m": _model(cases, 2.0, 1)}, {"m": _info("a", "75-25")}, prevalence=0.1)
    op = out["models"]["m"]["groups"][C.TEST]["operating"]
    sens, spec = op["sensitivity"], op["specificity"]
    assert op["deployment"]["ppv"] == pytest.approx(0.1 * sens / (0.1 * sens + 0.9 * (1 - spec)))
    assert op["deployment"]["ppv"] < op["precision"]     # a ward is not a balanced test set


def test_every_pair_is_tested_and_labelled_by_what_differs():
    cases = _cases()
    models = {"cardio-a-75-25": _info("a", "75-25"), "cardio-a-50-50": _info("a", "50-50"),
              "cardio-b-75-25": _info("b", "75-25")}
    scores = {name: _model(cases, s, i) for i, (name, s) in enumerate(zip(models, (2.5, 0.6, 2.4)))}
    out = _analyse(cases, scores, models)
    assert len(out["delong"]) == 3 * 3          # 3 pairs x 3 groups
    kinds = {(r["model_a"], r["model_b"]): r["kind"] for r in out["delong"]}
    assert kinds[("cardio-a-50-50", "cardio-a-75-25")] == "weighting"
    assert kinds[("cardio-a-75-25", "cardio-b-75-25")] == "backbone"
    assert kinds[("cardio-a-50-50", "cardio-b-75-25")] == "other"
    weak = [r for r in out["delong"] if r["model_a"] == "cardio-a-50-50" and r["group"] == C.TEST]
    assert all(r["p"] < 0.05 and r["p_holm"] >= r["p"] for r in weak)


def test_champion_is_chosen_on_validation_and_never_on_the_external_site():
    cases = _cases()
    external = cases["split"] == C.EXTERNAL
    models = {"cardio-good-75-25": _info("good", "75-25"),
              "cardio-weak-75-25": _info("weak", "75-25")}
    good, weak = _model(cases, 3.0, 1), _model(cases, 0.8, 2)
    # The weak model is perfect on the external site only: that must not make it champion.
    weak = np.where(external, cases[F.LABEL] * 0.9 + 0.05, weak)
    out = _analyse(cases, {"cardio-good-75-25": good, "cardio-weak-75-25": weak}, models)
    assert out["models"]["cardio-weak-75-25"]["groups"][C.EXTERNAL]["auc"] == 1.0
    champion = out["champion"]
    assert champion["model_name"] == "cardio-good-75-25"
    assert "validation AUC" in champion["reason"] and "external site was not used" in champion["reason"]
    assert "nor the internal test split" in champion["reason"]


def test_validation_ties_are_broken_by_the_rule_fixed_beforehand_never_by_test(monkeypatch):
    """Tied on validation, the 75-25 model wins although the 50-50 one is far better on test;
    then the smaller backbone. Permuting the test labels changes no choice."""
    # The fairness review enters no choice and costs seconds per analysis.
    monkeypatch.setattr(C, "fairness", lambda *args, **kwargs: [])
    cases = _cases()
    test = cases["split"] == C.TEST
    first = _model(cases, 2.0, 1)
    # Equal on validation (the same scores); the 50-50 model is much better on the internal test.
    second = np.where(test, _model(cases, 4.0, 3), first)
    models = {"cardio-x-75-25": _info("mobilenet", "75-25"),
              "cardio-x-50-50": _info("mobilenet", "50-50")}
    scores = {"cardio-x-75-25": first, "cardio-x-50-50": second}
    out = _analyse(cases, scores, models)
    assert out["models"]["cardio-x-50-50"]["groups"][C.TEST]["auc"] > \
        out["models"]["cardio-x-75-25"]["groups"][C.TEST]["auc"] + 0.05
    assert out["champion"]["model_name"] == "cardio-x-75-25"
    assert sorted(out["champion"]["candidates"]) == ["cardio-x-50-50", "cardio-x-75-25"]
    assert C.TIE_RULE in out["champion"]["reason"] and "internal test AUC" not in out["champion"]["reason"]
    # Same weighting: the smaller backbone.
    sizes = {"cardio-big-75-25": _info("xception", "75-25"),
             "cardio-small-75-25": _info("mobilenet_025", "75-25")}
    by_size = _analyse(cases, {"cardio-big-75-25": second, "cardio-small-75-25": first}, sizes)
    assert by_size["champion"]["model_name"] == "cardio-small-75-25"
    grids = ((models, scores, out), (sizes, {"cardio-big-75-25": second,
                                             "cardio-small-75-25": first}, by_size))
    for seed in range(3):
        permuted = {k: v.copy() for k, v in cases.items()}
        order = np.random.default_rng(seed).permutation(int(test.sum()))
        permuted[F.LABEL][test] = cases[F.LABEL][test][order]
        for grid, model_scores, original in grids:
            again = _analyse(permuted, model_scores, grid)
            assert (again["champion"]["model_name"], again["champion"]["candidates"]) == \
                (original["champion"]["model_name"], original["champion"]["candidates"])
            # What the test split reports did change: permuted labels rank at chance.
            for name in grid:
                assert again["models"][name]["groups"][C.TEST]["auc"] != \
                    original["models"][name]["groups"][C.TEST]["auc"]


def test_champion_reason_without_an_external_site_does_not_claim_one():
    models = {"m": {"blessed": True, "groups": {C.VALIDATION: {"auc": 0.8, "ci": [0.7, 0.9]}}}}
    alone = C.choose_champion(models, [], external_site=None)["reason"]
    assert "external site was not used" not in alone and "No external site is configured" in alone
    assert "external site was not used" in C.choose_champion(models, [], external_site="b")["reason"]


def test_only_blessed_models_can_be_champion():
    cases = _cases()
    models = {"cardio-a-75-25": _info("a", "75-25", blessed=False),
              "cardio-b-75-25": _info("b", "75-25", blessed=True)}
    scores = {"cardio-a-75-25": _model(cases, 4.0, 1), "cardio-b-75-25": _model(cases, 1.0, 2)}
    assert _analyse(cases, scores, models)["champion"]["model_name"] == "cardio-b-75-25"
    models["cardio-b-75-25"]["blessed"] = False
    none = _analyse(cases, scores, models)["champion"]
    assert none["model_name"] is None and "No model was blessed" in none["reason"]


def test_fairness_flags_a_slice_the_model_fails_and_marks_small_slices():
    cases = _cases(n=(100, 600, 400))
    women = (cases[F.SEX] == "F") & (cases[F.SITE] == "site-a")
    scores = _model(cases, 3.0, 1, weak_mask=women)
    out = _analyse(cases, {"m": scores}, {"m": _info("a", "75-25")}, min=10)
    rows = {r["slice"]: r for r in out["models"]["m"]["fairness"]}
    assert rows["site=site-a, sex=F"]["status"] == "flagged"
    assert rows["site=site-a, sex=M"]["status"] == "ok"          # better than its complement
    assert rows["site=site-b, sex=F"]["status"] == "ok"          # the other site is fine
    assert rows["site=site-a"]["status"] == "site"
    small = [r for r in rows.values() if r["status"] == "too small"]
    assert small and all("needs >= 10" in r["note"] and "p" not in r for r in small)
    for r in rows.values():   # too small exactly when the slice lacks 10 of a class
        if r["status"] != "site" and r["complement_n"] > 100:
            assert (r["status"] == "too small") == (min(r["positives"], r["negatives"]) < 10)
    # The slice's AUC and its complement's are what sklearn computes on those images.
    mask = women & (cases["split"] == C.TEST)
    rest = (cases[F.SITE] == "site-a") & (cases["split"] == C.TEST) & ~women
    assert rows["site=site-a, sex=F"]["auc"] == pytest.approx(
        skm.roc_auc_score(cases[F.LABEL][mask], scores[mask]))
    assert rows["site=site-a, sex=F"]["complement_auc"] == pytest.approx(
        skm.roc_auc_score(cases[F.LABEL][rest], scores[rest]))
    tested = [r for r in rows.values() if "p" in r]
    assert all(r["p_holm"] >= r["p"] for r in tested) and len(tested) >= 6
    assert {"site=site-a, view=PA", "site=site-a, view=AP"} <= set(rows)


def test_a_feature_with_one_value_in_a_site_adds_no_fairness_row():
    """A PA-only cohort: its view slice is the whole site, already the site's row."""
    cases = _cases()
    cases[F.VIEW] = np.full(len(cases["split"]), "PA")
    out = _analyse(cases, {"m": _model(cases, 3.0, 1)}, {"m": _info("a", "75-25")})
    rows = [r["slice"] for r in out["models"]["m"]["fairness"]]
    assert "site=site-a" in rows and "site=site-a, sex=F" in rows
    assert not [r for r in rows if "view=" in r]


def test_report_has_roc_curves_delong_table_and_fairness_chart(tmp_path):
    cases = _cases()
    models = {"cardio-a-75-25": _info("a", "75-25"), "cardio-a-50-50": _info("a", "50-50")}
    scores = {"cardio-a-75-25": _model(cases, 2.5, 1), "cardio-a-50-50": _model(cases, 0.5, 2)}
    out = _analyse(cases, scores, models)
    json.dumps(out)                  # comparison.json must serialise
    paths = R.write(out, str(tmp_path), overlay_note="Grad-CAM overlays: not available yet.")
    text = open(paths["markdown"]).read()
    for name in (R.ROC_PNG, R.FOREST_PNG, R.OPERATING_PNG, "fairness_cardio-a-75-25.png"):
        assert os.path.getsize(tmp_path / name) > 10_000, name
        assert f"({name})" in text
    assert "## DeLong tests, every pair" in text and "| weighting |" in text
    assert "never chooses" in text and "PPV at 10%" in text
    assert "**cardio-a-75-25** (champion)" in text
    assert "not available yet" in text
    assert "<table>" in open(paths["html"]).read()


def test_champion_reason_when_validation_lacks_a_class():
    """A small run's validation split may hold no cardiomegaly: AUC undefined, said so, and the
    only blessed model is still the champion (it was a crash in the compiled pipeline's run)."""
    models = {"m": {"blessed": True, "groups": {
        C.VALIDATION: {"auc": None, "ci": [None, None]},
        C.TEST: {"auc": 0.8, "ci": [0.7, 0.9]}}}}
    champion = C.choose_champion(models, delong=[])
    assert champion["model_name"] == "m"
    assert "undefined (the split lacks a class)" in champion["reason"]
    models["m"]["groups"][C.VALIDATION] = {"auc": 0.75, "ci": [0.6, 0.9]}
    assert f"0.750 ({S.DELONG_CI} 0.600-0.900)" in C.choose_champion(models, [])["reason"]


def test_the_tie_rule_knows_every_backbone_the_trainer_builds():
    from cardio.trainer import model as model_lib

    assert set(model_lib.BACKBONES) <= set(C.BACKBONE_PARAMETERS)
    assert C.BACKBONE_PARAMETERS["mobilenet_025"] == 218_544   # tests/test_trainer.py counts it


def test_the_served_ctr_is_reported_beside_the_champion_as_scikit_learn_scores_it(tmp_path):
    """The CTR row: AUC over the measured images only (-1 and NaN counted as not measured),
    `ctr > 0.5` as the rule (0.5 itself is not above it), DeLong against the champion on the
    same images, agreement only where a ground-truth ratio exists; never on validation."""
    cases = _cases()
    models = {"cardio-a-75-25": _info("a", "75-25")}
    scores = {"cardio-a-75-25": _model(cases, 2.0, 1)}
    rng = np.random.default_rng(5)
    truth = np.where(cases[F.LABEL] == 1, 0.56, 0.45) + rng.normal(0, 0.04, len(cases[F.LABEL]))
    measured = truth + rng.normal(0, 0.03, truth.size)
    test = np.flatnonzero(cases["split"] == C.TEST)
    measured[test[4:9]] = 0.5                # exactly 0.5: not above the rule
    measured[test[:3]] = -1.0                # empty masks
    measured[test[3]] = np.nan               # not scored
    truth[cases["split"] == C.EXTERNAL] = np.nan   # the external site has no ground truth
    out = C.analyse(cases, scores, models, INTERNAL, EXTERNAL_SITE, prevalence=0.1,
                    min_per_class=10, ctr={"measured": measured, "truth": truth,
                                           "segmenter": {"held_out": {"dice": 0.88, "n": 27}}})
    json.dumps(out)
    rows = out["ctr"]["groups"]
    assert set(rows) == {C.TEST, C.EXTERNAL}        # validation chooses; the CTR never does
    mask = (cases["split"] == C.TEST) & (measured >= 0)
    y, r, p = cases[F.LABEL][mask], measured[mask], scores["cardio-a-75-25"][mask]
    row = rows[C.TEST]
    assert (row["n"], row["not_measured"]) == (mask.sum(), 4)
    assert row["auc"] == pytest.approx(skm.roc_auc_score(y, r))
    assert row["above_0.5"]["sensitivity"] == pytest.approx(skm.recall_score(y, r > 0.5))
    assert row["above_0.5"]["specificity"] == pytest.approx(
        skm.recall_score(y, r > 0.5, pos_label=0))
    assert row["vs_champion"]["auc_b"] == pytest.approx(skm.roc_auc_score(y, p))
    assert np.sign(row["vs_champion"]["z"]) == np.sign(skm.roc_auc_score(y, p) - row["auc"])
    assert row["agreement"]["mae"] == pytest.approx(np.abs(r - truth[mask]).mean())
    assert row["agreement"]["pearson_r"] == pytest.approx(np.corrcoef(truth[mask], r)[0, 1])
    assert "agreement" not in rows[C.EXTERNAL]
    text = open(R.write(out, str(tmp_path))["markdown"]).read()
    assert "## Cardiothoracic ratio beside the champion" in text
    assert "held-out Dice 0.880 (n=27)" in text and "no ground truth in the examples" in text
    # Without a heart U-Net the report says the CTR was not served, not that it was poor.
    without = C.analyse(cases, scores, models, INTERNAL, EXTERNAL_SITE, prevalence=0.1,
                        min_per_class=10)
    assert without["ctr"] is None
    assert "Not served" in open(R.write(without, str(tmp_path / "w"))["markdown"]).read()
