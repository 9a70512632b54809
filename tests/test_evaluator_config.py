"""The EvalConfig: per-site slices only, and the gate profile's thresholds on the site slices."""
from components import evaluator
from pipeline import configs


def _thresholds(eval_config, metric):
    config = next(m for spec in eval_config.metrics_specs for m in spec.metrics
                  if m.class_name == metric)
    return {t.slicing_specs[0].feature_values["site"]:
            t.threshold.value_threshold.lower_bound.value for t in config.per_slice_thresholds}


def test_every_slice_is_keyed_by_site():
    eval_config = evaluator.eval_config(configs.PipelineConfig())
    assert eval_config.slicing_specs
    for spec in eval_config.slicing_specs:
        assert "site" in spec.feature_keys


def test_study_gate_thresholds_per_site():
    config = configs.PipelineConfig()
    eval_config = evaluator.eval_config(config)
    assert _thresholds(eval_config, "AUC") == {"site-a": 0.85, "site-b": 0.85}
    assert _thresholds(eval_config, "Recall") == {"site-a": 0.7, "site-b": 0.7}


def test_sensitivity_is_scored_on_the_operating_threshold_label():
    eval_config = evaluator.eval_config(configs.PipelineConfig())
    by_output = {spec.output_names[0]: {m.class_name for m in spec.metrics}
                 for spec in eval_config.metrics_specs}
    assert "Recall" in by_output["predicted_label"] and "AUC" in by_output["probability"]


def test_demo_gate_profile():
    eval_config = evaluator.eval_config(configs.demo_config(None))
    gate = configs.GATE_PROFILES["demo"]
    assert _thresholds(eval_config, "AUC") == {"site-a": gate.internal_auc_min,
                                                "site-b": gate.external_auc_min}
