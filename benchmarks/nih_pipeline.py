"""The NIH ChestX-ray14 set (../shared/data/nih-cxr14-128) through the whole pipeline, as a user
runs it: `cardio data csv`, then `cardio pipeline run --config nih` (the shipped configuration:
U-Net crop, MobileNet-0.25 from ImageNet weights at both weightings, TFMA per slice, comparison,
push, serve). Prints the run time per stage, the crop QC counts, every model's per-slice table
with its 95% CIs and its calibration. `--workdir=DIR` keeps the outputs there (default: a new
temporary directory); `--no-crop` runs the same file without the U-Net crop, and
`python -m benchmarks.nih_pipeline compare WITH_CROP WITHOUT_CROP` then tests, per model, whether
the crop changes the AUC on the same images (both runs must share CARDIO_PATIENT_SALT, which
decides the patients' splits; the benchmark's default salt is fixed for that reason).
`--config=nih-wingspan` converts Wingspan (../shared/data/wingspan-ctr-512) into the same span as
the external site and runs the shipped `nih-wingspan` configuration; its NIH splits, training and
calibration are those of `nih`, so `python -m benchmarks.nih_pipeline same RUN_A RUN_B` then
says whether two runs gave the same models (reproducibility: the same probability for every
NIH validation and test image).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NIH = os.path.join(os.path.dirname(REPO), "shared", "data", "nih-cxr14-128")
WINGSPAN = os.path.join(os.path.dirname(REPO), "shared", "data", "wingspan-ctr-512")
SLICE_METRICS = ("auc", "sensitivity", "specificity")
PIPELINES = {True: "cardiomegaly-nih", False: "cardiomegaly-nih-no-crop"}   # by crop on/off


def _cardio(args: list, env: dict) -> tuple[dict, float]:
    """Runs `cardio ...` with its progress on this terminal; returns the summary JSON on its last
    stdout line and the seconds it took."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "cardio", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, text=True)
    sys.stdout.write(result.stdout)
    if result.returncode != 0:
        raise SystemExit(f"cardio {' '.join(args[:2])} failed with exit code {result.returncode}")
    return json.loads(result.stdout.strip().splitlines()[-1]), time.perf_counter() - started


def _store(workdir: str):
    from cardio.pipeline import local_runner, outputs
    return outputs.open_store(local_runner.metadata_path(os.path.join(workdir, "pipeline")))


def _config_file(workdir: str, crop: bool, name: str = "nih") -> str:
    import yaml

    from cardio.pipeline import config_file
    with open(os.path.join(config_file.SHIPPED_DIR, config_file.SHIPPED[name])) as f:
        config = yaml.safe_load(f)
    config["weights"] = os.path.join(os.path.dirname(REPO), "shared", "weights")
    if not crop:
        config.update(segmenter_uri=None, pipeline_name=PIPELINES[False])
    path = os.path.join(workdir, "nih.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return path


def _interval(value, interval) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" + (" [{:.2f}, {:.2f}]".format(*interval) if interval else "")


def report(workdir: str, config_path: str, seconds: dict, summary: dict) -> None:
    """The tables, from MLMD and the run's summary (crop QC and comparison: already computed)."""
    import tensorflow as tf

    from cardio.pipeline import config_file, outputs
    from cardio.pipeline import report as report_lib

    run_config = config_file.load(config_path)
    config = run_config.config
    store = _store(workdir)
    print(f"\nNIH ChestX-ray14 at 128 px, {os.cpu_count()} cores, "
          f"crop {'on' if config.segmenter_uri else 'OFF'}")
    print(f"{'stage':<44}{'seconds':>9}")
    for name, value in [("cardio data csv", seconds["convert"]),
                        *outputs.stage_seconds(store, config.pipeline_name),
                        ("cardio pipeline run (whole, with report and serving)", seconds["run"])]:
        print(f"{name:<44}{value:>9.0f}")
    qc = summary.get("crop_qc")
    if qc:
        columns = ["images", "flagged", *sorted({k for c in qc.values() for k in c
                                                 if k not in ("images", "flagged")})]
        print("\nCrop QC (flagged radiographs are centre-cropped instead)")
        print(f"{'split':<12}" + "".join(f"{c:>{len(c) + 2}}" for c in columns))
        for split, counts in qc.items():
            print(f"{split:<12}" + "".join(f"{counts.get(c, 0):>{len(c) + 2}}" for c in columns))
    print("\n| model | slice | n | cardiomegaly | AUC | sensitivity | specificity | Brier |")
    print("|---|---|---|---|---|---|---|---|")
    for cell in config.grid:
        result = report_lib.cell_result(store, config, cell, run_config.serving_dir)
        for name, values in sorted(result["slices"].items()):
            intervals = result.get("intervals", {}).get(name, {})
            n, positives = values.get("example_count", 0), values.get("tp", 0) + values.get("fn", 0)
            cells = [_interval(values.get(m), intervals.get(m)) for m in SLICE_METRICS]
            print(f"| {cell.weighting}{' (blessed)' if result['blessed'] else ''} | {name} | "
                  f"{n:.0f} | {positives:.0f} | {' | '.join(cells)} | "
                  f"{values.get('brier_score', float('nan')):.3f} |")
    print("\nCalibration (Platt scaling fitted on validation; ECE and Brier on validation)")
    print(f"{'model':<14}{'a':>8}{'b':>8}{'threshold':>11}{'ECE before':>12}{'ECE after':>11}"
          f"{'Brier before':>14}{'Brier after':>13}")
    for cell in config.grid:
        run = outputs.latest_output(store, config.pipeline_name, f"Trainer.{cell.name}",
                                    "model_run")
        with tf.io.gfile.GFile(os.path.join(run.uri, "training_summary.json")) as f:
            training = json.load(f)
        c, before, after = (training["calibration"], training["calibration"]["validation_before"],
                            training["calibration"]["validation_after"])
        print(f"{cell.weighting:<14}{c['a']:>8.3f}{c['b']:>8.3f}"
              f"{training['operating_threshold']:>11.3f}{before['ece']:>12.3f}{after['ece']:>11.3f}"
              f"{before['brier']:>14.4f}{after['brier']:>13.4f}")
    comparison = summary.get("comparison")
    if comparison:
        print(f"\nExact AUCs (model comparison): {json.dumps(comparison['auc'])}")
        print(f"Champion: {comparison['champion']}. {comparison['reason']}")


def _predictions(workdir: str, pipeline_name: str) -> dict:
    """{model: {image_id: (split, label, probability)}} from a run's model comparison."""
    import csv

    from cardio.components import model_comparison
    from cardio.pipeline import outputs
    artifact = outputs.latest_output(_store(workdir), pipeline_name, model_comparison.NODE_ID,
                                     model_comparison.OUTPUT_KEY)
    with open(os.path.join(artifact.uri, model_comparison.PREDICTIONS_CSV)) as f:
        rows = list(csv.DictReader(f))
    models = [c for c in rows[0] if c.startswith("cardio-")]
    return {m: {r["image_id"]: (r["split"], int(r["label"]), float(r[m])) for r in rows}
            for m in models}


def compare_crop(with_crop: str, without_crop: str) -> None:
    """Paired DeLong test per model, crop vs no crop, on the same validation and test images
    (both runs converted with the same CARDIO_PATIENT_SALT, so the splits are the same)."""
    from cardio.evaluation import statistics

    cropped = _predictions(with_crop, PIPELINES[True])
    plain = _predictions(without_crop, PIPELINES[False])
    print("\nThe U-Net crop at 128 px: exact AUC with and without it, same images (paired DeLong)")
    print(f"{'model':<30}{'split':<12}{'n':>6}{'positives':>11}{'crop':>8}{'no crop':>9}{'p':>8}")
    for model in sorted(cropped):
        for split in ("validation", "test"):
            ids = sorted(i for i, (s, _, _) in cropped[model].items() if s == split)
            assert ids == sorted(i for i, (s, _, _) in plain[model].items() if s == split), \
                "the two runs have different splits: convert both with the same salt"
            labels = [cropped[model][i][1] for i in ids]
            test = statistics.delong_paired(labels, [cropped[model][i][2] for i in ids],
                                            [plain[model][i][2] for i in ids])
            print(f"{model:<30}{split:<12}{len(ids):>6}{sum(labels):>11}{test['auc_a']:>8.3f}"
                  f"{test['auc_b']:>9.3f}{test['p']:>8.3f}")


def compare_runs(run_a: str, run_b: str) -> None:
    """Per model, the largest difference between two runs' probabilities for the same NIH
    validation and test images (0: the same model), and each run's exact AUC there."""
    from cardio.evaluation import statistics

    first, second = (_predictions(run, _pipeline_name(run)) for run in (run_a, run_b))
    print("\nTwo runs, the same NIH images: largest probability difference and exact AUCs")
    print(f"{'model':<34}{'split':<12}{'n':>6}{'positives':>11}{'max |diff|':>12}{'AUC a':>8}"
          f"{'AUC b':>8}")
    for model in sorted(set(first) & set(second)):
        for split in ("validation", "test"):
            ids = sorted(i for i, (s, _, _) in first[model].items() if s == split)
            assert ids == sorted(i for i, (s, _, _) in second[model].items() if s == split), \
                "the two runs have different splits: convert both with the same salt"
            labels = [first[model][i][1] for i in ids]
            a, b = ([run[model][i][2] for i in ids] for run in (first, second))
            difference = max(abs(x - y) for x, y in zip(a, b))
            print(f"{model:<34}{split:<12}{len(ids):>6}{sum(labels):>11}{difference:>12.2e}"
                  f"{statistics.auc_with_ci(labels, a)['auc']:>8.4f}"
                  f"{statistics.auc_with_ci(labels, b)['auc']:>8.4f}")


def _pipeline_name(workdir: str) -> str:
    import yaml
    with open(os.path.join(workdir, "nih.yaml")) as f:
        return yaml.safe_load(f)["pipeline_name"]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    crop = "--no-crop" not in argv
    name = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "nih")
    if not os.path.isdir(NIH):
        print("\nNIH benchmark skipped: ../shared/data/nih-cxr14-128 is not present")
        return 0
    # A flag, not an environment variable: ./cardio makes paths on its command line reachable.
    workdir = next((a.split("=", 1)[1] for a in argv if a.startswith("--workdir=")), None) \
        or tempfile.mkdtemp(prefix="cardio-nih-")
    os.makedirs(workdir, exist_ok=True)
    env = {**os.environ, "CARDIO_PATIENT_SALT": os.environ.get("CARDIO_PATIENT_SALT",
                                                               "nih-benchmark-salt")}
    data = os.path.join(workdir, "data")
    seconds = {}
    _, seconds["convert"] = _cardio(["data", "csv", "--csv", os.path.join(NIH, "labels.csv"),
                                     "--images", os.path.join(NIH, "images"), "--out", data,
                                     "--id-map", os.path.join(workdir, "id-map.csv"),
                                     *(["--wingspan", WINGSPAN, "--external-site", "wingspan"]
                                       if name == "nih-wingspan" else [])], env)
    config_path = _config_file(workdir, crop, name)
    summary, seconds["run"] = _cardio(["pipeline", "run", "--config", config_path,
                                       "--data-root", data, "--workdir", workdir], env)
    report(workdir, config_path, seconds, summary)
    print(f"Outputs: {workdir}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["compare"]:   # compare WORKDIR_WITH_CROP WORKDIR_WITHOUT_CROP
        compare_crop(*sys.argv[2:4])
    elif sys.argv[1:2] == ["same"]:    # same WORKDIR_A WORKDIR_B
        compare_runs(*sys.argv[2:4])
    else:
        sys.exit(main())
