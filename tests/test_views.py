"""`views` end to end on real NIH radiographs (PA and AP): the CSV converter keeps the configured
views, the schema's view domain is the configuration's, and the slices and the fairness review
see each view."""
import csv
import functools
import glob

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv
from conftest import shared_path

from cardio import features as F, schemas
from cardio.components import evaluator
from cardio.data import convert
from cardio.evaluation import comparison as C
from cardio.pipeline import config_file, configs, preflight

SALT = "views-test"


@pytest.fixture(scope="module")
def nih_rows(tmp_path_factory):
    """Eight PA and eight AP rows of the NIH set, as its labels.csv lists them."""
    labels = shared_path("data", "nih-cxr14-128", "labels.csv")
    with open(labels, newline="") as f:
        rows = list(csv.DictReader(f))
    chosen = [r for r in rows if r["view"] == "PA"][:8] + [r for r in rows if r["view"] == "AP"][:8]
    out = tmp_path_factory.mktemp("nih") / "export.csv"
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(chosen)
    return out, labels.parent / "images"


def _convert(nih_rows, tmp_path, views):
    export, images = nih_rows
    selection = convert.csv_selection(str(export), views=views)
    summary = convert.convert(selection, functools.partial(convert.file_loader, str(images)),
                              str(tmp_path / "data"), 1, (), salt=SALT, workers=1)
    examples = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(
        glob.glob(str(tmp_path / "data" / "span-1" / "*" / "*.tfrecord.gz")),
        compression_type="GZIP")]
    return summary, examples


def _views(examples):
    return sorted(e.features.feature[F.VIEW].bytes_list.value[0].decode() for e in examples)


def test_the_converter_keeps_the_configured_views(nih_rows, tmp_path):
    summary, examples = _convert(nih_rows, tmp_path / "pa", views=("PA",))
    assert _views(examples) == ["PA"] * 8 and summary["excluded"] == {"not PA projection": 8}
    summary, examples = _convert(nih_rows, tmp_path / "both", views=("PA", "AP"))
    assert _views(examples) == ["AP"] * 8 + ["PA"] * 8 and summary["excluded"] == {}


def test_the_schema_domain_and_the_preflight_follow_views(nih_rows, tmp_path):
    _, examples = _convert(nih_rows, tmp_path, views=("PA", "AP"))
    path = str(tmp_path / "examples.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for example in examples:
            writer.write(example.SerializeToString())
    stats = tfdv.generate_statistics_from_tfrecord(path)

    def view_anomaly(views):
        schema = tfdv.load_schema_text(schemas.render(("nih",), str(tmp_path / "s.pbtxt"),
                                                      views=views))
        return F.VIEW in tfdv.validate_statistics(stats, schema).anomaly_info

    assert view_anomaly(("PA",)) and not view_anomaly(("PA", "AP"))
    nih = config_file.parse({"views": ["PA", "AP"], "min_split_positives": 0}, "inline",
                            base=config_file.load("nih").config).config
    assert preflight.check(nih, str(tmp_path / "data"))[1][F.VIEW] == {"PA": 8, "AP": 8}
    with pytest.raises(preflight.SpanError, match=r"view\(s\) AP"):
        preflight.check(configs.PipelineConfig(internal_sites=("nih",), external_site=None,
                                               min_split_positives=0), str(tmp_path / "data"))


def test_slices_and_the_fairness_review_see_each_view(nih_rows, tmp_path):
    _, examples = _convert(nih_rows, tmp_path, views=("PA", "AP"))
    assert [F.SITE, F.VIEW] in [list(s.feature_keys) for s in evaluator.eval_config(
        config_file.load("nih").config, confidence_intervals=False).slicing_specs]
    views = np.array(_views(examples))
    labels = np.arange(len(views)) % 2
    cases = {"split": np.full(len(views), C.TEST), F.SITE: np.full(len(views), "nih"),
             F.SEX: np.full(len(views), "F"), F.AGE_BAND: np.full(len(views), "40-59"),
             F.VIEW: views, F.LABEL: labels}
    rows = C.fairness(cases, labels * 0.8 + 0.1, 0.5, ("nih",), min_per_class=1)
    assert {r["slice"] for r in rows} >= {"site=nih, view=AP", "site=nih, view=PA"}
