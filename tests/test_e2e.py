"""The walking skeleton, end to end: data in, validated, trained, evaluated per site, pushed."""
import glob
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from cardio import features as F, imaging
from cardio.components import evaluator, model_card
from cardio.evaluation import statistics as S
from cardio.imaging import crop, decode
from cardio.pipeline import configs, demo, local_runner, outputs, report
from cardio.trainer import export, task

CELL = configs.demo_config(None).grid[0]
PIPELINE = configs.demo_config(None).pipeline_name


def _store(e2e):
    return outputs.open_store(local_runner.metadata_path(str(e2e.pipeline_root)))


def _pushed_version_dir(e2e):
    versions = glob.glob(str(e2e.workdir / "serving" / CELL.name / "*"))
    if not versions and "--random-init" in e2e.command:
        pytest.skip("no model was pushed: ../shared/weights is absent, so the demo trained from "
                    "random initialisation and, as it announces, pushes nothing (asserted by "
                    "test_the_demo_states_its_weights_first_and_what_follows)")
    assert versions, f"no model was pushed; the run printed:\n{e2e.stdout}"
    return max(versions, key=lambda p: int(os.path.basename(p)))


def _read(files):
    return [tf.train.Example.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def _image_id(example):
    return example.features.feature[F.IMAGE_ID].bytes_list.value[0]


def _raw_and_cropped(e2e, count=6):
    """The same test images as they arrived (raw) and as the crop stage stored them."""
    raw = _read(glob.glob(str(e2e.workdir / "data" / "span-1" / F.TEST / "*.tfrecord.gz")))[:count]
    cropped_artifact = outputs.latest_output(_store(e2e), PIPELINE, "LungCrop", "cropped_examples")
    cropped = {_image_id(e): e for e in _read(glob.glob(
        os.path.join(cropped_artifact.uri, f"Split-{F.TEST}", "*")))}
    return raw, [cropped[_image_id(e)] for e in raw]


def _image(example):
    return example.features.feature[F.IMAGE].bytes_list.value[0]


def test_run_had_no_network(e2e):
    if e2e.network_interfaces is None:
        pytest.skip("cannot create a network namespace here (needs root or user namespaces)")
    assert e2e.network_interfaces == ["lo"]


def test_every_component_ran(e2e):
    store = _store(e2e)
    nodes = ["ImportExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator",
             "AnomalyGate", "LungSegmenter", "LungCrop", "CropReport", f"Trainer.{CELL.name}",
             f"BaselineLookup.{CELL.name}", f"Evaluator.{CELL.name}", f"Pusher.{CELL.name}",
             f"ModelCard.{CELL.name}"]
    for node in nodes:
        executions = outputs.node_executions(store, PIPELINE, node)
        assert executions, node
        assert executions[-1].last_known_state == executions[-1].COMPLETE, node


def test_progress_shows_every_component_to_the_end(e2e):
    """Numbered component lines on stderr for the whole run, after the Trainers too."""
    progress = re.findall(r"\[(\d+)/(\d+) done, \d+ s\] (\S+) (running|finished)", e2e.stderr)
    finished = [name for _, _, name, state in progress if state == "finished"]
    total = int(progress[0][1])
    assert len(set(finished)) == len(finished) == total
    assert any(name.startswith("Trainer.") for name in finished)
    assert progress[-1][:2] == (str(total), str(total))


def test_the_run_prints_no_library_warnings(e2e):
    """What a user reads is the project's own lines: no Python warning of a library (the
    CropReport's scikit-learn fits printed SciPy's OptimizeWarning ten times)."""
    warned = [line for line in (e2e.stdout + e2e.stderr).splitlines()
              if re.search(r"\b\w*Warning: ", line)]
    assert not warned, "\n".join(warned[:5])


def test_evaluation_is_per_site_and_never_pools_sites(e2e):
    evaluation = outputs.latest_output(_store(e2e), PIPELINE, f"Evaluator.{CELL.name}", "evaluation")
    result = evaluator.load(evaluation.uri)
    slices = report.slice_metrics(result)
    intervals = report.slice_intervals(result)
    assert {"site=site-a", "site=site-b"} <= set(slices)
    assert all("site=" in name for name in slices), "a slice mixes internal and external data"
    for site in ("site=site-a", "site=site-b"):
        assert 0.0 <= slices[site]["auc"] <= 1.0
        assert slices[site]["example_count"] > 0
        assert 0.0 <= slices[site]["brier_score"] <= 1.0
        assert slices[site]["tp"] + slices[site]["fn"] + slices[site]["tn"] + slices[site]["fp"] == \
            slices[site]["example_count"]
        lower, upper = intervals[site]["auc"]      # TFMA's jackknife, the demo's
        assert lower <= slices[site]["auc"] <= upper
    assert result.plots, "the calibration plot is missing"
    # The demo prints the same table, with the gate profile and the CIs.
    assert "site=site-b" in e2e.stdout and "Gate profile 'demo'" in e2e.stdout
    assert S.JACKKNIFE_CI in e2e.stdout and S.BOOTSTRAP_CI not in e2e.stdout


def test_the_demo_states_its_weights_first_and_what_follows(e2e):
    first = e2e.stdout.splitlines()[0]
    if "--random-init" in e2e.command:   # a new user's machine: no ../shared/weights
        assert first == demo.NO_WEIGHTS and e2e.summary["imagenet_weights"] is None
        assert e2e.summary["serving"] == {"served": False}
        assert all(m["pushed_to"] is None for m in e2e.summary["models"].values())
        assert "as expected without ImageNet weights" in e2e.stdout
    else:
        weights = e2e.summary["imagenet_weights"]
        assert first == f"ImageNet weights: {weights}" and os.path.exists(weights)
        assert e2e.summary["serving"]["served"] is True


def test_blessed_model_is_pushed_in_tf_serving_layout(e2e):
    version_dir = _pushed_version_dir(e2e)
    assert os.path.basename(version_dir).isdigit()
    assert os.path.isfile(os.path.join(version_dir, "saved_model.pb"))
    assert e2e.summary["models"][CELL.name]["blessed"] is True
    assert e2e.summary["models"][CELL.name]["pushed_to"].rstrip("/") == version_dir.rstrip("/")
    assert f"pushed to {e2e.summary['models'][CELL.name]['pushed_to']}" in e2e.stdout


def test_every_evaluated_model_has_a_model_card(e2e):
    import json

    for cell in configs.demo_config(None).grid:
        result = e2e.summary["models"][cell.name]
        card_dir = os.path.dirname(result["model_card"])
        card = json.load(open(os.path.join(card_dir, model_card.JSON)))
        assert card["status"] == {"blessed": result["blessed"], "pushed_to": result["pushed_to"]}
        assert card["non_commercial"] and "non-commercial" in card["licences"]["lung_unet"]
        assert len(card["lineage"]["unet_weights_sha256"]) == 64
        assert sum(n for split in card["data"]["counts"].values() for site in split.values()
                   for n in site.values()) == 240
        assert card["evaluation"]["gate"]["name"] == "demo"
        evaluation = outputs.latest_output(_store(e2e), PIPELINE, f"Evaluator.{cell.name}",
                                           "evaluation")
        slices = report.slice_metrics(evaluator.load(evaluation.uri))
        auc = card["evaluation"]["slices"]["site=site-b"]["auc"]
        assert auc["value"] == pytest.approx(slices["site=site-b"]["auc"])
        assert (result["gate_failures"] == []) == result["blessed"]
        assert auc["lower"] <= auc["value"] <= auc["upper"]
        markdown = open(result["model_card"]).read()
        assert markdown.index("non-commercial") < markdown.index("## Intended use")
        assert f"Model card: {result['model_card']}" in e2e.stdout


def test_serving_crop_matches_the_batch_crop_stage(e2e):
    """Raw radiographs through serving_default give the box the Beam stage stored and the
    probability the model gives the stored crop."""
    served = tf.saved_model.load(_pushed_version_dir(e2e))
    raw, cropped = _raw_and_cropped(e2e)
    by_raw = served.signatures[F.SERVING_DEFAULT](
        **{F.IMAGE_BYTES: tf.constant([_image(e) for e in raw])})
    by_crop = served.signatures[F.SERVING_EXAMPLES](
        examples=tf.constant([e.SerializeToString() for e in cropped]))
    stored_boxes = np.array([e.features.feature["crop_box"].float_list.value for e in cropped])
    np.testing.assert_allclose(by_raw[F.CROP_BOX].numpy(), stored_boxes, atol=1e-6)
    np.testing.assert_allclose(by_raw[F.PROBABILITY], by_crop[F.PROBABILITY], atol=1e-5)
    stored_flags = [set(e.features.feature["crop_qc"].bytes_list.value) for e in cropped]
    served_flags = [{name.encode() for name, on in zip(crop.QC_FLAGS, row) if on}
                    for row in by_raw[F.CROP_QC].numpy()]
    assert served_flags == stored_flags


def test_pushed_model_matches_the_trained_keras_model(e2e):
    served = tf.saved_model.load(_pushed_version_dir(e2e))
    _, cropped = _raw_and_cropped(e2e)
    outputs_ = served.signatures[F.SERVING_EXAMPLES](
        examples=tf.constant([e.SerializeToString() for e in cropped]))
    probabilities = outputs_[F.PROBABILITY].numpy()

    model_run = outputs.latest_output(_store(e2e), PIPELINE, f"Trainer.{CELL.name}", "model_run")
    keras_model = tf.keras.models.load_model(os.path.join(model_run.uri, task.KERAS_MODEL_FILE))
    size = keras_model.input_shape[1]
    batch = tf.stack([decode.preprocess(tf.constant(_image(e)), size) for e in cropped])
    # The export serves the Trainer's Platt-calibrated probability of the Keras model's logit.
    logits = export.logit_function(keras_model)(batch).numpy()
    np.testing.assert_allclose(tf.sigmoid(logits).numpy(),
                               keras_model(batch, training=False).numpy().reshape(-1), atol=1e-5)
    a, b = served.platt_a.numpy(), served.platt_b.numpy()
    expected = 1.0 / (1.0 + np.exp(-(a * logits + b)))

    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert np.ptp(probabilities) > 1e-4, "different images must give different outputs"
    threshold = served.threshold.numpy()
    np.testing.assert_array_equal(outputs_[F.PREDICTED_LABEL].numpy(), probabilities >= threshold)


def test_second_run_reuses_cached_outputs(e2e):
    before = {node: len(outputs.node_executions(_store(e2e), PIPELINE, node))
              for node in ("StatisticsGen", f"Trainer.{CELL.name}", f"Evaluator.{CELL.name}")}
    from conftest import run_demo
    run_demo(e2e.workdir, cut_network=False)
    store = _store(e2e)
    for node, count in before.items():
        executions = outputs.node_executions(store, PIPELINE, node)
        assert len(executions) == count + 1, node
        assert executions[-1].last_known_state == executions[-1].CACHED, node


def test_pushed_model_carries_the_segmenter_licence_and_lineage(e2e):
    import json

    metadata = json.loads(open(os.path.join(_pushed_version_dir(e2e), "assets.extra",
                                            F.METADATA_FILE)).read())
    assert "non-commercial" in metadata["segmenter"]["licence"]
    assert len(metadata["segmenter"]["weights_sha256"]) == 64
    card = open(os.path.join(_pushed_version_dir(e2e), "assets.extra", F.MODEL_CARD_FILE)).read()
    assert "non-commercial" in card and metadata["segmenter"]["weights_sha256"][:12] in card
    store = _store(e2e)
    segmenter = outputs.latest_output(store, PIPELINE, "LungSegmenter", "result")
    assert segmenter.uri.rstrip("/") == imaging.SHIPPED_UNET_DIR.rstrip("/")
    execution = outputs.node_executions(store, PIPELINE, "LungCrop")[-1]
    inputs = {e.artifact_id for e in store.get_events_by_execution_ids([execution.id])
              if e.type == e.INPUT}
    assert segmenter.id in inputs


def test_crop_report_shows_sites_before_and_after_cropping(e2e):
    figures = report.crop_report(_store(e2e), configs.demo_config(None))
    assert figures is not None and os.path.getsize(figures["plot"]) > 10_000
    for key in ("site_auc_raw", "site_auc_cropped"):
        assert 0.0 <= figures[key] <= 1.0
    assert e2e.summary["site_auc"] == {"raw": figures["site_auc_raw"],
                                       "cropped": figures["site_auc_cropped"]}
    assert "Site separability" in e2e.stdout


def test_crop_qc_is_counted_never_hidden(e2e):
    qc = e2e.summary["crop_qc"]
    assert sum(c["images"] for c in qc.values()) == 240
    for counts in qc.values():
        flags = sum(v for k, v in counts.items() if k not in ("images", "flagged"))
        assert counts["flagged"] <= counts["images"] and flags >= counts["flagged"]
    assert "Crop QC:" in e2e.stdout


def test_demo_ends_serving_the_pushed_models_over_grpc(e2e):
    """The demo's gRPC predictions (cardio serve, `stable` label) for raw radiographs of each
    site equal the pushed SavedModel's serving_default on the same images."""
    from cardio.serving import demo as serving_demo

    serving = e2e.summary["serving"]
    if not serving["served"]:
        _pushed_version_dir(e2e)   # skips when nothing could be pushed (random initialisation)
    assert serving["served"] is True and "over TF Serving's gRPC API" in e2e.stdout
    images = serving_demo.sample_images(str(e2e.workdir / "data"), per_site=3)
    for model, result in serving["models"].items():
        assert result["predictions"] == {"site-a": 3, "site-b": 3}
        version_dir = e2e.workdir / "serving" / model / str(result["version"])
        served = tf.saved_model.load(str(version_dir))
        expected = served.signatures[F.SERVING_DEFAULT](
            **{F.IMAGE_BYTES: tf.constant([i["image"] for i in images])})[F.PROBABILITY]
        np.testing.assert_allclose(result["probabilities"], expected.numpy(), atol=1e-5)


def test_model_comparison_report_has_roc_curves_delong_table_and_a_champion(e2e):
    """Every cell compared on the same images; AUCs agree with TFMA's; the champion is blessed."""
    import json

    comparison = e2e.summary["comparison"]
    for key in ("report", "markdown", "roc", "json"):
        assert os.path.getsize(comparison[key]) > 1000, key
    text = open(comparison["markdown"]).read()
    assert "## DeLong tests, every pair" in text and "| weighting |" in text
    assert "## Fairness review" in text and "## Operating point" in text
    result = json.load(open(comparison["json"]))
    grid = configs.demo_config(None).grid
    assert set(result["models"]) == {cell.name for cell in grid} and len(grid) == 2
    assert len(result["delong"]) == 3           # one pair (75-25 vs 50-50) on three groups
    for name, model in result["models"].items():
        assert model["blessed"] == e2e.summary["models"][name]["blessed"]
        evaluation = outputs.latest_output(_store(e2e), PIPELINE, f"Evaluator.{name}", "evaluation")
        slices = report.slice_metrics(evaluator.load(evaluation.uri))
        for group, site in ((F.TEST, "site-a"), (F.EXTERNAL, "site-b")):
            # Two computations, one exact (ranks) and one TFMA's (2,000 thresholds).
            assert model["groups"][group]["auc"] == pytest.approx(slices[f"site={site}"]["auc"],
                                                                  abs=2e-3)
    champion = result["champion"]["model_name"]
    blessed = [n for n, m in result["models"].items() if m["blessed"]]
    assert (champion is None) == (not blessed) and (champion is None or champion in blessed)
    assert "external site was not used" in result["champion"]["reason"]
    assert f"Champion: {champion or 'none'}." in e2e.stdout


def test_the_comparison_reports_the_ctr_serving_returns_beside_the_champion(e2e):
    """The comparison's CTR is what the pushed model's serving_default returns for each test
    radiograph as stored (uncropped); its AUC and agreement are scikit-learn's and numpy's on
    those values; on synthetic radiographs it tracks the ratio they were drawn with."""
    import json

    from sklearn import metrics as skm

    result = json.load(open(e2e.summary["comparison"]["json"]))
    rows = result["ctr"]["groups"]
    assert set(rows) == {F.TEST, F.EXTERNAL}
    raw = _read(glob.glob(str(e2e.workdir / "data" / "span-1" / F.TEST / "*.tfrecord.gz")))
    served = tf.saved_model.load(str(_pushed_version_dir(e2e))).signatures[F.SERVING_DEFAULT]
    ratio = np.concatenate([served(**{F.IMAGE_BYTES: tf.constant(
        [_image(e) for e in raw[i:i + 16]])})[F.CTR].numpy() for i in range(0, len(raw), 16)])
    truth = np.array([e.features.feature[F.CTR].float_list.value[0] for e in raw])
    labels = np.array([e.features.feature[F.LABEL].int64_list.value[0] for e in raw])
    ok = ratio >= 0
    row = rows[F.TEST]
    assert (row["n"], row["not_measured"]) == (ok.sum(), (~ok).sum())
    assert row["auc"] == pytest.approx(skm.roc_auc_score(labels[ok], ratio[ok]), abs=1e-6)
    assert row["agreement"]["mae"] == pytest.approx(np.abs(ratio[ok] - truth[ok]).mean(), abs=1e-5)
    # Measured on 60 synthetic radiographs at the demo's size: MAE 0.024, r 0.62.
    assert row["agreement"]["mae"] < 0.08 and row["agreement"]["pearson_r"] > 0.3, row
    text = open(e2e.summary["comparison"]["markdown"]).read()
    assert "## Cardiothoracic ratio beside the champion" in text
    # The study's Figure 3 (t-SNE by site before and after the crop) in the same report.
    sites = result["sites"]
    assert 0.0 <= sites["site_auc_cropped"] <= 1.0 and sites["images"] > 0
    assert f"({sites['plot']})" in text and os.path.getsize(
        os.path.join(os.path.dirname(e2e.summary["comparison"]["markdown"]), sites["plot"])) > 10_000
    for name, model in e2e.summary["models"].items():
        card = open(model["model_card"]).read()
        assert "## External site" in card and "The study's criterion, AUC >= 0.85" in card, name
        assert "## Cardiothoracic ratio" in card and "held-out Dice" in card, name


def test_every_interval_names_its_method(e2e):
    """TFMA's CIs (the demo's: jackknife; gate, card, demo table) and DeLong's/Wilson's
    (comparison) are different methods on the same AUC: each printed interval says which it is."""
    texts = {"demo output": e2e.stdout,
             "comparison report": open(e2e.summary["comparison"]["markdown"]).read()}
    for name, result in e2e.summary["models"].items():
        texts[f"model card of {name}"] = open(result["model_card"]).read()
    methods = (S.JACKKNIFE_CI, S.BOOTSTRAP_CI, S.DELONG_CI, S.WILSON_CI)
    for where, text in texts.items():
        assert any(m in text for m in methods), where
        # Every "95% CI" is one of the named methods; none stands alone.
        assert text.count("95% CI") == sum(text.count(m) for m in methods), where
    assert S.JACKKNIFE_CI in e2e.stdout and S.DELONG_CI in texts["comparison report"]
    for name in e2e.summary["models"]:       # the card says the method its evaluation used
        assert S.JACKKNIFE_CI in texts[f"model card of {name}"], name


def test_the_demo_ends_with_the_time_each_stage_took(e2e):
    """Where a run's minutes went, as the demo prints them last: drawing the radiographs, every
    component that ran (MLMD's times), reporting, serving, and the total."""
    table = e2e.stdout[e2e.stdout.rindex("Time per stage (seconds)"):].splitlines()[1:]
    rows = {}
    for line in table:
        name, _, seconds = line.strip().rpartition(" ")
        if name and seconds.replace(".", "", 1).isdigit():
            rows[name.strip()] = float(seconds)
    components = ("LungCrop", f"Trainer.{CELL.name}", f"Evaluator.{CELL.name}", "ModelComparison")
    assert {"synthetic radiographs", *components, "serving over gRPC", "total"} <= set(rows), table
    assert rows["total"] >= sum(rows[c] for c in components) > 0


