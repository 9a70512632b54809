"""TFDV validates raw spans with the schema, and the crop stage's output with the cropped schema."""
import numpy as np
import tensorflow as tf
import tensorflow_data_validation as tfdv

from cardio import schemas
from cardio.components import lung_crop
from cardio.data import records
from cardio.imaging import crop, files


def _examples(cropped: bool, bad_box: bool = False):
    png = files.encode_png((np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8))
    out = []
    for i in range(6):
        example = records.to_example(records.Record(png, i % 2, f"i{i}", f"p{i}", "site-a", "F", 40))
        if cropped:
            flags = tf.constant([False, i == 0, False, False])
            box = tf.constant([0.1, 0.1, 1.5 if bad_box else 0.9, 0.9])
            example = lung_crop.crop_example(
                example, tf.io.encode_png(tf.zeros([8, 8, 1], tf.uint16)).numpy(), box, flags)
        out.append(example)
    return out


def _anomalies(examples, tmp_path, cropped=False):
    path = str(tmp_path / "examples.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for example in examples:
            writer.write(example.SerializeToString())
    stats = tfdv.generate_statistics_from_tfrecord(path)
    schema = tfdv.load_schema_text(schemas.render(("site-a", "site-b"), str(tmp_path / "s.pbtxt"),
                                                  cropped=cropped))
    return tfdv.validate_statistics(stats, schema).anomaly_info


def test_raw_examples_validate_without_crop_features(tmp_path):
    assert not _anomalies(_examples(cropped=False), tmp_path)


def test_cropped_examples_validate_with_the_cropped_schema(tmp_path):
    assert not _anomalies(_examples(cropped=True), tmp_path, cropped=True)
    assert set(crop.QC_FLAGS) >= {"one_lung"}


def test_a_box_outside_the_image_is_an_anomaly(tmp_path):
    assert "crop_box" in _anomalies(_examples(cropped=True, bad_box=True), tmp_path, cropped=True)


def test_raw_examples_lack_the_crop_features_the_cropped_schema_requires(tmp_path):
    assert "crop_box" in _anomalies(_examples(cropped=False), tmp_path, cropped=True)
