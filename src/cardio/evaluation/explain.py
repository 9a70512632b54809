"""Where a served model looks: Grad-CAM and guided backprop for any radiograph, from the pushed
SavedModel's `explain` signature (see cardio.imaging.saliency), as figures for review.

One figure per image: the original with the lung crop box (and any crop QC flag), the crop as
the classifier saw it, the Grad-CAM heat map over the crop, and the guided-backprop map.
`comparison_figure` puts several models side by side (the study's Figure 6: one column pair per
weighting strategy). Everything runs on the exported model, so it explains exactly what TF
Serving serves.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re

import numpy as np
import tensorflow as tf

from cardio import features as F
from cardio.imaging import crop, saliency
from cardio.imaging.decode import decode_radiograph

BATCH = 8


class ExplainError(ValueError):
    pass


@dataclasses.dataclass
class Explanation:
    name: str
    image: np.ndarray            # the original radiograph, float [H, W] in [0, 1]
    model_input: np.ndarray      # the crop the classifier saw, float [S, S], grey level 0-255
    probability: float
    label: int                   # at the model's operating threshold
    logit: float
    box: np.ndarray              # crop box [y0, x0, y1, x1], fractions of the original
    qc_flags: list               # names of the crop QC flags raised (centre-crop fallback)
    gradcam: np.ndarray          # [S, S], >= 0, logit units
    guided_backprop: np.ndarray  # [S, S], signed


@dataclasses.dataclass
class ExplainModel:
    directory: str
    loaded: object           # the loaded SavedModel: it owns the signature's variables
    metadata: dict

    @property
    def signature(self):
        return self.loaded.signatures[saliency.EXPLAIN]

    @property
    def cropped(self) -> bool:
        return bool(self.metadata.get("crop_size"))

    @property
    def title(self) -> str:
        backbone, weighting = self.metadata.get("backbone"), self.metadata.get("weighting")
        return " ".join(str(v) for v in (backbone, weighting) if v) or os.path.basename(
            os.path.normpath(self.directory))


def newest_version(model_dir: str) -> str:
    """A model's base path (`<serving_root>/<model>`) -> its newest version directory, as TF
    Serving picks it; any other directory is returned as it is."""
    if tf.io.gfile.exists(os.path.join(model_dir, "saved_model.pb")):
        return model_dir
    versions = [v.rstrip("/") for v in tf.io.gfile.listdir(model_dir) if v.rstrip("/").isdigit()]
    versions = [v for v in versions
                if tf.io.gfile.exists(os.path.join(model_dir, v, "saved_model.pb"))]
    return os.path.join(model_dir, max(versions, key=int)) if versions else model_dir


def load(model_dir: str, loaded=None) -> ExplainModel:
    """Loads a pushed or exported cardio model: a version directory
    (`<serving_root>/<model>/<version>/`) or a model's base path (its newest version).
    `loaded`: that directory's `tf.saved_model.load` result, when the caller has it already."""
    if not tf.io.gfile.isdir(model_dir):
        raise ExplainError(f"{model_dir}: no such model directory")
    model_dir = newest_version(model_dir)
    if not tf.io.gfile.exists(os.path.join(model_dir, "saved_model.pb")):
        raise ExplainError(f"{model_dir}: not a SavedModel (no saved_model.pb); pass "
                           f"<serving root>/<model>[/<version>]")
    metadata_file = os.path.join(model_dir, "assets.extra", "cardio_metadata.json")
    if not tf.io.gfile.exists(metadata_file):
        raise ExplainError(f"{model_dir}: not a cardio export "
                           f"(no assets.extra/cardio_metadata.json)")
    with tf.io.gfile.GFile(metadata_file) as f:
        metadata = json.load(f)
    loaded = loaded if loaded is not None else tf.saved_model.load(model_dir)
    if saliency.EXPLAIN not in loaded.signatures:
        raise ExplainError(f"{model_dir}: exported without the '{saliency.EXPLAIN}' signature "
                           f"(has {sorted(loaded.signatures)}); retrain or re-export it with this "
                           f"version of trainer.export")
    return ExplainModel(model_dir, loaded, metadata)


def decode_image(name: str, encoded: bytes) -> np.ndarray:
    """Encoded PNG/JPEG -> float [H, W] in [0, 1], exactly as serving decodes it."""
    try:
        return decode_radiograph(tf.constant(encoded)).numpy()[..., 0]
    except (tf.errors.InvalidArgumentError, ValueError) as error:
        message = getattr(error, "message", str(error)).strip().splitlines()[0]
        raise ExplainError(f"{name}: not a decodable PNG or JPEG image ({message})") from None


def explain(model, images, batch_size: int = BATCH) -> list[Explanation]:
    """Runs the `explain` signature. `model`: a directory or `load()`'s result; `images`:
    (name, encoded bytes) pairs of raw radiographs (PNG 8/16-bit or JPEG). Every image is
    decoded first, so an unreadable one fails before any work, naming it."""
    model = load(model) if isinstance(model, str) else model
    images = list(images)
    originals = [decode_image(name, encoded) for name, encoded in images]
    results = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        out = {k: v.numpy() for k, v in model.signature(
            image_bytes=tf.constant([encoded for _, encoded in batch])).items()}
        for i, (name, _) in enumerate(batch):
            results.append(Explanation(
                name=name, image=originals[start + i], model_input=out[saliency.MODEL_INPUT][i],
                probability=float(out["probability"][i]), label=int(out["predicted_label"][i]),
                logit=float(out[saliency.LOGIT][i]), box=out[F.CROP_BOX][i],
                qc_flags=[f for f, on in zip(crop.QC_FLAGS, out[F.CROP_QC][i]) if on],
                gradcam=out[saliency.GRADCAM][i], guided_backprop=out[saliency.GUIDED_BACKPROP][i]))
    return results


def mass_ratio(e: Explanation, region: np.ndarray) -> float:
    """The fraction of the Grad-CAM mass inside `region` (a mask on the original image, e.g. a
    synthetic radiograph's heart) over the region's share of the crop's area: 1 for a map that
    ignores the region, above 1 when the map concentrates on it. NaN for an empty map."""
    mask = tf.constant(region.astype(np.float32)[..., None])
    size = e.gradcam.shape[0]
    inside = crop.crop_and_resize(mask, tf.constant(e.box, tf.float32), size).numpy()[..., 0]
    total = float(e.gradcam.sum())
    if total <= 0 or inside.mean() <= 0:
        return float("nan")
    return float((e.gradcam * inside).sum() / total / inside.mean())


def heart_mass_ratios(model, file_pattern: str, limit: int = 32) -> dict:
    """The Grad-CAM heart check on synthetic records (GZIP TFRecords of tf.Examples carrying
    the heart mask, as `cardio data synth` writes): `mass_ratio` on the heart for up to `limit`
    cardiomegaly images, through the model's own crop. A model that found the evidence has a
    mean well above 1."""

    model = load(model) if isinstance(model, str) else model
    files = sorted(tf.io.gfile.glob(file_pattern))
    if not files:
        raise ExplainError(f"{file_pattern}: no files")
    images, hearts = [], []
    for raw in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        feature = tf.train.Example.FromString(raw.numpy()).features.feature
        if feature[F.LABEL].int64_list.value[0] != 1 or F.HEART_MASK not in feature:
            continue
        image_id = feature[F.IMAGE_ID].bytes_list.value[0].decode()
        images.append((image_id, feature[F.IMAGE].bytes_list.value[0]))
        mask = tf.io.decode_png(feature[F.HEART_MASK].bytes_list.value[0]).numpy()[..., 0]
        hearts.append(mask > 127)
        if len(images) == limit:
            break
    ratios = [mass_ratio(e, heart) for e, heart in zip(explain(model, images), hearts)]
    valid = [r for r in ratios if not np.isnan(r)]
    return {"images": len(ratios), "empty_maps": len(ratios) - len(valid),
            "mean": float(np.mean(valid)) if valid else None,
            "min": float(np.min(valid)) if valid else None,
            "above_1": sum(r > 1 for r in valid)}


# --- figures ---------------------------------------------------------------------------------

DISPLAY_SIZE = 768   # originals are shown downsampled to this long side


def _display(image: np.ndarray) -> np.ndarray:
    h, w = image.shape
    scale = DISPLAY_SIZE / max(h, w)
    if scale >= 1:
        return image
    size = [max(1, round(h * scale)), max(1, round(w * scale))]
    return tf.image.resize(image[..., None], size, method="area", antialias=True).numpy()[..., 0]


def _guided_display(gradient: np.ndarray) -> np.ndarray:
    """Signed gradient -> [0, 1] with zero at mid-grey, clipped at the 99.5th |g| percentile."""
    scale = float(np.percentile(np.abs(gradient), 99.5)) or 1.0
    return np.clip(0.5 + 0.5 * gradient / scale, 0, 1)


def _draw_original(ax, e: Explanation, cropped: bool = True):
    import matplotlib.pyplot as plt

    shown = _display(e.image)
    h, w = shown.shape
    ax.imshow(shown, cmap="gray", vmin=0, vmax=1)
    y0, x0, y1, x1 = np.asarray(e.box) * [h, w, h, w]
    colour = "orange" if e.qc_flags else "deepskyblue"
    ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color=colour, lw=1.5))
    note = (f"crop fallback: {', '.join(e.qc_flags)}" if e.qc_flags else "lung crop box"
            if cropped else "no crop stage: the whole image")
    ax.set_title(f"original {e.image.shape[1]}x{e.image.shape[0]}\n{note}", fontsize=9)


def _draw_crop(ax, e: Explanation):
    ax.imshow(e.model_input, cmap="gray", vmin=0, vmax=255)
    ax.set_title(f"crop, as the model saw it\n{e.model_input.shape[1]} px", fontsize=9)


def _draw_gradcam(ax, e: Explanation, label: str = ""):
    ax.imshow(e.model_input, cmap="gray", vmin=0, vmax=255)
    peak = float(e.gradcam.max())
    if peak > 0:
        ax.imshow(e.gradcam / peak, cmap="jet", alpha=0.4, vmin=0, vmax=1)
        ax.set_title(f"{label}Grad-CAM\nP={e.probability:.3f}", fontsize=9)
    else:   # no spatial evidence for cardiomegaly anywhere: say so rather than draw noise
        ax.set_title(f"{label}Grad-CAM: no positive evidence\nP={e.probability:.3f}", fontsize=9)


def _draw_guided(ax, e: Explanation, label: str = ""):
    ax.imshow(_guided_display(e.guided_backprop), cmap="gray", vmin=0, vmax=1)
    ax.set_title(f"{label}guided backprop\n(bright: raises the score)", fontsize=9)


def figure(e: Explanation, path: str, model_title: str = "", threshold: float | None = None,
           cropped: bool = True) -> str:
    """One image's four panels: original with crop box, crop, Grad-CAM, guided backprop.
    `cropped`: whether the model crops (its metadata's crop_size), for the first panel's note."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(13, 3.9))
    _draw_original(axes[0], e, cropped)
    _draw_crop(axes[1], e)
    _draw_gradcam(axes[2], e)
    _draw_guided(axes[3], e)
    for ax in axes:
        ax.axis("off")
    verdict = "cardiomegaly" if e.label else "no cardiomegaly"
    at = f" at threshold {threshold:.3f}" if threshold is not None else ""
    fig.suptitle(f"{e.name}: P(cardiomegaly) = {e.probability:.3f}, {verdict}{at}"
                 + (f"   [{model_title}]" if model_title else ""), fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.94))   # room for the title above the panel titles
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def overlay_name(name: str, taken: set) -> str:
    """A file name for an image's figure: its stem, made safe and unique within one call."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.splitext(os.path.basename(name))[0]) or "image"
    candidate, n = f"{stem}.png", 1
    while candidate in taken:
        n += 1
        candidate = f"{stem}-{n}.png"
    taken.add(candidate)
    return candidate


def write_overlays(model_dir, images, out_dir: str) -> list[str]:
    """One PNG per (name, encoded bytes) image in `out_dir`: original with crop box, crop,
    Grad-CAM and guided backprop from the served model in `model_dir` (or `load()`'s result).
    Returns the paths written."""
    model = load(model_dir) if isinstance(model_dir, str) else model_dir
    return write_figures(model, explain(model, images), out_dir)


def write_figures(model: ExplainModel, explanations: list, out_dir: str) -> list[str]:
    """`write_overlays` for explanations already computed with `model` (`explain()`'s result)."""
    threshold = model.metadata.get("operating_threshold")
    taken: set = set()
    return [figure(e, os.path.join(out_dir, overlay_name(e.name, taken)), model.title, threshold,
                   model.cropped)
            for e in explanations]


def comparison_figure(per_model: dict, path: str) -> str:
    """The study's Figure 6: one row per image; original with crop box and the crop, then a
    Grad-CAM and a guided-backprop column per model. `per_model`: {label: `explain()`'s result}
    (e.g. {"75-25": [...], "50-50": [...]}), every list on the same images in the same order."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(per_model.values()))
    columns = 2 + 2 * len(per_model)
    fig, axes = plt.subplots(len(first), columns, figsize=(2.6 * columns, 2.9 * len(first)),
                             squeeze=False)
    for row, e in enumerate(first):
        _draw_original(axes[row, 0], e)
        _draw_crop(axes[row, 1], e)
        axes[row, 0].set_ylabel(e.name, fontsize=9)
        for k, (label, explanations) in enumerate(per_model.items()):
            _draw_gradcam(axes[row, 2 + 2 * k], explanations[row], f"{label}: ")
            _draw_guided(axes[row, 3 + 2 * k], explanations[row], f"{label}: ")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


# --- files (the CLI) -------------------------------------------------------------------------

def read_file(path: str) -> bytes:
    """A radiograph file -> encoded bytes the signature takes. PNG and JPEG go as they are;
    DICOM is normalised (modality LUT, VOI LUT or window, MONOCHROME1 inversion) to a 16-bit
    PNG, the representation every converter stores."""
    if path.lower().endswith((".dcm", ".dicom")):
        from cardio.imaging.files import normalised_png
        return normalised_png(path)   # DicomError names the file and the reason
    with open(path, "rb") as f:
        encoded = f.read()
    decode_image(path, encoded)       # fail here, naming the file, not inside a batch
    return encoded


def explain_files(model, paths: list, out_dir: str, progress=None, log=None) -> dict:
    """`cardio explain`: a figure per readable file; unreadable files are reported, not fatal.
    `model`: a directory or `load()`'s result."""
    model = load(model) if isinstance(model, str) else model
    threshold = model.metadata.get("operating_threshold")
    taken: set = set()
    results, failed = [], []
    for path in paths:
        try:
            encoded = read_file(path)
        except (OSError, ValueError) as error:   # missing, corrupt, not an image, bad DICOM
            failed.append({"file": path, "error": str(error)})
            if log:
                log(f"{path}: FAILED {error}")
            if progress:
                progress(1)
            continue
        e, = explain(model, [(path, encoded)])
        overlay = figure(e, os.path.join(out_dir, overlay_name(path, taken)), model.title,
                         threshold, model.cropped)
        results.append({"file": path, "probability": round(e.probability, 6), "label": e.label,
                        "crop_qc": e.qc_flags, "overlay": os.path.abspath(overlay)})
        if log:
            verdict = "cardiomegaly" if e.label else "no cardiomegaly"
            log(f"{path}: P(cardiomegaly)={e.probability:.3f} -> {verdict}; overlay {overlay}")
        if progress:
            progress(1)
    return {"model": os.path.abspath(model.directory), "operating_threshold": threshold,
            "explained": len(results), "failed": failed, "images": results}
