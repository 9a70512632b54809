"""Patient-level splits, privacy of patient ids and the tf.Example encoding."""
import numpy as np
import pytest
import tensorflow as tf

from cardio import features as F
from cardio.data import records, splits
from cardio.imaging import files


def test_splits_are_deterministic_patient_level_and_keep_the_external_site_out():
    patients = {f"p{i}": {"site-b" if i % 5 == 0 else "site-a"} for i in range(3000)}
    split = splits.assign_splits(patients, ("site-b",), seed=7)
    assert split == splits.assign_splits(dict(reversed(patients.items())), ("site-b",), seed=7)
    assert {p for p, s in split.items() if s == F.EXTERNAL} == {
        p for p, sites in patients.items() if "site-b" in sites}
    internal = [p for p in split if split[p] != F.EXTERNAL]
    test = sum(split[p] == F.TEST for p in internal) / len(internal)
    assert 0.17 < test < 0.23
    rest = [p for p in internal if split[p] != F.TEST]
    assert 0.17 < sum(split[p] == F.VALIDATION for p in rest) / len(rest) < 0.23
    assert splits.assign_splits(patients, ("site-b",), seed=8) != split


def test_adding_patients_moves_no_one_between_splits():
    """A new weekly span adds patients; everyone already assigned keeps their split."""
    rng = np.random.default_rng(3)
    first = {f"p{i}": {"site-a"} for i in range(1000)}
    both = dict(first, **{f"n{i}": {str(rng.choice(["site-a", "site-b"]))} for i in range(300)})
    before = splits.assign_splits(first, ("site-b",), seed=0)
    after = splits.assign_splits(both, ("site-b",), seed=0)
    assert {p: after[p] for p in before} == before
    assert F.TEST in before.values() and F.EXTERNAL in after.values()


def test_a_patient_seen_at_an_internal_and_the_external_site_is_external():
    """One split per patient: any external image makes the patient external, so none of their
    images (internal ones included) can reach training."""
    patients = {f"p{i}": {"site-a"} for i in range(200)}
    trained = next(p for p, s in splits.assign_splits(patients, ("site-b",)).items()
                   if s == F.TRAIN)
    patients[trained] = {"site-a", "site-b"}
    assert splits.assign_splits(patients, ("site-b",))[trained] == F.EXTERNAL


def test_patient_and_image_ids_are_salted_hashes():
    h = records.hash_patient_id("12345", "salt-1")
    assert h == records.hash_patient_id("12345", "salt-1")
    assert h != records.hash_patient_id("12345", "salt-2")
    assert "12345" not in h
    with pytest.raises(ValueError, match="salt"):
        records.hash_patient_id("12345", "")
    image = records.hash_image_id("MRN0012345_chest", "salt-1")
    assert "12345" not in image and image != records.hash_patient_id("MRN0012345_chest", "salt-1")
    with pytest.raises(ValueError, match="salt"):
        records.hash_image_id("x", "")


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
