"""Patient-level splits, privacy of patient ids and the tf.Example encoding."""
import collections

import numpy as np
import pytest
import tensorflow as tf

from cardio import features as F
from cardio.data import records, splits
from cardio.imaging import files


def test_splits_are_deterministic_class_balanced_and_keep_the_external_site_out():
    rng = np.random.default_rng(7)
    patients = {f"p{i}": ("site-b" if i % 5 == 0 else "site-a", int(rng.random() < 0.2))
                for i in range(1000)}
    split = splits.assign_splits(patients, ("site-b",), seed=7)
    assert split == splits.assign_splits(dict(reversed(patients.items())), ("site-b",), seed=7)
    assert {p for p, s in split.items() if s == F.EXTERNAL} == {
        p for p, (site, _) in patients.items() if site == "site-b"}
    test = collections.Counter(patients[p][1] for p, s in split.items() if s == F.TEST)
    assert test[0] == test[1] > 0                       # the test set is class-balanced
    internal = [p for p in split if split[p] in (F.TRAIN, F.VALIDATION)]
    validation = sum(split[p] == F.VALIDATION for p in internal) / len(internal)
    assert 0.12 < validation < 0.28


def test_patient_ids_are_salted_hashes():
    h = records.hash_patient_id("12345", "salt-1")
    assert h == records.hash_patient_id("12345", "salt-1")
    assert h != records.hash_patient_id("12345", "salt-2")
    assert "12345" not in h
    with pytest.raises(ValueError, match="salt"):
        records.hash_patient_id("12345", "")


def test_example_round_trip():
    pixels = (np.arange(64 * 48, dtype=np.uint16).reshape(64, 48) * 13)
    record = records.Record(image_png=files.encode_png(pixels), label=1, image_id="x",
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
