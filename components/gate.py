"""The blessing gate's criteria: what a model must reach, per site slice, to be pushed.

Plain data, no TFX: the pipeline configuration names a profile, the Evaluator (evaluator.py)
turns it into TFMA thresholds, and the model card prints it.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class GateProfile:
    """What a model must reach, per site slice, to be blessed and pushed.

    The gate compares point estimates of the metrics on each slice (TFMA thresholds); the
    bootstrap confidence intervals are reported beside them (components/evaluator.py).
    """
    name: str
    external_auc_min: float    # AUC on the external site's slice
    internal_auc_min: float    # AUC on the internal test slice(s)
    sensitivity_min: float     # sensitivity at the operating threshold, every site slice
    # No regression: per site, AUC >= the grid cell's last blessed model's AUC minus this.
    auc_regression_tolerance: float = 0.01


GATE_PROFILES = {
    # The study's acceptance criterion: external-site AUC >= 0.85.
    "study": GateProfile("study", external_auc_min=0.85, internal_auc_min=0.85, sensitivity_min=0.7),
    # The demo trains for minutes on synthetic data; a random model still fails these.
    "demo": GateProfile("demo", external_auc_min=0.6, internal_auc_min=0.6, sensitivity_min=0.5,
                        auc_regression_tolerance=0.05),
}


def refusals(metadata: dict) -> list[str]:
    """Why an export must fail the gate whatever its metrics: the Trainer refused calibration
    and the operating threshold (too few validation positives, logits that rank validation
    backwards: trainer/calibration.py). Read from the export's cardio_metadata.json."""
    return [f"calibration refused: {reason}"
            for reason in (metadata.get("calibration") or {}).get("refused") or ()]
