"""The model card and the gate line say only what the run did: no CI named when none was
computed, no external site when none is configured, the Trainer's refusal when there was one."""
from cardio.components import evaluator, model_card
from cardio.components.gate import GATE_PROFILES
from cardio.evaluation import statistics as S


def _card(intervals: bool, external_site="site-b", calibration=None) -> dict:
    cell = ({"value": 0.8, "lower": 0.7, "upper": 0.9} if intervals else
            {"value": 0.8, "lower": None, "upper": None})
    gate = {**GATE_PROFILES["demo"].__dict__, "external_site": external_site}
    return {
        "model": "cardio-m-75-25", "status": {"blessed": True, "pushed_to": None},
        "non_commercial": False, "licences": {"code": "x"}, "intended_use": "research",
        "limitations": [], "model_details": {"backbone": "m", "weighting": "75-25",
                                             "image_size": 64, "crop_size": None},
        "training": None, "calibration": calibration,
        "operating_point": {"threshold": 0.3, "chosen_on": "validation split",
                            "target_sensitivity": 0.9, "per_site": {"site=site-a": {
                                "sensitivity": cell}}},
        "data": {"sites": ["site-a"], "examples": 10, "fingerprint_sha256": "f",
                 "counts": {"test": {"site-a": {"normal": 7, "cardiomegaly": 3}}}},
        "evaluation": {"gate": gate, "compares": "point estimates per site slice; " + (
                           S.BOOTSTRAP_CI if intervals else model_card.NO_INTERVALS),
                       "ci": S.BOOTSTRAP_CI if intervals else S.NO_CI, "failures": [], "baseline": None,
                       "slices": {"site=site-a": {"auc": cell}}},
        "lineage": {}}


def test_without_confidence_intervals_the_card_and_gate_line_name_none():
    without = model_card.render_markdown(_card(intervals=False))
    assert S.BOOTSTRAP_CI not in without and "no confidence intervals were computed" in without
    assert S.BOOTSTRAP_CI in model_card.render_markdown(_card(intervals=True))
    line = evaluator.describe_gate(GATE_PROFILES["demo"], "site-b", S.NO_CI)
    assert S.BOOTSTRAP_CI not in line and "no confidence intervals computed" in line
    assert S.BOOTSTRAP_CI in evaluator.describe_gate(GATE_PROFILES["demo"], "site-b")


def test_without_an_external_site_the_card_claims_none():
    text = model_card.render_markdown(_card(intervals=True, external_site=None))
    assert "no external site configured" in text and "external-site AUC" not in text


def test_a_refused_calibration_is_headed_in_the_card_with_the_validation_counts():
    refused = {"refused": ["validation has 2 positive(s), fewer than min_validation_positives=10"],
               "validation_positives": 2, "validation_negatives": 40,
               "min_validation_positives": 10, "a": 1.0, "b": 0.0}
    text = model_card.render_markdown(_card(intervals=True, calibration=refused))
    assert "REFUSED" in text and "fewer than min_validation_positives=10" in text
    assert "Validation: 2 cardiomegaly, 40 normal" in text


def test_the_external_site_section_states_both_criteria_and_the_ctr_its_provenance():
    card = _card(intervals=True)
    slices = {"site=site-b": {"auc": {"value": 0.72, "lower": 0.6, "upper": 0.84},
                              "example_count": {"value": 143.0}, "tp": {"value": 80.0},
                              "fn": {"value": 20.0},
                              "sensitivity": {"value": 0.8, "lower": 0.7, "upper": 0.9}}}
    card["external_site"] = model_card.external_site(card["evaluation"]["gate"], slices)
    card["ctr"] = {"outputs": ["ctr", "heart_box", "thorax_box", "ctr_qc"], "heart_segmenter": {
        "weights_sha256": "ab" * 32, "held_out": {"dice": 0.885, "n": 27},
        "training_data": "Wingspan: 116 radiographs",
        "ctr_held_out": {"n": 27, "mae": 0.03545, "bias": -0.02059, "pearson_r": 0.7883}}}
    text = model_card.render_markdown(card)
    external = text[text.index("## External site"):text.index("## Cardiothoracic ratio")]
    # The demo gate's 0.6 is met, the study's 0.85 is not: both said, neither hidden.
    assert "143 radiographs, 100 cardiomegaly; AUC 0.720 [0.600, 0.840]" in external
    assert "AUC >= 0.6: met" in external and "AUC >= 0.85: NOT met" in external
    ctr = text[text.index("## Cardiothoracic ratio"):]
    assert "`ctr`, `heart_box`" in ctr and "Dice of 0.885 (n=27)" in ctr and "Wingspan" in ctr
    assert "MAE 0.035, bias -0.021, Pearson r 0.79 (n=27" in ctr
    # No external site, no heart U-Net: each section says so.
    bare = model_card.render_markdown({**_card(intervals=True, external_site=None),
                                       "external_site": None, "ctr": None})
    assert "has not been measured on another hospital" in bare and "Not served" in bare
