"""Patient-level splits, privacy of patient ids and the tf.Example encoding."""
import collections

import numpy as np
import pytest
import tensorflow as tf

from cxr import convert, features as F, records, splits


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


def test_generic_csv_quarantines_bad_rows_with_reasons(tmp_path):
    good = records.encode_png(np.full((32, 32), 200, np.uint8))
    (tmp_path / "good.png").write_bytes(good)
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "labels.csv").write_text(
        "path,label,patient_id,sex,age,site\n"
        "good.png,1,P1,f,70,site-a\n"
        "truncated.png,0,P2,M,50,site-a\n"
        "missing.png,0,P3,M,50,site-a\n"
        "good.png,maybe,P4,M,50,site-a\n")
    quarantine = convert.Quarantine()
    rows = list(convert.generic_csv_records(str(tmp_path / "labels.csv"), str(tmp_path), "s",
                                            quarantine))
    assert [r.sex for r in rows] == ["F"]
    reasons = [reason.split(":")[0] for _, reason in quarantine.entries]
    assert reasons == ["unreadable image", "missing file", "bad label"]
    assert all("labels.csv:" in source for source, _ in quarantine.entries)
    with pytest.raises(convert.QuarantineLimitExceeded, match="3 of 4"):
        quarantine.check(total=4, limit=0.5)
    quarantine.check(total=100, limit=0.05)
