"""Checks a span against the configuration before anything runs.

ExampleValidator would stop a span with a site outside the schema's domain, but only after
ingestion and statistics; a platform team pointing the pipeline at its own data should learn at
once, and by name, which sites (or views) its configuration lacks, and which evaluated split has
too few positives (`min_split_positives`) for its figures to mean anything.
"""
from __future__ import annotations

import collections
import os
import re

from cardio import features as F


class SpanError(ValueError):
    """The span cannot run under this configuration; the message names the span and values."""


def span_numbers(data_root: str) -> list[int]:
    import tensorflow as tf

    names = [os.path.basename(p.rstrip("/")) for p in tf.io.gfile.glob(os.path.join(data_root, "span-*"))]
    return sorted(int(m.group(1)) for m in map(re.compile(r"span-(\d+)$").match, names) if m)


def selected_spans(data_root: str, spans) -> list[int]:
    """The spans ImportExampleGen will read: the configured range, or the newest."""
    present = span_numbers(data_root)
    if not present:
        raise SpanError(f"{data_root}: no span-N directory (convert data with `cardio data ...`)")
    if spans is None:
        return present[-1:]
    chosen = [s for s in present if spans[0] <= s <= spans[1]]
    if not chosen:
        raise SpanError(f"{data_root}: no span in the configured range {list(spans)} "
                        f"(present: {present})")
    return chosen


def tally(data_root: str, span: int) -> dict:
    """{"site": Counter, "view": Counter} over every split of one span, and "splits":
    {split: {"normal": n, "cardiomegaly": n}} (the split is the directory the converter wrote)."""
    import tensorflow as tf

    spec = {F.SITE: tf.io.FixedLenFeature([], tf.string, default_value=""),
            F.VIEW: tf.io.FixedLenFeature([], tf.string, default_value=""),
            F.LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=-1)}
    counts = {F.SITE: collections.Counter(), F.VIEW: collections.Counter()}
    splits = {}
    for split in F.SPLITS:
        files = tf.io.gfile.glob(os.path.join(data_root, f"span-{span}", split, "*.tfrecord*"))
        classes = collections.Counter()
        dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(1024).map(
            lambda raw: tf.io.parse_example(raw, spec))
        for batch in dataset if files else ():
            for key in counts:
                counts[key].update(v.decode() for v in batch[key].numpy())
            classes.update(F.CLASS_NAMES[v] for v in batch[F.LABEL].numpy() if v in (0, 1))
        splits[split] = {name: classes[name] for name in F.CLASS_NAMES}
    return {**counts, "splits": splits}


def check_positives(config, where: str, splits: dict) -> None:
    """SpanError naming the split and its count when an evaluated split (validation, test, and
    external when one is configured) has fewer positives than `min_split_positives`: a threshold,
    calibration or gate resting on a handful of positives is not a result."""
    for split in config.scored_splits:
        positives = splits.get(split, {}).get(F.CLASS_NAMES[1], 0)
        if positives < config.min_split_positives:
            raise SpanError(
                f"{where}: the {split} split has {positives} cardiomegaly image(s) (and "
                f"{splits.get(split, {}).get(F.CLASS_NAMES[0], 0)} normal), fewer than "
                f"min_split_positives={config.min_split_positives}; the run stops before "
                f"training. Add data (a larger export or more spans), or lower the minimum "
                f"knowingly")


def check(config, data_root: str) -> dict:
    """Raises SpanError naming the sites or views of the span the configuration does not list,
    or an evaluated split with too few positives; returns {span: {"site": {...}, "view": {...},
    "splits": {split: {"normal", "cardiomegaly"}}}}."""
    found = {}
    for span in selected_spans(data_root, config.spans):
        counts = tally(data_root, span)
        unknown_sites = sorted(set(counts[F.SITE]) - set(config.sites))
        if unknown_sites:
            raise SpanError(
                f"{data_root}/span-{span}: site(s) {', '.join(unknown_sites)} are not in the "
                f"configuration (internal_sites {list(config.internal_sites)}, external_site "
                f"{config.external_site}); add them there, or convert the span with the sites "
                f"you configured")
        unknown_views = sorted(set(counts[F.VIEW]) - set(config.views) - {""})
        if unknown_views:
            raise SpanError(f"{data_root}/span-{span}: view(s) {', '.join(unknown_views)} are not "
                            f"in the configuration's views {list(config.views)}")
        found[span] = {k: dict(v) for k, v in counts.items()}
    check_positives(config, f"{data_root}/span-{','.join(map(str, found))}", split_totals(found))
    return found


def split_totals(found: dict) -> dict:
    """{split: {"normal", "cardiomegaly"}} over the spans `check` read: the pipeline reads them
    together, so their counts add up."""
    return {split: {name: sum(span["splits"][split][name] for span in found.values())
                    for name in F.CLASS_NAMES} for split in F.SPLITS}
