"""`cardio crop`: crops a folder of radiographs of any size and format to their chest cavities.

Writes the crops as 16-bit PNGs, `crops.csv` (file, box, QC flags, or the error that stopped a
file), and for a sample of files an overlay (lung mask and box on the radiograph) for review.
"""
from __future__ import annotations

import csv
import glob
import os

import numpy as np
import tensorflow as tf

from cardio.imaging import crop, unet

EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


def _overlay(path: str, image: np.ndarray, probability: np.ndarray, box, flags):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = image.shape
    figure, ax = plt.subplots(figsize=(5, 5 * h / w))
    ax.imshow(image, cmap="gray")
    mask = tf.image.resize(probability[..., None], [h, w]).numpy()[..., 0] >= 0.5
    ax.contour(mask, levels=[0.5], colors="deepskyblue", linewidths=1)
    y0, x0, y1, x1 = np.asarray(box) * [h, w, h, w]
    ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="orangered", lw=2))
    raised = [n for n, on in zip(crop.QC_FLAGS, flags) if on]
    ax.set_title(", ".join(raised) + " (centre-crop fallback)" if raised else "crop ok", fontsize=9)
    ax.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=72)
    plt.close(figure)


def crop_folder(images_dir: str, out_dir: str, weights: str | None = None, size: int = 512,
                overlays: int = 8, progress=None) -> dict:
    files = sorted(f for f in glob.glob(os.path.join(images_dir, "*"))
                   if f.lower().endswith(EXTENSIONS))
    model = unet.load(weights)
    os.makedirs(os.path.join(out_dir, "crops"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "overlays"), exist_ok=True)
    counts = {"n": len(files), "cropped": 0, "flagged": 0, "failed": 0}
    with open(os.path.join(out_dir, "crops.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "y0", "x0", "y1", "x1", "qc_flags", "error"])
        for path in files:
            name = os.path.basename(path)
            try:
                image = tf.constant(unet.read_image(path))[..., tf.newaxis]
            except Exception as error:  # corrupt files are reported, never fatal
                counts["failed"] += 1
                writer.writerow([name, "", "", "", "", "", f"{type(error).__name__}: {error}"])
                if progress:
                    progress(1)
                continue
            probability = model(crop.unet_input(image)[tf.newaxis], training=False)[0, :, :, 0]
            cropped, box, flags = crop.crop_from_probability(image, probability, size)
            flags = flags.numpy()
            raised = [n for n, on in zip(crop.QC_FLAGS, flags) if on]
            counts["cropped"] += 1
            counts["flagged"] += bool(raised)
            tf.io.write_file(os.path.join(out_dir, "crops", os.path.splitext(name)[0] + ".png"),
                             tf.io.encode_png(cropped))
            writer.writerow([name, *np.round(box.numpy(), 5), ";".join(raised), ""])
            if counts["cropped"] <= overlays:
                _overlay(os.path.join(out_dir, "overlays", os.path.splitext(name)[0] + ".png"),
                         image.numpy()[..., 0], probability.numpy(), box.numpy(), flags)
            if progress:
                progress(1)
    return counts
