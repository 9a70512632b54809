"""Drift between spans: TFDV's comparators on this project's statistics, and the gate's lookup
of the previous span's statistics in MLMD."""
import os

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from cardio import schemas
from cardio.components import drift_gate
from cardio.data import records
from cardio.imaging.files import encode_png

N = 200


def _span_stats(root, name, bit_depth_b=16, positives_per_20=3):
    """A span as StatisticsGen sees it: 200 examples, two sites, 15% (or more) cardiomegaly;
    site-b's export is 16-bit unless told otherwise. Statistics computed by TFDV with the
    pipeline's schema, written where StatisticsGen writes them."""
    import tensorflow_data_validation as tfdv

    images = {16: encode_png(np.full((40, 32), 30000, np.uint16)),
              8: encode_png(np.full((40, 32), 120, np.uint8))}
    path = str(root / f"{name}.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for i in range(N):
            site = "site-a" if i % 2 else "site-b"
            record = records.Record(
                image_png=images[16 if site == "site-a" else bit_depth_b],
                label=int(i % 20 < positives_per_20), image_id=f"{name}-{i}", patient_id=str(i),
                site=site, sex="FM"[(i // 2) % 2], age=30 + (i * 7) % 60)
            writer.write(records.to_example(record).SerializeToString())
    schema = _schema()
    stats = tfdv.generate_statistics_from_tfrecord(
        path, stats_options=tfdv.StatsOptions(schema=schema), output_path=None)
    split_dir = root / name / "Split-train"
    split_dir.mkdir(parents=True)
    (split_dir / drift_gate.STATS_FILE).write_bytes(stats.SerializeToString())
    return str(root / name)


def _schema():
    return text_format.Parse(open(schemas.SCHEMA_FILE).read(), schema_pb2.Schema())


@pytest.fixture(scope="module")
def spans(tmp_path_factory):
    root = tmp_path_factory.mktemp("spans")
    return {"previous": _span_stats(root, "previous"),
            "stable": _span_stats(root, "stable"),
            "eight_bit": _span_stats(root, "eight_bit", bit_depth_b=8),
            "prevalence": _span_stats(root, "prevalence", positives_per_20=6),
            "root": root}


def _compare(spans, name):
    out = str(spans["root"] / f"drift-{name}")
    problems = drift_gate.compare_spans(spans[name], spans["previous"], out, _schema(), 0.1, 0.1)
    print(f"{name}: {problems}")
    return problems


def test_a_stable_span_shows_no_drift(spans):
    assert _compare(spans, "stable") == []


def test_a_site_exporting_8_bit_instead_of_16_is_drift_in_bit_depth(spans):
    problems = _compare(spans, "eight_bit")
    assert len(problems) == 1 and problems[0].startswith("train: feature 'bit_depth'")
    assert "0.5" in problems[0]   # half of the images (site-b's) moved from 16 to 8 bits


def test_doubled_label_prevalence_is_drift_in_label(spans):
    problems = _compare(spans, "prevalence")
    assert len(problems) == 1 and problems[0].startswith("train: feature 'label'")
    assert "0.15" in problems[0]   # 15% -> 30% cardiomegaly


def test_the_gate_finds_the_newest_earlier_span_in_mlmd(tmp_path):
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(tmp_path / "mlmd.sqlite")
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    store = metadata_store.MetadataStore(config)
    kind = metadata_store_pb2.ArtifactType(name="ExampleStatistics")
    kind.properties["span"] = metadata_store_pb2.INT
    type_id = store.put_artifact_type(kind)

    def put(span, uri, state=metadata_store_pb2.Artifact.LIVE):
        artifact = metadata_store_pb2.Artifact(type_id=type_id, uri=uri, state=state)
        artifact.properties["span"].int_value = span
        return store.put_artifacts([artifact])[0]

    put(1, "/stats/1")
    two = put(2, "/stats/2")
    put(2, "/stats/2-deleted", metadata_store_pb2.Artifact.DELETED)
    put(3, "/stats/3")
    found = drift_gate.find_previous_statistics(store, "/stats/3", 3)
    assert (found.id, found.uri) == (two, "/stats/2")
    assert drift_gate.find_previous_statistics(store, "/stats/1", 1) is None
