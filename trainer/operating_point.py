"""The operating threshold chosen on the validation split."""
import numpy as np


def choose_threshold(labels, probabilities, target_sensitivity: float) -> float:
    """The highest threshold whose sensitivity on these predictions reaches the target.

    Highest, because among thresholds meeting the sensitivity target it maximises specificity.
    Falls back to 0.5 when the split has no positive case.
    """
    labels = np.asarray(labels).astype(bool)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    positives = np.sort(probabilities[labels])[::-1]
    if positives.size == 0:
        return 0.5
    needed = int(np.ceil(target_sensitivity * positives.size))
    return float(positives[max(needed, 1) - 1])
