"""PadChest (Bustos et al. 2020) -> the study's cohort.

Rules, in the order they are applied (the first that fails names the exclusion reason):
  1. PA projection only.
  2. Labels from the physicians' manual report labelling only (MethodLabel == "Physician"),
     not the RNN-labelled remainder.
  3. Labels that parse; a row whose label list cannot be read is quarantined (a parse error is
     a data problem to fix, not a cohort rule).
  4. No external objects: any label in EXTERNAL_OBJECT_LABELS excludes the image.
  5. Normal = exactly the single label "normal"; cardiomegaly = "cardiomegaly" present (other
     findings allowed); everything else is excluded.
Images are 16-bit PNGs at <images>/<ImageDir>/<ImageID>.
"""
from __future__ import annotations

import ast
import os
import re

import pandas as pd

from cardio.data.sources import Candidate, Selection, normalise_sex

SITE = "padchest"

# Devices, prostheses, catheters, tubes, metal, pacemakers, sutures and the like, as they appear
# in PadChest's label vocabulary (194 labels). Derived with EXTERNAL_OBJECT_KEYWORDS and kept
# here written out, so a reviewer sees exactly what is excluded; a test checks it against the
# vocabulary of the shipped label file. "dai" (desfibrilador automatico implantable, an
# implantable cardioverter-defibrillator) is a device no keyword finds.
EXTERNAL_OBJECT_LABELS = frozenset({
    "NSG tube", "abnormal foreign body", "aortic endoprosthesis", "artificial aortic heart valve",
    "artificial heart valve", "artificial mitral heart valve", "bone cement", "catheter",
    "central venous catheter", "central venous catheter via jugular vein",
    "central venous catheter via subclavian vein", "central venous catheter via umbilical vein",
    "chest drain tube", "dai", "double J stent", "dual chamber device", "electrical device",
    "endoprosthesis", "endotracheal tube", "external foreign body", "gastrostomy tube",
    "humeral prosthesis", "mammary prosthesis", "metal", "nephrostomy tube",
    "osteosynthesis material", "pacemaker", "prosthesis", "reservoir central venous catheter",
    "single chamber device", "sternotomy", "suture material", "tracheostomy tube",
    "ventriculoperitoneal drain tube",
})
EXTERNAL_OBJECT_KEYWORDS = ("tube", "catheter", "device", "prosthesis", "endoprosthesis",
                            "artificial", "pacemaker", "metal", "foreign body", "stent", "cement",
                            "osteosynthesis", "suture", "sternotomy")


def mentions_external_object(label: str) -> bool:
    """True when a label names an external object (whole words: "tube", not "tuberculosis")."""
    return any(re.search(rf"\b{re.escape(k)}\b", label.lower()) for k in EXTERNAL_OBJECT_KEYWORDS)

COLUMNS = ["ImageID", "ImageDir", "PatientID", "PatientSex_DICOM", "PatientBirth",
           "StudyDate_DICOM", "Projection", "MethodLabel", "Labels"]


def parse_labels(text) -> list[str]:
    """PadChest stores labels as a Python list literal; blank entries are dropped."""
    labels = ast.literal_eval(text)
    if not isinstance(labels, list):
        raise ValueError(f"not a list: {text!r}")
    return [label.strip() for label in labels if label.strip()]


def _age(row) -> int | None:
    try:
        age = int(str(row.StudyDate_DICOM)[:4]) - int(float(row.PatientBirth))
    except (TypeError, ValueError):
        return None
    return age if 0 <= age <= 120 else None


def select(labels_csv: str) -> Selection:
    frame = pd.read_csv(labels_csv, usecols=COLUMNS, dtype=str, keep_default_na=False)
    selection = Selection()
    name = os.path.basename(labels_csv)
    # The file's line of each row (header on line 1), named when its image fails.
    for line, row in enumerate(frame.itertuples(index=False), start=2):
        if row.Projection != "PA":
            selection.exclude("not PA projection")
            continue
        if row.MethodLabel != "Physician":
            selection.exclude("labels not from manual report labelling")
            continue
        try:
            labels = parse_labels(row.Labels)
        except (ValueError, SyntaxError):
            selection.quarantine(f"{name}:{line}", f"labels unparseable: {row.Labels!r}",
                                 row.ImageID.rsplit(".", 1)[0])
            continue
        if EXTERNAL_OBJECT_LABELS.intersection(labels):
            selection.exclude("external object")
            continue
        if labels == ["normal"]:
            label = 0
        elif "cardiomegaly" in labels:
            label = 1
        else:
            selection.exclude("neither normal nor cardiomegaly")
            continue
        sex = normalise_sex(row.PatientSex_DICOM)
        selection.candidates.append(Candidate(
            image_id=row.ImageID.rsplit(".", 1)[0], path=f"{row.ImageDir}/{row.ImageID}",
            patient_id=row.PatientID, label=label, site=SITE, sex=sex, age=_age(row),
            source=f"{name}:{line}"))
    return selection
