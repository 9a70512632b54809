"""The pipeline configuration file: shipped files, errors naming the key, generic fields, the span
check before anything runs, and the same file compiled for Kubeflow."""
import dataclasses
import json
import os

import pytest
import tensorflow as tf
from click.testing import CliRunner
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from cardio import features as F
from cardio.cli import main
from cardio.components import evaluator
from cardio.components.gate import GATE_PROFILES
from cardio.data import records
from cardio.imaging import SHIPPED_UNET_DIR
from cardio.pipeline import config_file, configs, preflight


def _parse(yaml_text, tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml_text)
    return config_file.load(str(path))


def test_shipped_files_are_the_study_the_demo_and_the_nih_set():
    study = config_file.load("study").config
    assert study.grid == configs.PipelineConfig().grid and len(study.grid) == 10
    assert study.gate == GATE_PROFILES["study"]
    assert study.segmenter_uri == SHIPPED_UNET_DIR          # the study's recipe crops
    assert (study.internal_sites, study.external_site) == (("padchest",), "openi")
    demo, coded = config_file.load("demo").config, configs.demo_config("random")
    for field in ("grid", "gate", "image_size", "crop_size", "epochs", "internal_sites",
                  "external_site", "segmenter_uri", "weights", "pipeline_name",
                  "min_validation_positives", "min_split_positives", "ci_method"):
        assert getattr(demo, field) == getattr(coded, field), field
    nih = config_file.load("nih").config
    assert nih.sites == ("nih",) and nih.external_site is None
    assert F.EXTERNAL not in nih.splits and nih.eval_splits == [F.TEST]


@pytest.mark.parametrize("text, names", [
    ("epoch: 3\n", ["epoch", "known keys", "epochs"]),
    ("epochs: ten\n", ["key epochs", "'ten'"]),
    ("gate: strict\n", ["key gate"]),
    ("gate: {name: g, internal_auc_min: 0.8}\n", ["key gate"]),
    ("grid: {backbones: [resnet50], weightings: ['75-25']}\n", ["key grid", "resnet50"]),
    ("grid: {backbones: [mobilenet], weightings: ['60-40']}\n", ["key grid", "60-40"]),
    ("internal_sites: [a]\nexternal_site: a\n", ["external_site", "'a'"]),
    ("spans: [3, 1]\n", ["spans"]),
    ("batching: {max_batch_size: 8, timeout: 1}\n", ["key batching", "timeout"]),
    ("- a list\n", ["expected a mapping"]),
    ("learning_rate: -1\n", ["key learning_rate", "-1"]),
    ("positive_copies: -3\n", ["key positive_copies", "-3"]),
    ("steps_per_epoch: 0\n", ["key steps_per_epoch", "0"]),
    ("drift_max_categorical_linf: -0.1\n", ["key drift_max_categorical_linf"]),
    ("min_split_positives: -1\n", ["key min_split_positives"]),
    ("gate: {name: g, external_auc_min: 1.5, internal_auc_min: 0.6, sensitivity_min: 0.4}\n",
     ["key gate.external_auc_min", "1.5"]),
    ("gate: {name: g, external_auc_min: 0.5, internal_auc_min: 0.6, sensitivity_min: 0.4,\n"
     "       auc_regression_tolerence: 0.1}\n", ["key gate", "auc_regression_tolerence"]),
    ("batching: {max_batch_size: 0}\n", ["key batching.max_batch_size"]),
    ("epochs: [\n", ["not valid YAML"]),
])
def test_errors_name_the_file_and_the_key(tmp_path, text, names):
    with pytest.raises(config_file.ConfigError) as error:
        _parse(text, tmp_path)
    assert "pipeline.yaml" in str(error.value)
    for name in names:
        assert name in str(error.value)


def test_every_numeric_key_has_a_range():
    """Every int or float field of the configuration, nested ones included, is bounded in the
    schema: a field added without a range fails here."""
    import typing

    def numeric(schema, path=""):
        if "anyOf" in schema:
            for option in schema["anyOf"]:
                yield from numeric(option, path)
        elif schema.get("type") in ("integer", "number"):
            yield path, schema
        for name, sub in schema.get("properties", {}).items():
            yield from numeric(sub, f"{path}.{name}".lstrip("."))

    found = dict(numeric(config_file.json_schema()))
    expected = {f.name for f in dataclasses.fields(configs.PipelineConfig)
                if typing.get_type_hints(configs.PipelineConfig)[f.name] in (
                    int, float, int | None, float | None)}
    assert expected <= set(found)
    assert {"gate.external_auc_min", "batching.max_batch_size"} <= set(found)
    unbounded = [k for k, v in found.items()
                 if not {"minimum", "exclusiveMinimum"} & set(v)]
    assert not unbounded


def test_every_config_field_is_a_key_with_no_loader_change(tmp_path):
    """Fields map by name; a field added to the dataclass is a valid key at once."""
    @dataclasses.dataclass(frozen=True)
    class Extended(configs.PipelineConfig):
        drift_threshold: float = 0.1

    document = {"drift_threshold": 0.25, "epochs": 2, "learning_rate": 1,
                "internal_sites": ["x", "y"], "external_site": None,
                "batching": {"max_batch_size": 4, "allowed_batch_sizes": [2, 4]},
                "gate": {"name": "inline", "external_auc_min": 0.5, "internal_auc_min": 0.6,
                         "sensitivity_min": 0.4}}
    parsed = config_file.parse(document, "inline", base=Extended()).config
    assert isinstance(parsed, Extended) and parsed.drift_threshold == 0.25
    assert parsed.epochs == 2 and parsed.learning_rate == 1.0
    assert parsed.internal_sites == ("x", "y") and parsed.sites == ("x", "y")
    assert parsed.batching.allowed_batch_sizes == (2, 4)
    assert parsed.gate.auc_regression_tolerance == GATE_PROFILES["study"].auc_regression_tolerance
    with pytest.raises(config_file.ConfigError, match="drift_threshold"):
        config_file.parse({"drift_threshold": "high"}, "inline", base=Extended())


def test_without_an_external_site_the_gate_judges_internal_slices_only():
    config = config_file.load("nih").config
    eval_config = evaluator.eval_config(config, confidence_intervals=False)
    gated_sites = {spec.feature_values[F.SITE]
                   for metrics in eval_config.metrics_specs for metric in metrics.metrics
                   for threshold in metric.per_slice_thresholds
                   for spec in threshold.slicing_specs}
    assert gated_sites == {"nih"}
    assert "NO EXTERNAL SITE" in evaluator.describe_gate(config.gate, config.external_site)


def test_nih_wingspan_gates_on_the_wingspan_slice_and_never_trains_on_it():
    """The shipped `nih-wingspan`: NIH trains, Wingspan is the external split and slice."""
    config = config_file.load("nih-wingspan").config
    nih = config_file.load("nih").config
    assert (config.internal_sites, config.external_site) == (("nih",), "wingspan")
    assert config.sites == ("nih", "wingspan") and F.EXTERNAL in config.splits
    assert F.EXTERNAL in config.eval_splits
    for field in ("grid", "image_size", "crop_size", "epochs", "weights", "segmenter_uri",
                  "views", "target_sensitivity"):
        assert getattr(config, field) == getattr(nih, field), field
    eval_config = evaluator.eval_config(config, confidence_intervals=False)
    gated_sites = {spec.feature_values[F.SITE]
                   for metrics in eval_config.metrics_specs for metric in metrics.metrics
                   for threshold in metric.per_slice_thresholds
                   for spec in threshold.slicing_specs}
    assert gated_sites == {"nih", "wingspan"}


def _write_span(data_root, span, sites, view="PA", split=F.TEST, labels=None):
    directory = os.path.join(data_root, f"span-{span}", split)
    os.makedirs(directory)
    with tf.io.TFRecordWriter(os.path.join(directory, "data.tfrecord.gz"), "GZIP") as writer:
        for i, site in enumerate(sites):
            writer.write(records.to_example(records.Record(
                image_png=b"", label=labels[i] if labels else i % 2, image_id=f"img{i}",
                patient_id=f"p{i}", site=site, view=view)).SerializeToString())


def test_an_evaluated_split_with_too_few_positives_stops_the_run_naming_it(tmp_path):
    """Checked before anything runs; the counts of the selected spans add up."""
    config = dataclasses.replace(config_file.load("nih").config, min_split_positives=3)
    _write_span(str(tmp_path), 1, ["nih"] * 6, split=F.VALIDATION, labels=[1, 1, 1, 0, 0, 0])
    _write_span(str(tmp_path), 1, ["nih"] * 5, split=F.TEST, labels=[1, 1, 0, 0, 0])
    with pytest.raises(preflight.SpanError, match=r"the test split has 2 cardiomegaly image\(s\) "
                       r"\(and 3 normal\), fewer than min_split_positives=3"):
        preflight.check(config, str(tmp_path))
    _write_span(str(tmp_path), 2, ["nih"] * 2, split=F.TEST, labels=[1, 0])
    found = preflight.check(dataclasses.replace(config, spans=(1, 2)), str(tmp_path))
    assert found[2]["splits"][F.TEST] == {"normal": 1, "cardiomegaly": 1}
    # The validation split is judged too; no external split without an external site.
    with pytest.raises(preflight.SpanError, match="the validation split has 3"):
        preflight.check(dataclasses.replace(config, spans=(1, 2), min_split_positives=4),
                        str(tmp_path))


def test_a_span_with_unconfigured_sites_is_refused_naming_them(tmp_path):
    config = config_file.load("demo").config
    _write_span(str(tmp_path), 1, ["site-a", "site-b"])
    _write_span(str(tmp_path), 2, ["site-a", "padchest", "openi"])
    config = dataclasses.replace(config, min_split_positives=0)
    assert preflight.check(dataclasses.replace(config, spans=(1, 1)), str(tmp_path)) == {
        1: {"site": {"site-a": 1, "site-b": 1}, "view": {"PA": 2},
            "splits": {F.TRAIN: {"normal": 0, "cardiomegaly": 0},
                       F.VALIDATION: {"normal": 0, "cardiomegaly": 0},
                       F.TEST: {"normal": 1, "cardiomegaly": 1},
                       F.EXTERNAL: {"normal": 0, "cardiomegaly": 0}}}}
    with pytest.raises(preflight.SpanError, match=r"span-2: site\(s\) openi, padchest are not"):
        preflight.check(config, str(tmp_path))      # the newest span
    _write_span(str(tmp_path), 3, ["site-a"], view="AP")
    with pytest.raises(preflight.SpanError, match=r"view\(s\) AP"):
        preflight.check(dataclasses.replace(config, spans=(3, 3)), str(tmp_path))


def test_pipeline_run_refuses_the_span_before_anything_runs(tmp_path):
    _write_span(str(tmp_path / "data"), 1, ["nih", "internal"])
    small = tmp_path / "small"
    _write_span(str(small), 1, ["nih"] * 4, split=F.VALIDATION, labels=[1, 0, 0, 0])
    result = CliRunner().invoke(main, ["pipeline", "run", "--config", "nih", "--data-root",
                                       str(small), "--workdir", str(tmp_path / "run")])
    assert result.exit_code == 1, result.output
    assert "the validation split has 1 cardiomegaly image(s)" in result.output
    assert not (tmp_path / "run").exists()
    result = CliRunner().invoke(main, ["pipeline", "run", "--config", "nih", "--data-root",
                                       str(tmp_path / "data"), "--workdir", str(tmp_path / "run")])
    assert result.exit_code == 1, result.output
    assert "site(s) internal are not in the configuration" in result.output
    assert not (tmp_path / "run").exists()           # no pipeline root, no MLMD: nothing ran
    bad = tmp_path / "bad.yaml"
    bad.write_text("internal_sites: []\n")
    result = CliRunner().invoke(main, ["pipeline", "run", "--config", str(bad)])
    assert result.exit_code == 2 and "key internal_sites" in result.output


def test_compile_takes_the_same_file(tmp_path):
    output = tmp_path / "nih.json"
    # The file's recipe, grid and sites; the places a cluster needs given on the command line
    # (the file's local ones are refused: test_kubeflow_compile.py).
    result = CliRunner().invoke(main, ["pipeline", "compile", "--config", "nih", "--output",
                                       str(output), "--image-tag", "1.0",
                                       "--data-root", "gs://b/data", "--segmenter-uri",
                                       "gs://b/unet", "--weights", "image"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["grid"] == ["cardio-mobilenet-025-75-25", "cardio-mobilenet-025-50-50"]
    schema = text_format.Parse((tmp_path / "schema.pbtxt").read_text(), schema_pb2.Schema())
    assert [list(d.value) for d in schema.string_domain if d.name == F.SITE] == [["nih"]]
    job = output.read_text()      # the input config is JSON inside the job's JSON
    assert "span-{SPAN}/test/*" in job and "span-{SPAN}/external/*" not in job


def test_the_summary_names_the_weights_file_each_model_starts_from(tmp_path):
    from cardio.pipeline import demo

    nih = config_file.load("nih").config
    assert demo.weights_used(dataclasses.replace(nih, weights="random")) is None
    weights = tmp_path / "mobilenet_2_5_128_tf_no_top.h5"
    weights.write_bytes(b"")
    # A directory in the configuration; the file the Trainer loads in the summary.
    assert demo.weights_used(dataclasses.replace(nih, weights=str(tmp_path))) == str(weights)
    mixed = dataclasses.replace(nih, weights=str(tmp_path), grid=(
        configs.GridCell("mobilenet_025", "75-25"), configs.GridCell("xception", "75-25")))
    assert demo.weights_used(mixed) == {"cardio-mobilenet-025-75-25": str(weights),
                                        "cardio-xception-75-25": None}
    found = {1: {"splits": {s: {"normal": 2, "cardiomegaly": 1} for s in F.SPLITS}},
             2: {"splits": {s: {"normal": 1, "cardiomegaly": 0} for s in F.SPLITS}}}
    assert preflight.split_totals(found)[F.TEST] == {"normal": 3, "cardiomegaly": 1}
