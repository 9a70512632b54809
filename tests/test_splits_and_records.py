"""Patient-level splits, privacy of patient ids and the tf.Example encoding."""
import collections

import numpy as np
import pytest
import tensorflow as tf

from cxr import features as F, records, splits


def test_no_patient_in_two_splits_and_assignment_is_deterministic():
    assignments = collections.defaultdict(set)
    for i in range(3000):
        patient = f"p{i % 1000}"
        assignments[patient].add(splits.assign_split(patient, "site-a", ("site-b",), seed=7))
    assert all(len(s) == 1 for s in assignments.values())
    counts = collections.Counter(next(iter(s)) for s in assignments.values())
    assert 0.15 < counts[F.TEST] / 1000 < 0.25
    assert 0.10 < counts[F.VALIDATION] / 1000 < 0.22
    assert F.EXTERNAL not in counts


def test_external_site_is_always_external():
    assert all(splits.assign_split(f"p{i}", "site-b", ("site-b",)) == F.EXTERNAL for i in range(50))


def test_patient_ids_are_salted_hashes():
    h = records.hash_patient_id("12345", "salt-1")
    assert h == records.hash_patient_id("12345", "salt-1")
    assert h != records.hash_patient_id("12345", "salt-2")
    assert "12345" not in h
    with pytest.raises(ValueError, match="salt"):
        records.hash_patient_id("12345", "")


def test_example_round_trip():
    pixels = (np.arange(64 * 48, dtype=np.uint16).reshape(64, 48) * 13)
    record = records.Record(image_png=records.encode_png(pixels), label=1, image_id="x",
                            patient_id="abc", site="site-a", sex="F", age=71)
    example = records.to_example(record)
    parsed = tf.io.parse_single_example(example.SerializeToString(), {
        F.IMAGE: tf.io.FixedLenFeature([], tf.string), F.AGE_BAND: tf.io.FixedLenFeature([], tf.string),
        F.LABEL: tf.io.FixedLenFeature([], tf.int64)})
    decoded = tf.io.decode_png(parsed[F.IMAGE], dtype=tf.uint16).numpy()[..., 0]
    np.testing.assert_array_equal(decoded, pixels)
    assert parsed[F.AGE_BAND].numpy() == b"60-79" and parsed[F.LABEL].numpy() == 1


def test_balanced_test_split_is_patient_level():
    patients = {f"p{i}": ("site-a", int(i % 6 == 0)) for i in range(3000)}
    patients.update({f"x{i}": ("site-b", 0) for i in range(50)})
    split = splits.assign_splits(patients, ("site-b",), seed=1)
    test = [p for p, s in split.items() if s == F.TEST]
    labels = collections.Counter(patients[p][1] for p in test)
    assert labels[0] == labels[1] == round(0.2 * 500)
    assert all(split[f"x{i}"] == F.EXTERNAL for i in range(50))
    rest = [s for p, s in split.items() if s in (F.TRAIN, F.VALIDATION)]
    assert 0.15 < rest.count(F.VALIDATION) / len(rest) < 0.25
    assert split == splits.assign_splits(patients, ("site-b",), seed=1)
