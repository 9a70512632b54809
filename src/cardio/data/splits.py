"""Patient-level, deterministic split assignment.

A patient's split depends only on a hash of (seed, patient id), so no patient appears in two
splits and a rerun or a new span assigns returning patients to the same split. Images from an
external site always go to `external`: it gates and reports, never trains.
"""
import collections
import hashlib

from cardio import features as F


def unit_hash(patient_id: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_splits(patients: dict, external_sites, seed: int = 0, test_fraction: float = 0.2,
                  validation_fraction: float = 0.2) -> dict:
    """{patient id: (site, label)} -> {patient id: split}, patient-level and class-balanced.

    The test set takes `test_fraction` of the internal cardiomegaly patients and as many normal
    patients, chosen in hash order, so it is class-balanced; the remaining patients split
    train/validation (by default 80:20) on a second hash. A patient's label is 1 if any of their
    images is positive. The external site is its own split.
    """
    internal = {p: label for p, (site, label) in patients.items() if site not in external_sites}
    by_class = collections.defaultdict(list)
    for patient, label in internal.items():
        by_class[label].append(patient)
    test_per_class = round(test_fraction * len(by_class[1]))
    split = {p: F.EXTERNAL for p, (site, _) in patients.items() if site in external_sites}
    for label, members in by_class.items():
        members.sort(key=lambda p: unit_hash(p, seed))
        for patient in members[:test_per_class]:
            split[patient] = F.TEST
    for patient in internal:
        if patient not in split:
            split[patient] = (F.VALIDATION if unit_hash(patient, seed + 1) < validation_fraction
                              else F.TRAIN)
    return split
