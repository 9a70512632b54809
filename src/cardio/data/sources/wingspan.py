"""Wingspan (Dong et al., MICCAI 2018; ../shared/data/wingspan-ctr-512) -> a real external site.

143 frontal radiographs from one hospital (not NIH), 512x512 8-bit, each with heart and lung
masks. `labels.csv`: `path,label,ctr,ctr_source,site,view`. Rules:
  1. The label is the measured cardiothoracic ratio: 1 when `ctr` > 0.5 (the clinical definition
     on a PA film), not a report's text. A row whose `label` disagrees with its `ctr`, or whose
     `ctr` or `label` cannot be read, is quarantined, never guessed.
  2. The view is not recorded (blank in every row): such rows are treated as PA, and counted in
     `assumed_pa` so the converter says so. A row that does record a view other than PA is
     excluded ("not PA projection"), as the other sources do.
  3. The set has no patient identifier, sex or age: each radiograph is its own patient (its
     file name, a DICOM UID, becomes the salted patient id), sex and age are unknown. If the
     hospital imaged a patient twice, both images are in the external split anyway, so no
     patient can leak into training.
The site is `wingspan` (the rows' `site` when given). Images are at <images>/<path>. Each record
carries its measured `ctr` as ground truth (`ground_truth`), as synthetic records carry theirs.
"""
from __future__ import annotations

import csv
import os

from cardio import features as F
from cardio.data.sources import Candidate, Selection

SITE = "wingspan"
CTR_THRESHOLD = 0.5
VIEW_NOTE = ("Wingspan records no view: radiographs without one are treated as PA "
             "(frontal films; the source does not say PA or AP)")


def ground_truth(labels_csv: str) -> dict:
    """{image path: {"ctr": the measured ratio}} for every row whose ratio reads: the records
    carry it (the schema's `ctr`), so the served CTR can be compared with it."""
    with open(labels_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    truth = {}
    for row in rows:
        try:
            truth[(row.get("path") or "").strip()] = {F.CTR: float(row.get("ctr") or "")}
        except ValueError:
            continue   # select() quarantines that row
    return truth


def select(labels_csv: str) -> tuple[Selection, int]:
    """(the selection, how many rows had no view and were taken as PA)."""
    selection, assumed_pa = Selection(), 0
    name = os.path.basename(labels_csv)
    with open(labels_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for line, row in enumerate(rows, start=2):
        source, path = f"{name}:{line}", (row.get("path") or "").strip()
        try:
            ctr = float(row.get("ctr") or "")
            label = int((row.get("label") or "").strip())
        except ValueError:
            selection.quarantine(source, "unreadable ctr or label", path)
            continue
        if label not in (0, 1) or label != int(ctr > CTR_THRESHOLD):
            selection.quarantine(source, f"label {label} disagrees with ctr {ctr} "
                                         f"(label 1 is ctr > {CTR_THRESHOLD})", path)
            continue
        view = (row.get("view") or "").strip().upper()
        if not view:
            assumed_pa += 1
            view = "PA"
        if view != "PA":
            selection.exclude("not PA projection")
            continue
        selection.candidates.append(Candidate(
            image_id=path, path=path, patient_id=os.path.splitext(path)[0], label=label,
            site=(row.get("site") or SITE).strip(), view=view, source=source))
    return selection, assumed_pa
