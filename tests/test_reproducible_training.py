"""Reproducible training and the exported calibration: two short runs of the same configuration,
span and seed give identical weights, and the export serves exactly the Platt scaling the Trainer
fitted on validation."""
import json

import numpy as np
import pytest
import tensorflow as tf
from tfx.components.trainer.fn_args_utils import FnArgs

from cardio.data import convert
from cardio.trainer import calibration, task

CONFIG = {"backbone": "mobilenet_025", "weights": "random", "image_size": 64, "epochs": 2,
          "batch_size": 4, "steps_per_epoch": 3, "mixed_precision": False,
          "min_validation_positives": 0, "deterministic": True}
FIT = (0.37, -1.25)


def _train(root, run, seed):
    span = root / "data" / "span-1"
    fn_args = FnArgs(train_files=[str(span / "train" / "*")],
                     eval_files=[str(span / "validation" / "*")],
                     serving_model_dir=str(root / run / "model" / "1" / "Format-Serving"),
                     model_run_dir=str(root / run / "model_run" / "1"),
                     custom_config={**CONFIG, "seed": seed})
    model = task.train_and_export(fn_args)
    summary = json.loads((root / run / "model_run" / "1" / "training_summary.json").read_text())
    return {"weights": model.get_weights(), "summary": summary, "model": model,
            "fn_args": fn_args, "export": fn_args.serving_model_dir}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproducible")
    convert.write_synthetic(str(root / "data"), 80, seed=4, size=64, span=1, external_sites=(),
                            workers=1)
    runs = {"a": _train(root, "a", 5), "b": _train(root, "b", 5)}
    # Another seed, and a Trainer whose fit is far from the identity, so that an export which
    # dropped the parameters (identity scaling) would show.
    fit = calibration.calibrate

    def distinct_fit(labels, logits, min_positives):
        _, record = fit(labels, logits, min_positives)
        return calibration.Platt(*FIT), {**record, "a": FIT[0], "b": FIT[1], "refused": []}

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(calibration, "calibrate", distinct_fit)
        runs["other"] = _train(root, "c", 6)
    return runs


def test_same_config_span_and_seed_give_identical_weights(runs):
    a, b, other = runs["a"]["weights"], runs["b"]["weights"], runs["other"]["weights"]
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    # The seed matters: another one gives another model (so the equality above is not vacuous).
    assert any(not np.array_equal(x, y) for x, y in zip(a, other))
    assert runs["a"]["summary"]["history"] == runs["b"]["summary"]["history"]


def _exported_platt(run):
    exported = tf.saved_model.load(run["export"])
    return exported, (float(exported.platt_a.numpy()), float(exported.platt_b.numpy()))


def test_the_export_serves_the_trainers_platt_fit(runs):
    _, served = _exported_platt(runs["other"])
    assert served == pytest.approx(FIT, rel=1e-6)
    assert runs["other"]["summary"]["calibration"]["a"] == FIT[0]
    run = runs["a"]
    fitted = run["summary"]["calibration"]
    # The Trainer's fit, recomputed from the trained model's validation logits.
    config = task.TrainingConfig.from_custom_config(run["fn_args"].custom_config)
    labels, logits = task.predict(run["model"], run["fn_args"].eval_files, config)
    platt, record = calibration.calibrate(labels, logits, config.min_validation_positives)
    assert (fitted["a"], fitted["b"]) == pytest.approx((platt.a, platt.b), rel=1e-6, abs=1e-9)
    assert record["refused"] == fitted["refused"]
    exported, served = _exported_platt(run)
    assert served == pytest.approx((fitted["a"], fitted["b"]), rel=1e-6, abs=1e-7)
    metadata = json.loads(tf.io.gfile.GFile(
        f"{run['export']}/assets.extra/cardio_metadata.json").read())
    assert metadata["calibration"]["a"] == fitted["a"] and metadata["calibration"]["b"] == fitted["b"]
    # Served probability is increasing in the logit.
    assert exported.platt_a.numpy() > 0
    grid = tf.constant(np.linspace(-20, 20, 401), tf.float32)
    served = tf.sigmoid(exported.platt_a * grid + exported.platt_b).numpy()
    assert np.all(np.diff(served) >= 0) and served[-1] > served[0]


def test_an_epoch_does_not_depend_on_how_beam_sharded_and_ordered_the_examples(tmp_path):
    """The same examples, written as ExampleGen might on two runs (other shards, other order),
    give the same deterministic epoch."""
    from cardio.trainer import data

    source = tmp_path / "data"
    convert.write_synthetic(str(source), 24, seed=1, size=64, span=1, external_sites=(), workers=1)
    records = [r.numpy() for r in tf.data.TFRecordDataset(
        sorted(map(str, (source / "span-1").glob("*/*.tfrecord.gz"))), compression_type="GZIP")]
    layouts = {"one": [records], "three": [records[::-1][i::3] for i in range(3)]}
    epochs = {}
    for name, shards in layouts.items():
        for i, shard in enumerate(shards):
            with tf.io.TFRecordWriter(str(tmp_path / f"{name}-{i}.gz"), "GZIP") as writer:
                for record in shard:
                    writer.write(record)
        dataset = data.make_dataset(str(tmp_path / f"{name}-*.gz"), 8, 32, training=True,
                                    deterministic=True, seed=2, repeat=False)
        epochs[name] = [(x.numpy(), y.numpy()) for x, y in dataset]
    assert len(epochs["one"]) == len(epochs["three"])
    for (x1, y1), (x2, y2) in zip(epochs["one"], epochs["three"]):
        np.testing.assert_array_equal(y1, y2)
        np.testing.assert_array_equal(x1, x2)


def _in_wire_order(example: tf.train.Example, keys) -> bytes:
    """`example` serialized with its feature map's entries in the order of `keys`, as a writer in
    another process may emit them (protobuf leaves map order unspecified: Python's differs from
    process to process). Concatenated messages merge, so each entry is a one-key Features."""
    features = b"".join(tf.train.Features(feature={k: example.features.feature[k]})
                        .SerializeToString() for k in keys)
    return b"\x0a" + _varint(len(features)) + features   # Example.features is field 1


def _varint(n: int) -> bytes:
    out = b""
    while True:
        out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            return out


def test_the_epoch_does_not_depend_on_the_byte_order_a_writer_chose(tmp_path):
    """Two pipeline runs' LungCrop wrote the same examples with their feature maps serialized in
    different orders (one process's protobuf, then another's), and the seeded epoch of the
    deterministic pipeline differed. Same examples, different bytes: the same batches."""
    from cardio.data import records
    from cardio.imaging.files import encode_png
    from cardio.trainer import data

    rng = np.random.default_rng(0)
    examples = [records.to_example(records.Record(
        image_png=encode_png(rng.integers(0, 255, (32, 32), dtype=np.uint8)), label=i % 3 == 0,
        image_id=f"img-{i}", patient_id=str(i), site="site-a", sex="FM"[i % 2], age=40 + i))
        for i in range(40)]
    keys = sorted(examples[0].features.feature)
    files = {}
    for name, order in (("forward", keys), ("reversed", keys[::-1])):
        files[name] = str(tmp_path / f"{name}.tfrecord.gz")
        with tf.io.TFRecordWriter(files[name], tf.io.TFRecordOptions(compression_type="GZIP")) as w:
            for example in examples:
                w.write(_in_wire_order(example, order))
    raw = {name: [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type="GZIP")]
           for name, path in files.items()}
    assert all(a != b for a, b in zip(raw["forward"], raw["reversed"]))   # different bytes
    assert [tf.train.Example.FromString(r) for r in raw["reversed"]] == examples   # same content

    def epoch(path):
        dataset = data.make_dataset([path], 8, 32, training=True, deterministic=True, seed=3,
                                    repeat=False)
        return [(images.numpy(), labels.numpy()) for images, labels in dataset]

    forward, backward = epoch(files["forward"]), epoch(files["reversed"])
    assert len(forward) == len(backward) == 7   # 40 examples + 14 augmented copies, batches of 8
    for (x1, y1), (x2, y2) in zip(forward, backward):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


@pytest.mark.slow
def test_two_whole_pipeline_runs_give_the_same_models(tmp_path):
    """The demo (the suite's size) twice, each in its own process and work directory: every
    component reruns, LungCrop re-serializes every example, and the models are the same (AUCs
    and served probabilities equal). Before the content order above they were not."""
    from conftest import run_demo

    summaries = []
    for run in ("a", "b"):
        result, _ = run_demo(tmp_path / run, cut_network=False)
        summaries.append(json.loads(result.stdout.strip().splitlines()[-1]))
    first, second = summaries
    assert first["comparison"]["auc"] == second["comparison"]["auc"]
    assert first["serving"]["models"].keys() == second["serving"]["models"].keys()
    for name, served in first["serving"]["models"].items():
        assert served["probabilities"] == second["serving"]["models"][name]["probabilities"]
