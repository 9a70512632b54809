"""Drift between spans: TFDV's comparators on this project's statistics, and the gate's lookup
of the previous span's statistics in MLMD."""
import json
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
    """A span as StatisticsGen sees it: 200 tf.Examples as the converters write them, two sites,
    15% (or more) cardiomegaly; site-b's export is 16-bit unless told otherwise. Statistics by
    TFDV with the pipeline's schema (in process: the pipeline test below runs the Beam path),
    written where StatisticsGen writes them."""
    import pandas as pd
    import tensorflow_data_validation as tfdv

    images = {16: encode_png(np.full((40, 32), 30000, np.uint16)),
              8: encode_png(np.full((40, 32), 120, np.uint8))}
    rows = []
    for i in range(N):
        site = "site-a" if i % 2 else "site-b"
        example = records.to_example(records.Record(
            image_png=images[16 if site == "site-a" else bit_depth_b],
            label=int(i % 20 < positives_per_20), image_id=f"{name}-{i}", patient_id=str(i),
            site=site, sex="FM"[(i // 2) % 2], age=30 + (i * 7) % 60))
        feature = example.features.feature
        rows.append({key: (feature[key].int64_list.value or feature[key].bytes_list.value)[0]
                     for key in drift_gate.CATEGORICAL + drift_gate.NUMERIC})
    stats = tfdv.generate_statistics_from_dataframe(
        pd.DataFrame(rows), stats_options=tfdv.StatsOptions(schema=_schema()))
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


def test_an_evaluated_split_with_too_few_positives_is_named_from_the_statistics(spans):
    """The gate's split check reads the label counts StatisticsGen wrote (200 images, 30
    cardiomegaly), so it stops a Kubeflow run too, before any Trainer."""
    stats = drift_gate._split_stats(spans["stable"])
    assert drift_gate.label_counts(stats["train"]) == (30, N)
    assert drift_gate.too_few_positives(spans["stable"], ["train"], 30) == []
    assert drift_gate.too_few_positives(spans["stable"], ["train", "test"], 31) == [
        "train: 30 cardiomegaly image(s) of 200, fewer than min_split_positives=31",
        "test: 0 cardiomegaly image(s) of 0, fewer than min_split_positives=31"]


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


def test_the_gate_finds_the_newest_earlier_span_it_accepted_in_mlmd(tmp_path):
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(tmp_path / "mlmd.sqlite")
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    store = metadata_store.MetadataStore(config)
    type_id = store.put_artifact_type(metadata_store_pb2.ArtifactType(name="ExampleAnomalies"))

    def put(span, pipeline="p", state=metadata_store_pb2.Artifact.LIVE, key=drift_gate.SPAN):
        artifact = metadata_store_pb2.Artifact(type_id=type_id, uri=f"/gate/{span}", state=state)
        artifact.custom_properties[drift_gate.PIPELINE].string_value = pipeline
        artifact.custom_properties[key].int_value = span
        artifact.custom_properties[drift_gate.STATISTICS_URI].string_value = f"/stats/{span}"
        return store.put_artifacts([artifact])[0]

    put(1)
    two = put(2)
    put(2, state=metadata_store_pb2.Artifact.DELETED)
    put(2, pipeline="other")
    put(3)
    store.put_artifacts([metadata_store_pb2.Artifact(type_id=type_id, uri="/validator")])
    assert drift_gate.find_previous(store, "p", 3) == {"span": 2, "id": two,
                                                       "statistics_uri": "/stats/2"}
    assert drift_gate.find_previous(store, "p", 1) is None
    # As KFP's launcher records it (a double, under TFX's `custom:` name: ExampleAnomalies has a
    # `span` property of its own).
    artifact = metadata_store_pb2.Artifact(type_id=type_id, uri="/gate/kfp",
                                           state=metadata_store_pb2.Artifact.LIVE)
    artifact.custom_properties[drift_gate.PIPELINE].string_value = "p"
    artifact.custom_properties["custom:span"].double_value = 4.0
    artifact.custom_properties[drift_gate.STATISTICS_URI].string_value = "minio://b/stats/4"
    kfp = store.put_artifacts([artifact])[0]
    assert drift_gate.find_previous(store, "p", 5) == {"span": 4, "id": kfp,
                                                       "statistics_uri": "minio://b/stats/4"}


def _write_span(data, span, bit_depth_b):
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    images = {16: encode_png(np.full((40, 32), 30000, np.uint16)),
              8: encode_png(np.full((40, 32), 120, np.uint8))}
    for split in ("train", "external"):
        os.makedirs(data / f"span-{span}" / split)
        with tf.io.TFRecordWriter(str(data / f"span-{span}" / split / "d.tfrecord.gz"),
                                  options) as writer:
            for i in range(40):
                site = "site-b" if split == "external" else "site-a"
                writer.write(records.to_example(records.Record(
                    image_png=images[bit_depth_b if site == "site-b" else 16], label=i % 2,
                    image_id=f"{span}-{i}", patient_id=f"{split}{i}", site=site, sex="FM"[i % 2],
                    age=50)).SerializeToString())


def test_the_gate_stops_a_run_whose_span_drifted_from_the_previous_one(tmp_path):
    """The real components in a local TFX run: span 1 passes (nothing to compare), span 2, where
    site-b exports 8-bit instead of 16-bit, fails at DriftGate with the anomaly recorded."""
    from tfx import v1 as tfx

    from cardio.components import baseline
    from cardio.pipeline import configs, outputs
    from cardio.pipeline.pipeline import span_range_config

    data, root = tmp_path / "data", tmp_path / "root"
    metadata = tfx.orchestration.metadata.sqlite_metadata_connection_config(
        str(tmp_path / "mlmd.sqlite"))

    def run():
        example_gen = tfx.components.ImportExampleGen(
            input_base=str(data), input_config=tfx.proto.Input(splits=[
                tfx.proto.Input.Split(name=s, pattern=f"span-{{SPAN}}/{s}/*")
                for s in ("train", "external")]), range_config=span_range_config(None))
        schema_gen = tfx.components.ImportSchemaGen(schema_file=schemas.SCHEMA_FILE)
        statistics_gen = tfx.components.StatisticsGen(
            examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"])
        lookup = drift_gate.PreviousStatisticsLookup(
            examples=example_gen.outputs["examples"], pipeline_name="drift",
            metadata_connection=baseline.connection_parameter(metadata))
        gate = drift_gate.DriftGate(
            statistics=statistics_gen.outputs["statistics"], pipeline_name="drift",
            previous_statistics=lookup.outputs["previous"], schema=schema_gen.outputs["schema"],
            max_categorical_linf=0.1, max_numeric_jsd=0.1)
        tfx.orchestration.LocalDagRunner().run(tfx.dsl.Pipeline(
            pipeline_name="drift", pipeline_root=str(root),
            components=[example_gen, schema_gen, statistics_gen, lookup, gate],
            metadata_connection_config=metadata,
            beam_pipeline_args=list(configs.PipelineConfig().beam_pipeline_args)))

    _write_span(data, 1, bit_depth_b=16)
    run()
    _write_span(data, 2, bit_depth_b=8)
    with pytest.raises(drift_gate.DriftFound, match=r"external: feature 'bit_depth'") as raised:
        run()
    assert "train:" not in str(raised.value)   # site-a's 16-bit export did not change
    store = outputs.open_store(str(tmp_path / "mlmd.sqlite"))
    assert len(outputs.node_executions(store, "drift", "DriftGate")) == 2
    # The second run's lookup handed the gate span 1's statistics, the first gate's stamped input.
    first_statistics = outputs.output_artifacts(
        store, outputs.node_executions(store, "drift", "StatisticsGen")[0].id, "statistics")[0]
    pointer = outputs.latest_output(store, "drift", "PreviousStatisticsLookup", "previous")
    with open(os.path.join(pointer.uri, drift_gate.POINTER_FILE)) as f:
        assert json.load(f)["statistics_uri"] == first_statistics.uri
