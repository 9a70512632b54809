"""Patient-level, deterministic split assignment.

A patient's split depends only on a hash of (seed, patient id), so no patient appears in two
splits and a rerun or a new span assigns returning patients to the same split. Images from an
external site always go to `external`: it gates and reports, never trains.
"""
import hashlib

from cxr import features as F


def unit_hash(patient_id: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_split(patient_id: str, site: str, external_sites, seed: int = 0,
                 test_fraction: float = 0.2, validation_fraction: float = 0.2) -> str:
    """test gets `test_fraction` of internal patients; the rest splits 80:20 train/validation."""
    if site in external_sites:
        return F.EXTERNAL
    u = unit_hash(patient_id, seed)
    if u < test_fraction:
        return F.TEST
    if u < test_fraction + (1 - test_fraction) * validation_fraction:
        return F.VALIDATION
    return F.TRAIN
