"""Checks a span against the configuration before anything runs.

ExampleValidator would stop a span with a site outside the schema's domain, but only after
ingestion and statistics; a platform team pointing the pipeline at its own data should learn at
once, and by name, which sites (or views) its configuration lacks.
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
    """{"site": Counter, "view": Counter} over every split of one span."""
    import tensorflow as tf

    files = tf.io.gfile.glob(os.path.join(data_root, f"span-{span}", "*", "*.tfrecord*"))
    spec = {F.SITE: tf.io.FixedLenFeature([], tf.string, default_value=""),
            F.VIEW: tf.io.FixedLenFeature([], tf.string, default_value="")}
    counts = {F.SITE: collections.Counter(), F.VIEW: collections.Counter()}
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(1024).map(
        lambda raw: tf.io.parse_example(raw, spec))
    for batch in dataset:
        for key in counts:
            counts[key].update(v.decode() for v in batch[key].numpy())
    return counts


def check(config, data_root: str) -> dict:
    """Raises SpanError naming the sites or views of the span the configuration does not list;
    returns {span: {"site": {...}, "view": {...}}}."""
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
    return found
