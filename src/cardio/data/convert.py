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
import json
import multiprocessing
import os
import re
import shutil
import signal
import sys
from typing import Callable

import numpy as np
from PIL import UnidentifiedImageError

from cardio import features as F
from cardio.data import splits, synth
from cardio.data.records import Record, hash_image_id, hash_patient_id, to_example
from cardio.data.sources import Candidate, Selection, normalise_sex
from cardio.imaging.dicom import DicomError
from cardio.imaging.files import RejectedImage, encode_png, normalised_png

DEMO_SALT = "public-demo-salt"  # synthetic patients only; real data takes CARDIO_PATIENT_SALT
DEFAULT_QUARANTINE_LIMIT = 0.05
MAX_AGE = 120   # the schema's age domain; older is a data-entry error, not a patient


class QuarantineLimitExceeded(RuntimeError):
    pass


@dataclasses.dataclass
class Quarantine:
    """Records that could not be converted: where each came from (row or file, never a raw image
    name), its salted image id when one is known, and the reason."""
    entries: list = dataclasses.field(default_factory=list)

    def add(self, source: str, reason: str, image: str = ""):
        """`image`: the source's raw image name or id; it is salted when the file is written."""
        self.entries.append((source, image, reason))

    def reasons(self) -> dict:
        return dict(collections.Counter(reason.split(":")[0] for _, _, reason in self.entries))

    def write(self, path: str, image_id: Callable[[str], str]):
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["source", "image_id", "reason"])
            writer.writerows((source, image_id(image) if image else "", reason)
                             for source, image, reason in self.entries)

    def check(self, total: int, limit: float):
        fraction = len(self.entries) / max(total, 1)
        if fraction > limit:
            raise QuarantineLimitExceeded(
                f"{len(self.entries)} of {total} records quarantined ({fraction:.1%} > limit "
                f"{limit:.1%}); reasons: {self.reasons()}")


# DICOM's Age String (PS3.5 6.2, VR AS): nnnD, nnnW, nnnM or nnnY, as PACS exports carry it.
DICOM_AGE = re.compile(r"^(\d{3})([DWMY])$")
DAYS_PER = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}


def parse_age(value) -> int | None:
    """Age in whole years, None when blank; ValueError (with the value) when neither a number
    nor a DICOM age string (`045Y`, `003M`, `012W`, `020D`), or outside 0-MAX_AGE."""
    text = str(value or "").strip()
    if not text:
        return None
    dicom = DICOM_AGE.match(text.upper())
    try:
        age = (int(dicom.group(1)) * DAYS_PER[dicom.group(2)] / 365.25 if dicom else float(text))
    except ValueError:
        raise ValueError(f"bad age: {text!r} is neither a number of years nor a DICOM age "
                         f"string (nnnD, nnnW, nnnM, nnnY)") from None
    if not 0 <= age <= MAX_AGE:
        raise ValueError(f"bad age: {text!r} is outside 0-{MAX_AGE} years")
    return int(age)


# --- reading images --------------------------------------------------------------------------

class ImageError(ValueError):
    """An unreadable image; the message names the failure, not the file (its name may be an MRN)."""


def merge_selections(*selections: Selection) -> Selection:
    """One cohort from several sources' selections (candidates, exclusions, quarantine), so
    they convert into one span: one split per patient across all of them."""
    merged = Selection()
    for selection in selections:
        merged.candidates.extend(selection.candidates)
        merged.excluded.update(selection.excluded)
        merged.quarantined.extend(selection.quarantined)
    return merged


@dataclasses.dataclass
class loader_by_site:
    """A loader that reads each candidate with its site's loader (`by_site`), else `default`:
    merged sources keep their own image roots. (A class, so conversion workers can pickle it.)"""
    default: Callable[[Candidate], bytes]
    by_site: dict

    def __call__(self, candidate: Candidate) -> bytes:
        return self.by_site.get(candidate.site, self.default)(candidate)


@dataclasses.dataclass
class with_ground_truth:
    """A loader whose records also carry each image's ground truth (`extras[path]`: features,
    e.g. a measured CTR), as the synthetic radiographs carry theirs. (A class, so conversion
    workers can pickle it.)"""
    load: Callable[[Candidate], bytes]
    extras: dict

    def __call__(self, candidate: Candidate) -> tuple[bytes, dict]:
        return self.load(candidate), self.extras.get(candidate.path, {})


def file_loader(image_root: str, candidate: Candidate, bits_stored: int | None = None) -> bytes:
    """`bits_stored`: the site's declared depth of its 16-bit PNGs without an sBIT chunk
    (cardio.imaging.files.normalised_pixels)."""
    root = os.path.realpath(image_root)
    path = os.path.realpath(os.path.join(image_root, candidate.path))
    if os.path.commonpath([root, path]) != root:
        raise ImageError("path outside the images root")
    if not os.path.exists(path):
        if os.path.lexists(os.path.join(image_root, candidate.path)):
            raise ImageError("broken or looping symbolic link")
        raise FileNotFoundError("missing file")
    try:
        return normalised_png(path, bits_stored)
    except DicomError as error:  # "<path>: <reason>: <detail>"
        raise ImageError(_without(str(error).removeprefix(f"{path}: "), path,
                                  candidate.path)) from None
    except RejectedImage as error:
        raise ImageError(str(error)) from None
    except UnidentifiedImageError:
        raise ImageError("unreadable image: not a PNG, JPEG or DICOM file, or damaged beyond "
                         "recognition") from None
    except Exception as error:  # PIL raises many types for corrupt data
        raise ImageError(f"unreadable image: {type(error).__name__}: "
                         f"{_without(str(error), path, candidate.path)}") from None


def _without(message: str, *paths: str) -> str:
    """The message without file names (they may carry an MRN) or Python object reprs."""
    for path in paths:
        if path:
            message = message.replace(path, "<image>")
    return re.sub(r"<[\w.]+ object at 0x[0-9a-fA-F]+>", "the file", message)


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
    except FileNotFoundError:
        return None, "missing file"
    except ImageError as error:
        return None, str(error)
    except Exception as error:  # a loader's own failure; its message names no file of ours
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


def csv_selection(csv_path: str, default_site: str | None = None, views=("PA",)) -> Selection:
    """Any hospital's export: CSV with path, label, patient_id; optional sex, age, view, site.

    Rows whose view (PA when blank) is not among `views` are excluded and counted by view; the
    pipeline configuration's `views` must list the same. A row without a site takes
    `default_site`; with neither it is quarantined. Rows are
    quarantined (never dropped) for a label other than 0/1, an age that is not a number or outside
    0-MAX_AGE, a missing site, a repeated image path, or a patient whose rows disagree on sex.
    A file that is not UTF-8 or lacks a required column fails as a whole, naming the file.
    """
    selection = Selection()
    name = os.path.basename(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows, fieldnames = list(reader), reader.fieldnames or []
    except UnicodeDecodeError as error:
        raise ValueError(f"{csv_path}: not UTF-8 text (byte {error.start}); re-export it as "
                         f"UTF-8") from None
    missing = {"path", "label", "patient_id"} - set(fieldnames)
    if missing:
        raise ValueError(f"{csv_path}: missing column(s) {sorted(missing)}")
    kept_views = tuple(v.strip().upper() for v in views)
    seen, sexes, kept = set(), collections.defaultdict(set), []
    for line, row in enumerate(rows, start=2):
        source, path = f"{name}:{line}", (row.get("path") or "").strip()
        problem = None
        try:
            age = parse_age(row.get("age"))
        except ValueError as error:
            problem = str(error)
        if (row.get("label") or "").strip() not in ("0", "1"):
            problem = f"bad label: {row.get('label')!r} is not 0 or 1"
        elif not path or not (row.get("patient_id") or "").strip():
            problem = "missing path or patient_id"
        elif path in seen:
            problem = "duplicate image row"
        elif not (row.get("site") or default_site):
            problem = "missing site: the row has none and no default site was given"
        if problem:
            selection.quarantine(source, problem, path)
            continue
        seen.add(path)
        view = (row.get("view") or "PA").strip().upper()
        if view not in kept_views:
            selection.exclude(f"not {'/'.join(kept_views)} projection")
            continue
        sex = normalise_sex(row.get("sex"))
        patient = row["patient_id"].strip()
        if sex != F.UNKNOWN:
            sexes[patient].add(sex)
        kept.append((source, Candidate(
            image_id=path, path=path, patient_id=patient, label=int(row["label"]),
            site=(row.get("site") or default_site).strip(), sex=sex, age=age, view=view,
            source=source)))
    for source, candidate in kept:
        if len(sexes[candidate.patient_id]) > 1:
            selection.quarantine(source, "conflicting sex: the patient's rows disagree",
                                 candidate.path)
        else:
            selection.candidates.append(candidate)
    return selection


# --- writing ---------------------------------------------------------------------------------

def dry_run_summary(selection: Selection, external_sites, seed: int, salt: str) -> dict:
    """Counts per class, per split and per exclusion reason, from the metadata alone."""
    split_of = _splits(selection.candidates, external_sites, seed, salt)
    per_split = {s: {"normal": 0, "cardiomegaly": 0} for s in F.SPLITS}
    for c in selection.candidates:
        per_split[split_of[hash_patient_id(c.patient_id, salt)]][
            "cardiomegaly" if c.label else "normal"] += 1
    quarantine = Quarantine(list(selection.quarantined))
    return {"selected": len(selection.candidates), "classes": selection.class_counts(),
            "patients": len({c.patient_id for c in selection.candidates}),
            "splits": per_split, "excluded": dict(selection.excluded),
            "quarantined": len(quarantine.entries), "quarantine_reasons": quarantine.reasons()}


def _splits(candidates, external_sites, seed, salt) -> dict:
    sites = collections.defaultdict(set)
    for c in candidates:
        sites[hash_patient_id(c.patient_id, salt)].add(c.site)
    return splits.assign_splits(sites, external_sites, seed)


def span_dir(out_dir: str, span: int) -> str:
    return os.path.join(out_dir, f"span-{span}")


def failed_dir(out_dir: str, span: int) -> str:
    """Where a failed conversion leaves its quarantine and summary: outside ExampleGen's
    `span-{SPAN}` pattern, so the pipeline never reads it."""
    return os.path.join(out_dir, f"failed-span-{span}")


def exit_on_sigterm():
    """SIGTERM (a scheduler stopping the job) unwinds like Ctrl-C, so `convert` removes its
    partial span; by default Python would die at once and leave it."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # alive, another user's
        return True
    return True


def remove_leftovers(out_dir: str, span: int) -> list[str]:
    """Removes what interrupted conversions of `span` left: `.span-N.partial-<pid>` of a process
    no longer running (a kill or power loss skips every cleanup). Returns the names removed."""
    removed = []
    prefix = f".span-{span}.partial-"
    for name in sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else ():
        pid = name[len(prefix):]
        if name.startswith(prefix) and pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)
            removed.append(name)
    return removed


def convert(selection: Selection, loader: Callable[[Candidate], bytes], out_dir: str, span: int,
            external_sites, salt: str, seed: int = 0, quarantine: Quarantine | None = None,
            quarantine_limit: float = DEFAULT_QUARANTINE_LIMIT, workers: int | None = None,
            shards: int = 1, progress=None, id_map: str | None = None) -> dict:
    """Reads, normalises and writes every candidate; returns (and saves) the summary.

    Image ids are salted hashes of the source's image names (`hash_image_id`); `id_map`, when
    given, receives the mapping back to the source names: keep it beside the source data, never
    with the span. The span is written under a temporary name and renamed into place only when
    the quarantine is within the limit, so a failed conversion leaves no span for the pipeline
    to read (its quarantine.csv and summary.json go to `failed_dir`). An interrupted
    conversion removes its temporary directory; one killed outright leaves it, and the next
    conversion of the span removes it (`remove_leftovers`). A successful conversion removes the
    span's `failed_dir` of an earlier attempt. The summary's `removed` names what was removed.
    """
    import tensorflow as tf

    final = span_dir(out_dir, span)
    if os.path.exists(final):
        raise FileExistsError(f"{final} already exists: a span is written once; choose a new "
                              f"--span or remove it")
    quarantine = quarantine or Quarantine()
    quarantine.entries.extend(selection.quarantined)
    rows_before = len(quarantine.entries)  # rows the selection already quarantined
    candidates = selection.candidates
    image_id = functools.partial(hash_image_id, salt=salt)
    split_of = _splits(candidates, external_sites, seed, salt)
    removed = remove_leftovers(out_dir, span)
    partial = os.path.join(out_dir, f".span-{span}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    # Gzip framing, as the pipeline's readers expect, but stored (level 0): the records are
    # mostly PNG bytes, already deflated, which gzip shrank by 0.2% at 5 ms a radiograph.
    options = tf.io.TFRecordOptions(compression_type="GZIP", compression_level=0)
    writers, counts = {}, collections.Counter()
    try:
        for i, (candidate, (png, reason)) in enumerate(
                zip(candidates, _loaded(candidates, loader, workers or os.cpu_count() or 1))):
            if progress:
                progress(1)
            if png is None:
                quarantine.add(candidate.source or "image", reason, candidate.image_id)
                continue
            png, extras = png if isinstance(png, tuple) else (png, {})
            patient = hash_patient_id(candidate.patient_id, salt)
            split = split_of[patient]
            record = Record(image_png=png, label=candidate.label,
                            image_id=image_id(candidate.image_id), patient_id=patient,
                            site=candidate.site, sex=candidate.sex, age=candidate.age,
                            view=candidate.view, extras=extras)
            key = (split, i % shards)
            if key not in writers:
                os.makedirs(os.path.join(partial, split), exist_ok=True)
                writers[key] = tf.io.TFRecordWriter(os.path.join(
                    partial, split, f"data-{key[1]:05d}-of-{shards:05d}.tfrecord.gz"), options)
            # Map entries in key order: the same record gives the same bytes in every run.
            writers[key].write(to_example(record).SerializeToString(deterministic=True))
            counts[(split, candidate.label)] += 1
    except BaseException:   # Ctrl-C, SIGTERM (the CLI makes it an exit), a failing loader
        for writer in writers.values():
            writer.close()
        shutil.rmtree(partial, ignore_errors=True)
        raise
    for writer in writers.values():
        writer.close()
    os.makedirs(partial, exist_ok=True)
    total = rows_before + len(candidates)
    summary = {
        "splits": {s: {"normal": counts[(s, 0)], "cardiomegaly": counts[(s, 1)]} for s in F.SPLITS},
        "written": sum(counts.values()), "quarantined": len(quarantine.entries),
        "quarantine_reasons": quarantine.reasons(), "excluded": dict(selection.excluded),
        "removed": removed}
    quarantine.write(os.path.join(partial, "quarantine.csv"), image_id)
    with open(os.path.join(partial, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    if id_map:
        _write_id_map(id_map, [c.image_id for c in candidates]
                      + [image for _, image, _ in quarantine.entries if image], image_id)
    try:
        quarantine.check(total, quarantine_limit)
    except QuarantineLimitExceeded:
        failed = failed_dir(out_dir, span)
        shutil.rmtree(failed, ignore_errors=True)
        os.makedirs(failed)
        for name in ("quarantine.csv", "summary.json"):
            os.replace(os.path.join(partial, name), os.path.join(failed, name))
        shutil.rmtree(partial)
        raise
    os.replace(partial, final)
    if os.path.isdir(failed_dir(out_dir, span)):   # an earlier attempt's report, now superseded
        shutil.rmtree(failed_dir(out_dir, span))
        summary["removed"].append(os.path.basename(failed_dir(out_dir, span)))
    return summary


def _write_id_map(path: str, images: list, image_id):
    """The salted image id -> source image name table; only the site that owns the data keeps it."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "source_image"])
        writer.writerows(sorted({(image_id(image), image) for image in images}))


def write_synthetic(out_dir: str, n: int, seed: int, size: int | None, span: int,
                    external_sites, progress=None, workers: int | None = None) -> dict:
    """The built-in default dataset as a span of TFRecords."""
    selection = synthetic_selection(seed, n)
    return convert(selection, functools.partial(synthetic_loader, seed, size), out_dir, span,
                   external_sites, salt=DEMO_SALT, seed=seed, workers=workers, progress=progress)
