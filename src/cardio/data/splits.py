"""Patient-level, deterministic split assignment.

A patient's split is a pure function of (seed, salted patient id): it does not depend on who else
is in the span, on the patient's label or on the order of rows, so a patient never moves between
splits as weekly spans arrive. A patient seen at an external site (at any time, on any image) is
an external patient: all of their images go to `external`, which gates and reports but never
trains, so no image of a held-out patient can reach training.
"""
import hashlib

from cardio import features as F


def unit_hash(patient_id: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(patient_id: str, seed: int = 0, test_fraction: float = 0.2,
             validation_fraction: float = 0.2) -> str:
    """The internal split of one patient: `test_fraction` of patients go to test; the rest split
    train/validation (by default 80:20) on a second hash."""
    if unit_hash(patient_id, seed) < test_fraction:
        return F.TEST
    return F.VALIDATION if unit_hash(patient_id, seed + 1) < validation_fraction else F.TRAIN


def assign_splits(patients: dict, external_sites, seed: int = 0, test_fraction: float = 0.2,
                  validation_fraction: float = 0.2) -> dict:
    """{patient id: set of sites the patient was seen at} -> {patient id: split}."""
    external_sites = set(external_sites)
    return {p: F.EXTERNAL if external_sites & set(sites) else
            split_of(p, seed, test_fraction, validation_fraction)
            for p, sites in patients.items()}
