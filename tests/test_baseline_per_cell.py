"""The gate's baseline is the grid cell's own last blessed model, found in MLMD by the
BaselineLookup, and every evaluated model gets a model card: two cells, two LocalDagRunner runs
of the pipeline's per-cell flow (lookup -> Evaluator -> Pusher -> ModelCard) on controlled models.

Run 1: alpha (AUC ~0.99) and beta (AUC ~0.86-0.90) are each their cell's first model: blessed.
Run 2: alpha gets worse (~0.94) and beta better (~0.95). Against its own baseline alpha regresses
and is not pushed; beta improves on its own baseline and is pushed, although it is worse than
alpha's: a pipeline-wide baseline (TFX's LatestBlessedModel resolver) would have blocked it.
"""
import dataclasses
import glob
import json
import os

import gate_models
import pytest
from tfx import v1 as tfx
from tfx.types import standard_artifacts

from cardio.components import baseline, evaluator, model_card
from cardio.pipeline import configs, outputs

GATE = configs.GateProfile("test", external_auc_min=0.8, internal_auc_min=0.8, sensitivity_min=0.5,
                           auc_regression_tolerance=0.01)
CONFIG = dataclasses.replace(configs.PipelineConfig(), pipeline_name="gate-test", gate=GATE)
RUNS = ({"alpha": gate_models.GOOD, "beta": (1.0, 1.0, 0.5)},
        {"alpha": (1.0, 1.0, 0.3), "beta": (1.0, 1.0, 0.2)})


def _pipeline(root, examples_dir, models: dict):
    metadata = tfx.orchestration.metadata.sqlite_metadata_connection_config(
        os.path.join(root, "metadata.sqlite"))
    examples = tfx.dsl.Importer(
        source_uri=examples_dir, artifact_type=standard_artifacts.Examples,
        properties={"split_names": json.dumps(evaluator.EVAL_SPLITS)}).with_id("Examples")
    components = [examples]
    for cell, weights in models.items():
        # The per-cell flow of pipeline/pipeline.py, with a controlled model as the Trainer.
        trainer = gate_models.ControlledTrainer(weights=json.dumps(weights),
                                                examples_dir=examples_dir).with_id(f"Trainer.{cell}")
        lookup = baseline.create(trainer.outputs["model"], CONFIG, cell, metadata)
        evaluation = evaluator.create(examples.outputs["result"], trainer.outputs["model"],
                                      lookup.outputs["baseline"], CONFIG, cell,
                                      confidence_intervals=False)   # the gate tests time them
        pusher = tfx.components.Pusher(
            model=trainer.outputs["model"], model_blessing=evaluation.outputs["blessing"],
            push_destination=tfx.proto.PushDestination(filesystem=tfx.proto.PushDestination.Filesystem(
                base_directory=os.path.join(root, "serving", cell)))).with_id(f"Pusher.{cell}")
        card = model_card.create(trainer, evaluation, pusher, examples.outputs["result"], CONFIG, cell)
        components += [trainer, lookup, evaluation, pusher, card]
    return tfx.dsl.Pipeline(pipeline_name=CONFIG.pipeline_name, pipeline_root=root,
                            components=components, enable_cache=True,
                            metadata_connection_config=metadata,
                            beam_pipeline_args=list(CONFIG.beam_pipeline_args))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("gate-pipeline"))
    examples_dir = os.path.join(root, "examples")
    gate_models.write_examples(examples_dir)
    results = []
    for models in RUNS:
        tfx.orchestration.LocalDagRunner().run(_pipeline(root, examples_dir, models))
        store = outputs.open_store(os.path.join(root, "metadata.sqlite"))
        results.append({cell: {
            key: outputs.latest_output(store, CONFIG.pipeline_name, f"{node}.{cell}", key)
            for node, key in (("Trainer", "model"), ("BaselineLookup", "baseline"),
                              ("Evaluator", "blessing"), ("Evaluator", "evaluation"),
                              ("Pusher", "pushed_model"), ("ModelCard", "card"))}
            for cell in models})
    return root, results


def _blessed(artifacts) -> bool:
    return os.path.exists(os.path.join(artifacts["blessing"].uri, "BLESSED"))


def _versions(root, cell):
    return sorted(glob.glob(os.path.join(root, "serving", cell, "*")))


def _card(artifacts) -> dict:
    with open(os.path.join(artifacts["card"].uri, model_card.JSON)) as f:
        return json.load(f)


def test_first_run_has_no_baseline_and_blesses_on_the_floors(runs):
    _, (first, _) = runs
    for cell, artifacts in first.items():
        assert artifacts["baseline"].custom_properties["baseline_found"].int_value == 0, cell
        assert _blessed(artifacts), cell
        assert "baseline_model" not in artifacts["blessing"].custom_properties


def test_each_cell_is_compared_with_its_own_last_blessed_model(runs):
    root, (first, second) = runs
    for cell in ("alpha", "beta"):
        blessing = second[cell]["blessing"]
        assert blessing.custom_properties["baseline_model"].string_value == first[cell]["model"].uri
        assert blessing.custom_properties["baseline_model_id"].int_value == first[cell]["model"].id
        assert blessing.custom_properties[baseline.CELL].string_value == cell
    # alpha regressed against alpha's baseline: not blessed, nothing new pushed.
    assert not _blessed(second["alpha"])
    assert second["alpha"]["pushed_model"].custom_properties["pushed"].int_value == 0
    assert len(_versions(root, "alpha")) == 1
    failures = evaluator.validation_failures(second["alpha"]["evaluation"].uri)
    assert failures and all("change vs baseline" in f for f in failures)
    # beta improved on beta's baseline (though worse than alpha's): blessed and pushed.
    assert _blessed(second["beta"]) and len(_versions(root, "beta")) == 2


def test_model_card_of_a_pushed_model(runs):
    root, (_, second) = runs
    card = _card(second["beta"])
    assert card["status"] == {"blessed": True,
                              "pushed_to": second["beta"]["pushed_model"].custom_properties[
                                  "pushed_destination"].string_value}
    assert card["status"]["pushed_to"] in _versions(root, "beta")[-1] + "/"
    # Data: sites, counts per split, site and class, a fingerprint.
    assert card["data"]["sites"] == ["site-a", "site-b"]
    assert card["data"]["counts"] == {"test": {"site-a": {"normal": 20, "cardiomegaly": 20}},
                                      "external": {"site-b": {"normal": 20, "cardiomegaly": 20}}}
    assert len(card["data"]["fingerprint_sha256"]) == 64
    # Lineage: MLMD ids of what the card describes, the baseline, the source revision.
    ids = card["lineage"]["mlmd_ids"]
    assert ids["model"] == second["beta"]["model"].id
    assert ids["blessing"] == second["beta"]["blessing"].id
    assert card["evaluation"]["baseline"]["id"] == second["beta"]["blessing"].custom_properties[
        "baseline_model_id"].int_value
    assert card["lineage"]["git_commit"] != ""
    # Metrics per site slice with the operating point; the gate and its outcome.
    slices = card["evaluation"]["slices"]
    assert {"site=site-a", "site=site-b"} <= set(slices)
    assert 0.9 <= slices["site=site-b"]["auc"]["value"] <= 1.0
    assert card["operating_point"]["per_site"]["site=site-b"]["sensitivity"]["value"] == 1.0
    assert card["operating_point"]["threshold"] > 0
    assert card["evaluation"]["gate"]["name"] == "test" and card["evaluation"]["failures"] == []
    assert card["licences"]["code"].startswith("Apache-2.0")
    assert card["intended_use"] and card["limitations"]
    markdown = open(os.path.join(second["beta"]["card"].uri, model_card.MARKDOWN)).read()
    assert "**Status**: BLESSED" in markdown and card["status"]["pushed_to"] in markdown
    assert "| site=site-b" in markdown and card["data"]["fingerprint_sha256"] in markdown


def test_model_card_of_a_rejected_model_says_why(runs):
    _, (_, second) = runs
    card = _card(second["alpha"])
    assert card["status"] == {"blessed": False, "pushed_to": None}
    assert card["evaluation"]["failures"]
    markdown = open(os.path.join(second["alpha"]["card"].uri, model_card.MARKDOWN)).read()
    assert "NOT PUSHED" in markdown and "FAILED: site=" in markdown


def test_card_names_the_unet_licence_first_when_the_model_embeds_it(tmp_path):
    card = {"model": "m", "status": {"blessed": True, "pushed_to": "/serving/m/1"},
            "non_commercial": True, "licences": {"code": "Apache-2.0", "lung_unet": "CC BY-NC-SA 4.0 (non-commercial)"},
            "intended_use": "research", "model_details": {"backbone": "b", "weighting": "75-25",
                                                          "image_size": 8, "crop_size": None},
            "training": None, "operating_point": {"threshold": 0.4, "chosen_on": "validation split",
                                                  "target_sensitivity": 0.9, "per_site": {}},
            "data": {"sites": ["a"], "examples": 0, "fingerprint_sha256": "0" * 64, "counts": {}},
            "evaluation": {"gate": dataclasses.asdict(GATE), "compares": "point estimates",
                           "ci": "no confidence intervals computed",
                           "failures": [], "baseline": None, "slices": {}},
            "limitations": ["x"], "lineage": {"git_commit": "abc"}}
    md_path, json_path = model_card.write(str(tmp_path), card)
    text = open(md_path).read()
    assert text.index("non-commercial") < text.index("## Intended use")
    assert json.load(open(json_path))["non_commercial"] is True


def test_source_revision_without_a_git_binary(tmp_path, monkeypatch):
    git = tmp_path / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "packed-refs").write_text("# pack-refs\n" + "a" * 40 + " refs/heads/main\n")
    assert model_card._read_git_head(str(git)) == "a" * 40
    (git / "refs" / "heads" / "main").write_text("b" * 40 + "\n")
    assert model_card._read_git_head(str(git)) == "b" * 40
    monkeypatch.setenv("CARDIO_GIT_COMMIT", "c" * 40)
    assert model_card.source_revision(str(tmp_path)) == "c" * 40


def test_lookup_filters_by_pipeline_cell_state_and_blessing(tmp_path):
    """Blessings as TFX records them locally (ModelBlessing, int properties) and as KFP v2 does
    (tfx.ModelBlessing, numbers as doubles): only this pipeline's cell's LIVE blessed ones count,
    the newest wins, the candidate itself never does."""
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2 as mlmd

    store = metadata_store.MetadataStore(mlmd.ConnectionConfig(fake_database=mlmd.FakeDatabaseConfig()))
    types = {name: store.put_artifact_type(mlmd.ArtifactType(name=name))
             for name in baseline.BLESSING_TYPES}
    models = {}

    def blessing(type_name, model, blessed=1, cell="alpha", pipeline="p", state=mlmd.Artifact.LIVE,
                 as_double=False):
        models[model] = tmp_path / model
        models[model].mkdir(exist_ok=True)
        artifact = mlmd.Artifact(type_id=types[type_name], uri=str(tmp_path / f"b-{model}"),
                                 state=state)
        props = artifact.custom_properties
        props[baseline.CELL].string_value = cell
        props[baseline.PIPELINE].string_value = pipeline
        props["current_model"].string_value = str(models[model])
        if as_double:
            props["blessed"].double_value = float(blessed)
            props["current_model_id"].double_value = 7.0
        else:
            props["blessed"].int_value = blessed
            props["current_model_id"].int_value = 7
        return store.put_artifacts([artifact])[0]

    assert baseline.find_last_blessed(store, "p", "alpha", "/nowhere") is None
    blessing("ModelBlessing", "m1")
    blessing("ModelBlessing", "other-cell", cell="beta")
    blessing("ModelBlessing", "other-pipeline", pipeline="q")
    blessing("ModelBlessing", "rejected", blessed=0)
    blessing("ModelBlessing", "deleted", state=mlmd.Artifact.DELETED)
    assert baseline.find_last_blessed(store, "p", "alpha", "/nowhere")["model_uri"] == str(models["m1"])
    newest = blessing("tfx.ModelBlessing", "m2", as_double=True)
    found = baseline.find_last_blessed(store, "p", "alpha", "/nowhere")
    assert found == {"model_uri": str(models["m2"]), "model_id": 7, "blessing_id": newest}
    # The candidate is never its own baseline.
    assert baseline.find_last_blessed(store, "p", "alpha", str(models["m2"]))["model_uri"] == \
        str(models["m1"])
    # A blessed model that has disappeared is an error, not a silent fallback.
    models["m2"].rmdir()
    with pytest.raises(FileNotFoundError, match="last blessed model of alpha"):
        baseline.find_last_blessed(store, "p", "alpha", "/nowhere")
