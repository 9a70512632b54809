"""Sources -> Records -> TFRecords laid out for ExampleGen.

Layout: `<out>/span-<N>/<split>/data-<k>.tfrecord.gz`, read by ImportExampleGen with a
`{SPAN}` pattern, so scheduled retraining picks up the newest span. Bad inputs are quarantined
with a reason, counted and reported; the job fails only when their fraction exceeds a limit.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import io
import json
import multiprocessing
import os
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

from cxr import features as F
from cxr import splits, synth
from cxr.records import Record, encode_png, hash_patient_id, to_example

DEMO_SALT = "public-demo-salt"  # synthetic patients only; real data takes CARDIO_PATIENT_SALT


class QuarantineLimitExceeded(RuntimeError):
    pass


@dataclasses.dataclass
class Quarantine:
    """Records that could not be converted, each with its source and the reason."""
    entries: list = dataclasses.field(default_factory=list)

    def add(self, source: str, reason: str):
        self.entries.append((source, reason))

    def write(self, path: str):
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["source", "reason"])
            writer.writerows(self.entries)

    def check(self, total: int, limit: float):
        fraction = len(self.entries) / max(total, 1)
        if fraction > limit:
            reasons = collections.Counter(reason.split(":")[0] for _, reason in self.entries)
            raise QuarantineLimitExceeded(
                f"{len(self.entries)} of {total} records quarantined ({fraction:.1%} > limit "
                f"{limit:.1%}); reasons: {dict(reasons)}")


def _synthetic_record(args) -> tuple[Record, float]:
    seed, index, site, patient, size = args
    r = synth.sample(seed, index, site, patient, size=size)
    return Record(image_png=encode_png(r.image), label=r.label, image_id=f"synth-{seed}-{index:06d}",
                  patient_id=hash_patient_id(r.patient_id, DEMO_SALT), site=r.site, sex=r.sex,
                  age=r.age, view=r.view), r.ctr


def synthetic_records(seed: int, n: int, size: int | None = None,
                      workers: int | None = None) -> Iterator[tuple[Record, float]]:
    """The built-in default dataset: yields (record, ctr) for n synthetic radiographs, in order.

    Drawing and PNG encoding are CPU-bound, so they run in a process pool (one per core)."""
    jobs = [(seed, index, site, patient, size) for index, site, patient in synth.cohort(seed, n)]
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        yield from map(_synthetic_record, jobs)
        return
    # Fork would copy TensorFlow's threads if it was imported; spawn starts clean workers.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(_synthetic_record, jobs, chunksize=4)


def normalised_png(path: str) -> bytes:
    """Reads an 8/16-bit grayscale PNG or 8-bit JPEG and returns it as a MONOCHROME2 PNG."""
    with open(path, "rb") as f:
        data = f.read()
    image = Image.open(io.BytesIO(data))
    image.load()  # raises on truncated or corrupt files
    if image.mode in ("I;16", "I;16B", "I"):
        pixels = np.asarray(image).astype(np.uint16)
    else:
        pixels = np.asarray(image.convert("L"))
    return encode_png(pixels)


def generic_csv_records(csv_path: str, image_root: str, salt: str, quarantine: Quarantine,
                        default_site: str = "internal") -> Iterator[Record]:
    """Any hospital's export: CSV with path, label, patient_id; optional sex, age, view, site."""
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
            except ValueError:
                quarantine.add(source, f"bad label: {row['label']!r} is not 0 or 1")
                continue
            path = os.path.join(image_root, row["path"])
            if not os.path.exists(path):
                quarantine.add(source, "missing file")
                continue
            try:
                png = normalised_png(path)
            except Exception as error:  # PIL raises many types for corrupt data
                quarantine.add(source, f"unreadable image: {error}")
                continue
            age = row.get("age") or None
            sex = (row.get("sex") or F.UNKNOWN).upper()
            yield Record(image_png=png, label=label,
                         image_id=os.path.splitext(os.path.basename(row["path"]))[0],
                         patient_id=hash_patient_id(row["patient_id"], salt),
                         site=row.get("site") or default_site,
                         sex=sex if sex in ("F", "M") else F.UNKNOWN,
                         age=int(float(age)) if age else None, view=row.get("view") or "PA")


def write_span(records: Iterable[Record], out_dir: str, span: int, external_sites,
               seed: int = 0, shards: int = 1, progress=None) -> dict:
    """Writes records as gzipped TFRecords per split; returns counts per split and class."""
    import tensorflow as tf

    options = tf.io.TFRecordOptions(compression_type="GZIP")
    writers = {}
    counts = collections.Counter()
    for i, record in enumerate(records):
        split = splits.assign_split(record.patient_id, record.site, external_sites, seed)
        shard = i % shards
        key = (split, shard)
        if key not in writers:
            directory = os.path.join(out_dir, f"span-{span}", split)
            os.makedirs(directory, exist_ok=True)
            writers[key] = tf.io.TFRecordWriter(
                os.path.join(directory, f"data-{shard:05d}-of-{shards:05d}.tfrecord.gz"), options)
        writers[key].write(to_example(record).SerializeToString())
        counts[(split, record.label)] += 1
        if progress:
            progress(1)
    for writer in writers.values():
        writer.close()
    summary = {split: {"normal": counts[(split, 0)], "cardiomegaly": counts[(split, 1)]}
               for split in F.SPLITS}
    with open(os.path.join(out_dir, f"span-{span}", "counts.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
