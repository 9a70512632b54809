"""A contact sheet of synthetic radiographs with their ground-truth outlines, for people to look at."""
from __future__ import annotations

import os

import numpy as np

from cardio.data import synth


def contact_sheet(path: str, n: int = 8, seed: int = 0, columns: int = 4):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = -(-n // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.6 * rows))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, (index, site, patient) in zip(np.ravel(axes), synth.cohort(seed, n)):
        r = synth.sample(seed, index, site, patient)
        image = r.image.astype(np.float32) / np.iinfo(r.image.dtype).max
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        ax.contour(r.lungs, levels=[0.5], colors="deepskyblue", linewidths=0.8)
        ax.contour(r.heart, levels=[0.5], colors="orangered", linewidths=0.8)
        verdict = "cardiomegaly" if r.label else "normal"
        ax.set_title(f"{site}, {r.image.shape[1]}x{r.image.shape[0]}, {r.image.dtype.itemsize * 8}-bit\n"
                     f"CTR {r.ctr:.2f}: {verdict}", fontsize=9)
    figure.suptitle("Synthetic PA radiographs: lungs (blue) and heart (red) ground truth", fontsize=11)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
