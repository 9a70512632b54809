"""An anomalous span (an unknown site, a label outside {0, 1}) stops the run: nothing trains."""
import os

import numpy as np
import pytest
import tensorflow as tf

from cardio import features as F, schemas
from cardio.data import records
from cardio.imaging import files
from cardio.pipeline import configs, local_runner, outputs


def _write_span(root, bad_site=False, bad_label=False, span=1):
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    png = files.encode_png((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    for split in F.SPLITS:
        os.makedirs(root / f"span-{span}" / split)
        with tf.io.TFRecordWriter(str(root / f"span-{span}" / split / "data.tfrecord.gz"),
                                  options) as w:
            for i in range(8):
                site = "site-b" if split == F.EXTERNAL else "site-a"
                if bad_site and split == F.TRAIN and i == 0:
                    site = "site-z"
                label = 7 if bad_label and split == F.VALIDATION and i == 0 else i % 2
                w.write(records.to_example(records.Record(
                    image_png=png, label=label, image_id=f"{split}{i}", patient_id=f"p{split}{i}",
                    site=site, sex="F", age=50)).SerializeToString())


@pytest.mark.parametrize("problem", ["bad_site", "bad_label"])
def test_anomalous_span_trains_nothing(tmp_path, problem):
    data = tmp_path / "data"
    # A clean older span and an anomalous newest one: the run reads the newest span.
    _write_span(data, span=1)
    _write_span(data, span=2, **{problem: True})
    config = configs.demo_config("random")
    with pytest.raises(Exception, match="nothing will be trained") as raised:
        local_runner.run(config, str(data), str(tmp_path / "root"), str(tmp_path / "serving"))
    assert ("site" if problem == "bad_site" else "label") in str(raised.value)
    store = outputs.open_store(local_runner.metadata_path(str(tmp_path / "root")))
    cell = config.grid[0].name
    assert outputs.node_executions(store, config.pipeline_name, "ExampleValidator")
    assert not outputs.node_executions(store, config.pipeline_name, f"Trainer.{cell}")
    assert not os.path.exists(tmp_path / "serving")


def test_site_domain_comes_from_configuration(tmp_path):
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    path = schemas.render(("hospital-x", "hospital-y"), str(tmp_path / "s" / "schema.pbtxt"))
    schema = text_format.Parse(open(path).read(), schema_pb2.Schema())
    domain = next(d for d in schema.string_domain if d.name == "site")
    assert list(domain.value) == ["hospital-x", "hospital-y"]


def test_span_range_config():
    from cardio.pipeline.pipeline import span_range_config

    assert span_range_config(None) is None
    static = span_range_config((3, 5)).static_range
    assert (static.start_span_number, static.end_span_number) == (3, 5)
