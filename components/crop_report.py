"""CropReport: the study's dataset visualisation, as a pipeline artifact.

A t-SNE of the radiographs before and after cropping, coloured by site, saved as a PNG, with a
number beside it: how well a simple classifier (logistic regression on 32x32 thumbnails,
5-fold cross-validated) tells the sites apart on raw vs cropped images (ROC AUC; 0.5 means the
sites look alike). Cropping should bring the sites' image distributions closer.
"""
import json
import os
import warnings

import numpy as np
import tensorflow as tf
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types.artifact import Artifact
from tfx.types.standard_artifacts import Examples

from cardio import features as F
from cardio.imaging import decode


class DatasetReport(Artifact):
    """A report about a dataset (plots and figures), for people to look at."""
    TYPE_NAME = "cardio.DatasetReport"  # KFP schema title: cardio/__init__.py resolves it


THUMBNAIL = 32
REPORT_PNG = "tsne_sites.png"
REPORT_JSON = "site_separability.json"


def thumbnails(examples_uri: str, splits, limit_per_split: int):
    """(thumbnails [N, 32*32], sites [N]) from the given splits of an Examples artifact."""
    vectors, sites = [], []
    for split in splits:
        files = tf.io.gfile.glob(os.path.join(examples_uri, f"Split-{split}", "*"))
        dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").take(limit_per_split)
        for raw in dataset:
            example = tf.train.Example.FromString(raw.numpy())
            image = decode.decode_radiograph(example.features.feature[F.IMAGE].bytes_list.value[0])
            small = tf.image.resize(image, [THUMBNAIL, THUMBNAIL], method="area").numpy().ravel()
            vectors.append((small - small.mean()) / (small.std() + 1e-6))
            sites.append(example.features.feature[F.SITE].bytes_list.value[0].decode())
    return np.array(vectors), np.array(sites)


def site_separability(vectors, sites, seed: int = 0) -> float:
    """Cross-validated ROC AUC of a logistic regression telling the two most common sites apart."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    names, counts = np.unique(sites, return_counts=True)
    if len(names) < 2:
        raise ValueError("site separability needs images from two sites")
    a, b = names[np.argsort(counts)[-2:]]
    keep = np.isin(sites, [a, b])
    x, y = vectors[keep], (sites[keep] == a).astype(int)
    folds = int(min(5, np.bincount(y).min()))
    with warnings.catch_warnings():
        # scikit-learn 1.5 passes L-BFGS-B its print level (`iprint`, linear_model/_logistic.py),
        # which the locked SciPy 1.18 no longer takes (optimize/_lbfgsb_py.py has no such option)
        # and warns of on every fit; it only ever set what L-BFGS-B prints.
        warnings.filterwarnings("ignore", message="Unknown solver options: iprint")
        scores = cross_val_predict(LogisticRegression(max_iter=2000, C=0.1), x, y, cv=folds,
                                   method="predict_proba")[:, 1]
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(y, scores))


def plot(path: str, panels: dict, seed: int = 0):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5.2))
    for ax, (title, (vectors, sites, auc)) in zip(np.atleast_1d(axes), panels.items()):
        # Exact gradients: for a few hundred thumbnails about twice as fast as Barnes-Hut.
        embedded = TSNE(n_components=2, perplexity=min(30, len(vectors) // 4), random_state=seed,
                        init="pca", method="exact" if len(vectors) <= 1000 else "barnes_hut"
                        ).fit_transform(vectors)
        for site in sorted(set(sites)):
            points = embedded[sites == site]
            ax.scatter(points[:, 0], points[:, 1], s=8, alpha=0.7, label=site)
        ax.set_title(f"{title}: site separability AUC {auc:.2f}")
        ax.set_xticks([]); ax.set_yticks([])
        ax.legend(loc="best", fontsize=8)
    figure.suptitle("t-SNE of radiographs by site (0.5 AUC = the sites look alike)")
    figure.tight_layout()
    # Through tf.io.gfile: on Kubeflow the report artifact is in object storage.
    with tf.io.gfile.GFile(path, "wb") as f:
        figure.savefig(f, format="png", dpi=80)
    plt.close(figure)


@component
def CropReport(raw_examples: InputArtifact[Examples], cropped_examples: InputArtifact[Examples],
               report: OutputArtifact[DatasetReport], limit_per_split: Parameter[int] = 150):
    splits = [F.TRAIN, F.TEST, F.EXTERNAL]
    panels = {}
    for title, artifact in (("before cropping", raw_examples), ("after cropping", cropped_examples)):
        vectors, sites = thumbnails(artifact.uri, splits, limit_per_split)
        panels[title] = (vectors, sites, site_separability(vectors, sites))
    tf.io.gfile.makedirs(report.uri)
    plot(os.path.join(report.uri, REPORT_PNG), panels)
    with tf.io.gfile.GFile(os.path.join(report.uri, REPORT_JSON), "w") as f:
        json.dump({"site_auc_raw": panels["before cropping"][2],
                   "site_auc_cropped": panels["after cropping"][2],
                   "images": len(panels["before cropping"][1])}, f, indent=2)
