"""The cardiothoracic ratio against ground truth: `python -m benchmarks ctr [--nih-run=WORKDIR]`.

On the Wingspan radiographs (../shared/data/wingspan-ctr-512: 143 frontal films of a second
hospital, each with heart and lung masks and its CTR) it runs the served CTR's own compiled ops
(`cardio.imaging.ctr.batch_measure`: decode, the lung and heart U-Nets at 256 px, the widths)
and prints, separately for the radiographs the heart U-Net held out (file-name hash, never
trained on) and those it trained on (for reference only):
  - CTR agreement with labels.csv's `ctr`: mean absolute error, bias, Pearson r, the largest error;
  - where the error comes from: the CTR from the predicted heart with the ground-truth lungs, and
    from the ground-truth heart with the predicted lungs (the lung U-Net never saw Wingspan);
  - the CTR as a cardiomegaly score against `label` (CTR > 0.5): AUC with its DeLong 95% CI and
    the sensitivity and specificity of `ctr > 0.5`;
  - heart Dice on the held-out part, and the lung U-Net's Dice on Wingspan's lung fields.
With `--nih-run=WORKDIR` (a finished `cardio pipeline run --config nih` workdir: its raw test
split in WORKDIR/data/span-*/test and its model comparison's predictions.csv), also the CTR's
AUC against NIH's text-mined labels on the NIH test split beside each CNN's, DeLong's paired test.
Ends with one JSON object on the last line.
"""
from __future__ import annotations

import csv
import glob
import json
import os
import sys
import time

import numpy as np

from cardio.evaluation.comparison import agreement   # as the model comparison reports it

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WINGSPAN = os.path.join(os.path.dirname(REPO), "shared", "data", "wingspan-ctr-512")
BATCH = 16


def _measure_files(measure, encoded: list) -> dict:
    import tensorflow as tf
    out = {"ctr": [], "heart_box": [], "thorax_box": [], "flags": []}
    for start in range(0, len(encoded), BATCH):
        value, heart, thorax, flags = measure(tf.constant(encoded[start:start + BATCH]))
        out["ctr"].append(value.numpy())
        out["heart_box"].append(heart.numpy())
        out["thorax_box"].append(thorax.numpy())
        out["flags"].append(flags.numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def _measured_agreement(truth, predicted) -> dict:
    """`agreement` over the images where a CTR was measured (not -1), with how many were not."""
    ok = predicted >= 0
    return {**agreement(truth[ok], predicted[ok]), "not_measured": int((~ok).sum())}


def score_table(labels, scores) -> dict:
    from cardio.evaluation import statistics as S
    auc = S.auc_with_ci(labels, scores)
    at = S.threshold_metrics(labels, scores, 0.5 + 1e-9)   # ctr > 0.5, as the label
    return {"auc": auc["auc"], "auc_ci": auc["ci"], "sensitivity": at["sensitivity"],
            "specificity": at["specificity"], "positives": int(np.sum(labels)),
            "n": int(len(labels))}


def _decomposition(names: list, lung_model, heart_model) -> dict:
    """CTR from (predicted heart, true lungs) and (true heart, predicted lungs), per image."""
    import tensorflow as tf

    from cardio.imaging import UNET_INPUT_SIZE, crop, ctr, unet

    measure = tf.function(ctr.measure, input_signature=[
        tf.TensorSpec([UNET_INPUT_SIZE, UNET_INPUT_SIZE], tf.float32)] * 2)

    def at_input(mask):
        return tf.image.resize(mask[..., None].astype(np.float32),
                               [UNET_INPUT_SIZE, UNET_INPUT_SIZE], method="area")[..., 0]

    result = {"heart_only": [], "lungs_only": [], "lung_dice": [], "lung_dice_crop": []}
    for name in names:
        image = unet.read_image(os.path.join(WINGSPAN, "images", name))
        plain = crop.unet_input(tf.constant(image[..., None]))
        lungs_p, heart_p = ctr.probabilities(lung_model, heart_model, tf.constant(image[..., None]))
        crop_lungs = lung_model(plain[tf.newaxis], training=False)[0, :, :, 0]
        true_lungs = (unet.read_mask(os.path.join(WINGSPAN, "masks", "left_lung", name)) |
                      unet.read_mask(os.path.join(WINGSPAN, "masks", "right_lung", name)))
        true_heart = unet.read_mask(os.path.join(WINGSPAN, "masks", "heart", name))
        result["heart_only"].append(float(measure(at_input(true_lungs), heart_p)[0]))
        result["lungs_only"].append(float(measure(lungs_p, at_input(true_heart))[0]))
        for key, p in (("lung_dice", lungs_p), ("lung_dice_crop", crop_lungs)):
            full = tf.image.resize(p[..., None], true_lungs.shape, method="bilinear")[..., 0]
            result[key].append(unet.dice(full.numpy() >= 0.5, true_lungs))
    return result


def wingspan(measure, lung_model, heart_model) -> dict:
    from cardio.imaging import ctr, unet

    with open(os.path.join(WINGSPAN, "labels.csv")) as f:
        rows = list(csv.DictReader(f))
    fraction = unet.TARGETS["heart"].held_out_fraction
    names = [r["path"] for r in rows]
    truth = np.array([float(r["ctr"]) for r in rows])
    labels = np.array([int(r["label"]) for r in rows])
    held = np.array([unet.held_out(n, fraction) for n in names])
    started = time.perf_counter()
    encoded = [open(os.path.join(WINGSPAN, "images", n), "rb").read() for n in names]
    measured = _measure_files(measure, encoded)
    seconds = time.perf_counter() - started
    parts = _decomposition(names, lung_model, heart_model)
    flagged = measured["flags"].any(axis=1)
    result = {"seconds": seconds, "flag_counts": {
        name: int(measured["flags"][:, i].sum()) for i, name in enumerate(ctr.CTR_QC_FLAGS)}}
    for part, chosen in (("held_out", held), ("trained_on", ~held)):
        value = measured["ctr"][chosen]
        ok = value >= 0
        result[part] = {
            "ctr": agreement(truth[chosen][ok], value[ok]),
            "not_measured": int((~ok).sum()), "flagged": int(flagged[chosen].sum()),
            "ctr_unflagged": (agreement(truth[chosen & ~flagged], measured["ctr"][chosen & ~flagged])
                              if (chosen & ~flagged).sum() > 2 else None),
            "ctr_predicted_heart_true_lungs": _measured_agreement(
                truth[chosen], np.array(parts["heart_only"])[chosen]),
            "ctr_true_heart_predicted_lungs": _measured_agreement(
                truth[chosen], np.array(parts["lungs_only"])[chosen]),
            "score": score_table(labels[chosen], value),
            "truth_score": score_table(labels[chosen], truth[chosen]),
            "lung_dice": float(np.mean(np.array(parts["lung_dice"])[chosen])),
            "lung_dice_crop": float(np.mean(np.array(parts["lung_dice_crop"])[chosen])),
        }
    result["heart_dice_held_out"] = unet.evaluate(
        os.path.join(WINGSPAN, "images"), os.path.join(WINGSPAN, "masks", "heart"),
        held_out_only=True, target="heart")
    return result


def _raw_test_split(workdir: str) -> dict:
    """{image_id: (label, encoded image)} of the converted NIH test split."""
    import tensorflow as tf

    from cardio import features as F
    files = sorted(glob.glob(os.path.join(workdir, "data", "span-*", "test", "*")))
    if not files:
        raise SystemExit(f"no raw test split under {workdir}/data/span-*/test")
    cases = {}
    for raw in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        example = tf.train.Example.FromString(raw.numpy())
        feature = example.features.feature
        cases[feature[F.IMAGE_ID].bytes_list.value[0].decode()] = (
            int(feature[F.LABEL].int64_list.value[0]), feature[F.IMAGE].bytes_list.value[0])
    return cases


def nih(measure, workdir: str) -> dict:
    from benchmarks.nih_pipeline import _pipeline_name, _predictions
    from cardio.evaluation import statistics as S

    cases = _raw_test_split(workdir)
    ids = sorted(cases)
    labels = np.array([cases[i][0] for i in ids])
    measured = _measure_files(measure, [cases[i][1] for i in ids])
    value = measured["ctr"]
    # Unmeasured (-1) ranks lowest; counted below.
    result = {"n": len(ids), "positives": int(labels.sum()),
              "not_measured": int((value < 0).sum()),
              "flagged": int(measured["flags"].any(axis=1).sum()),
              "ctr_mean": {"cardiomegaly": float(value[(labels == 1) & (value >= 0)].mean()),
                           "normal": float(value[(labels == 0) & (value >= 0)].mean())},
              "ctr_over_half": {"cardiomegaly": float((value[labels == 1] > 0.5).mean()),
                                "normal": float((value[labels == 0] > 0.5).mean())},
              "ctr": score_table(labels, value), "models": {}}
    try:
        predictions = _predictions(workdir, _pipeline_name(workdir))   # nih or nih-wingspan
    except Exception as error:      # no finished comparison in that run: the CTR's AUC alone
        result["models_error"] = f"{type(error).__name__}: {error}"
        return result
    for model, by_id in predictions.items():
        common = [i for i, name in enumerate(ids) if name in by_id and by_id[name][0] == "test"]
        if len(common) != len(ids):
            result["models_error"] = (f"{model}: {len(common)} of {len(ids)} test images in "
                                      "predictions.csv")
        cnn = np.array([by_id[ids[i]][2] for i in common])
        test = S.delong_paired(labels[common], cnn, value[common])
        result["models"][model] = {"n": len(common), "cnn_auc": test["auc_a"],
                                   "ctr_auc": test["auc_b"], "z": test["z"], "p": test["p"],
                                   "method": test["method"]}
    return result


def _f(value, digits=3):
    return "-" if value is None else f"{value:.{digits}f}"


def print_tables(result: dict) -> None:
    w = result["wingspan"]
    print("\nCTR against Wingspan's labels.csv (cardio.imaging.ctr in serving's compiled ops; "
          f"{w['seconds']:.1f} s for 143 radiographs)")
    print(f"{'images':<34}{'n':>5}{'MAE':>8}{'bias':>8}{'r':>7}{'max err':>9}{'flagged':>9}"
          f"{'AUC [95% CI]':>22}{'sens':>7}{'spec':>7}")
    for part, title in (("held_out", "held out (never trained on)"),
                        ("trained_on", "heart U-Net trained on (reference)")):
        p = w[part]
        a, s = p["ctr"], p["score"]
        print(f"{title:<34}{a['n']:>5}{a['mae']:>8.4f}{a['bias']:>8.4f}{a['pearson_r']:>7.3f}"
              f"{a['max_abs_error']:>9.3f}{p['flagged']:>9}"
              f"{_f(s['auc']) + ' [' + _f(s['auc_ci'][0], 2) + ', ' + _f(s['auc_ci'][1], 2) + ']':>22}"
              f"{_f(s['sensitivity']):>7}{_f(s['specificity']):>7}")
    print("\nWhere the held-out error comes from (MAE / bias / r):")
    h = w["held_out"]
    for key, title in (("ctr", "both masks predicted (served)"),
                       ("ctr_predicted_heart_true_lungs", "predicted heart, true lungs"),
                       ("ctr_true_heart_predicted_lungs", "true heart, predicted lungs")):
        a = h[key]
        missing = a.get("not_measured", h["not_measured"] if key == "ctr" else 0)
        print(f"  {title:<32}{a['mae']:.4f} / {a['bias']:+.4f} / {a['pearson_r']:.3f}"
              f"  (n={a['n']}; not measured: {missing})")
    print(f"\nHeart Dice, held out: {w['heart_dice_held_out']['dice']:.4f} "
          f"(n={w['heart_dice_held_out']['n']}). Lung U-Net Dice on Wingspan's lung fields (never "
          f"trained on Wingspan), held out / others: {h['lung_dice']:.4f} / "
          f"{w['trained_on']['lung_dice']:.4f} on the window-stretched radiograph (the CTR's), "
          f"{h['lung_dice_crop']:.4f} / {w['trained_on']['lung_dice_crop']:.4f} on the plain one "
          f"(the crop's). QC flags over all 143: {w['flag_counts']}")
    if "nih" in result:
        n = result["nih"]
        c = n["ctr"]
        print(f"\nNIH test split (text-mined labels): {n['n']} radiographs, {n['positives']} "
              f"cardiomegaly; CTR not measured on {n['not_measured']}, flagged on {n['flagged']}")
        print(f"  mean CTR: cardiomegaly {n['ctr_mean']['cardiomegaly']:.3f}, normal "
              f"{n['ctr_mean']['normal']:.3f}; CTR > 0.5: cardiomegaly "
              f"{n['ctr_over_half']['cardiomegaly']:.2f}, normal {n['ctr_over_half']['normal']:.2f}")
        print(f"  CTR as a score: AUC {_f(c['auc'])} [{_f(c['auc_ci'][0], 2)}, "
              f"{_f(c['auc_ci'][1], 2)}], ctr > 0.5: sensitivity {_f(c['sensitivity'])}, "
              f"specificity {_f(c['specificity'])}")
        for model, m in n["models"].items():
            print(f"  {model}: CNN AUC {m['cnn_auc']:.3f} vs CTR {m['ctr_auc']:.3f} on the same "
                  f"{m['n']} images, DeLong paired p = {m['p']:.3f} ({m['method']})")
        if n.get("models_error"):
            print(f"  CNN comparison: {n['models_error']}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    nih_run = next((a.split("=", 1)[1] for a in argv if a.startswith("--nih-run=")), None)
    if not os.path.isdir(WINGSPAN):
        print(f"ctr: {WINGSPAN} is absent; nothing to measure")
        return 0
    from cardio.imaging import ctr, unet
    lung_model, heart_model = unet.load(), unet.load(target="heart")
    measure = ctr.batch_measure(lung_model, heart_model)
    result = {"wingspan": wingspan(measure, lung_model, heart_model)}
    if nih_run:
        result["nih"] = nih(measure, nih_run)
    print_tables(result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
