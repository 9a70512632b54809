"""Sources -> Records -> TFRecords laid out for ExampleGen.

Every source (synthetic, PadChest, OpenI, a generic CSV) first selects `Candidate`s from its
metadata alone; then patients get their splits (cardio.data.splits), images are read and normalised in a
process pool (PNG 8/16-bit, JPEG, DICOM -> MONOCHROME2 PNG), and examples are written to
`<out>/span-<N>/<split>/data-*.tfrecord.gz`, which ImportExampleGen reads with a `{SPAN}`
pattern. Patient ids are replaced by salted hashes before anything is written.

Bad inputs (missing, truncated or corrupt files, unreadable DICOM) are quarantined with their
reason in `quarantine.csv`, counted in `summary.json`, and fail the job only when their fraction
exceeds the limit. Nothing is dropped silently.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import io
import json
import multiprocessing
import os
from typing import Callable

import numpy as np
from PIL import Image

from cardio import features as F
from cardio.data import splits, synth
from cardio.data.records import Record, hash_patient_id, to_example
from cardio.data.sources import Candidate, Selection
from cardio.imaging.files import encode_png, normalised_png

DEMO_SALT = "public-demo-salt"  # synthetic patients only; real data takes CARDIO_PATIENT_SALT
DEFAULT_QUARANTINE_LIMIT = 0.05


class QuarantineLimitExceeded(RuntimeError):
    pass


@dataclasses.dataclass
class Quarantine:
    """Records that could not be converted, each with its source and the reason."""
    entries: list = dataclasses.field(default_factory=list)

    def add(self, source: str, reason: str):
        self.entries.append((source, reason))

    def reasons(self) -> dict:
        return dict(collections.Counter(reason.split(":")[0] for _, reason in self.entries))

    def write(self, path: str):
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["source", "reason"])
            writer.writerows(self.entries)

    def check(self, total: int, limit: float):
        fraction = len(self.entries) / max(total, 1)
        if fraction > limit:
            raise QuarantineLimitExceeded(
                f"{len(self.entries)} of {total} records quarantined ({fraction:.1%} > limit "
                f"{limit:.1%}); reasons: {self.reasons()}")


# --- reading images --------------------------------------------------------------------------

def file_loader(image_root: str, candidate: Candidate) -> bytes:
    path = os.path.join(image_root, candidate.path)
    if not os.path.exists(path):
        raise FileNotFoundError("missing file")
    return normalised_png(path)


def synthetic_loader(seed: int, size: int | None, candidate: Candidate):
    """Draws the radiograph; its ground truth (masks, CTR) travels with it as extra features."""
    index = int(candidate.image_id.rsplit("-", 1)[1])
    r = synth.sample(seed, index, candidate.site, candidate.patient_id, size)
    return encode_png(r.image), {F.CTR: r.ctr,
                                 F.LUNG_MASK: encode_png(r.lungs.astype(np.uint8) * 255),
                                 F.HEART_MASK: encode_png(r.heart.astype(np.uint8) * 255)}


def _load(loader, candidate):
    """Runs in a worker: (png bytes or (png bytes, extra features), None) or (None, reason)."""
    try:
        return loader(candidate), None
    except FileNotFoundError as error:
        return None, str(error) if str(error) == "missing file" else f"missing file: {error}"
    except Exception as error:  # PIL and pydicom raise many types for corrupt data
        return None, f"unreadable image: {type(error).__name__}: {error}"


def _loaded(candidates: list, loader, workers: int):
    job = functools.partial(_load, loader)
    if workers <= 1 or len(candidates) < 8:
        yield from map(job, candidates)
        return
    # Spawned workers start clean (no copy of TensorFlow's threads, as fork would make).
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(job, candidates, chunksize=4)


# --- sources ---------------------------------------------------------------------------------

def synthetic_selection(seed: int, n: int) -> Selection:
    """The built-in default dataset's cohort (metadata only; images are drawn when loaded)."""
    selection = Selection()
    for index, site, patient in synth.cohort(seed, n):
        meta = synth.metadata(seed, index, patient)
        selection.candidates.append(Candidate(
            image_id=f"synth-{seed}-{index:06d}", path="", patient_id=patient, label=meta["label"],
            site=site, sex=meta["sex"], age=meta["age"]))
    return selection


def csv_selection(csv_path: str, default_site: str = "internal") -> tuple[Selection, Quarantine]:
    """Any hospital's export: CSV with path, label, patient_id; optional sex, age, view, site."""
    selection, quarantine = Selection(), Quarantine()
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"path", "label", "patient_id"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            source = f"{csv_path}:{line}:{row['path']}"
            try:
                label = int(row["label"])
                if label not in (0, 1):
                    raise ValueError
                age = int(float(row["age"])) if row.get("age") else None
            except ValueError:
                quarantine.add(source, f"bad label or age: label={row['label']!r} "
                                       f"age={row.get('age')!r}")
                continue
            view = row.get("view") or "PA"
            if view != "PA":
                selection.exclude("not PA projection")
                continue
            sex = (row.get("sex") or F.UNKNOWN).upper()
            selection.candidates.append(Candidate(
                image_id=os.path.splitext(os.path.basename(row["path"]))[0], path=row["path"],
                patient_id=row["patient_id"], label=label, site=row.get("site") or default_site,
                sex=sex if sex in ("F", "M") else F.UNKNOWN, age=age))
    return selection, quarantine


# --- writing ---------------------------------------------------------------------------------

def dry_run_summary(selection: Selection, external_sites, seed: int, salt: str) -> dict:
    """Counts per class, per split and per exclusion reason, from the metadata alone."""
    split_of = _splits(selection.candidates, external_sites, seed, salt)
    per_split = {s: {"normal": 0, "cardiomegaly": 0} for s in F.SPLITS}
    for c in selection.candidates:
        per_split[split_of[hash_patient_id(c.patient_id, salt)]][
            "cardiomegaly" if c.label else "normal"] += 1
    return {"selected": len(selection.candidates), "classes": selection.class_counts(),
            "patients": len({c.patient_id for c in selection.candidates}),
            "splits": per_split, "excluded": dict(selection.excluded)}


def _splits(candidates, external_sites, seed, salt) -> dict:
    patients = {}
    for c in candidates:
        key = hash_patient_id(c.patient_id, salt)
        site, label = patients.get(key, (c.site, 0))
        patients[key] = (site, max(label, c.label))
    return splits.assign_splits(patients, external_sites, seed)


def convert(selection: Selection, loader: Callable[[Candidate], bytes], out_dir: str, span: int,
            external_sites, salt: str, seed: int = 0, quarantine: Quarantine | None = None,
            quarantine_limit: float = DEFAULT_QUARANTINE_LIMIT, workers: int | None = None,
            shards: int = 1, progress=None) -> dict:
    """Reads, normalises and writes every candidate; returns (and saves) the summary."""
    import tensorflow as tf

    quarantine = quarantine or Quarantine()
    rows_before = len(quarantine.entries)  # rows the selection already quarantined
    candidates = selection.candidates
    split_of = _splits(candidates, external_sites, seed, salt)
    span_dir = os.path.join(out_dir, f"span-{span}")
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    writers, counts = {}, collections.Counter()
    for i, (candidate, (png, reason)) in enumerate(
            zip(candidates, _loaded(candidates, loader, workers or os.cpu_count() or 1))):
        if progress:
            progress(1)
        if png is None:
            quarantine.add(candidate.path or candidate.image_id, reason)
            continue
        png, extras = png if isinstance(png, tuple) else (png, {})
        patient = hash_patient_id(candidate.patient_id, salt)
        split = split_of[patient]
        record = Record(image_png=png, label=candidate.label, image_id=candidate.image_id,
                        patient_id=patient, site=candidate.site, sex=candidate.sex,
                        age=candidate.age, view=candidate.view, extras=extras)
        key = (split, i % shards)
        if key not in writers:
            os.makedirs(os.path.join(span_dir, split), exist_ok=True)
            writers[key] = tf.io.TFRecordWriter(os.path.join(
                span_dir, split, f"data-{key[1]:05d}-of-{shards:05d}.tfrecord.gz"), options)
        writers[key].write(to_example(record).SerializeToString())
        counts[(split, candidate.label)] += 1
    for writer in writers.values():
        writer.close()
    os.makedirs(span_dir, exist_ok=True)
    total = rows_before + len(candidates)
    summary = {
        "splits": {s: {"normal": counts[(s, 0)], "cardiomegaly": counts[(s, 1)]} for s in F.SPLITS},
        "written": sum(counts.values()), "quarantined": len(quarantine.entries),
        "quarantine_reasons": quarantine.reasons(), "excluded": dict(selection.excluded)}
    quarantine.write(os.path.join(span_dir, "quarantine.csv"))
    with open(os.path.join(span_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    quarantine.check(total, quarantine_limit)
    return summary


def write_synthetic(out_dir: str, n: int, seed: int, size: int | None, span: int,
                    external_sites, progress=None, workers: int | None = None) -> dict:
    """The built-in default dataset as a span of TFRecords."""
    selection = synthetic_selection(seed, n)
    return convert(selection, functools.partial(synthetic_loader, seed, size), out_dir, span,
                   external_sites, salt=DEMO_SALT, seed=seed, workers=workers, progress=progress)
