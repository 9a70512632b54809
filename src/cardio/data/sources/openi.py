"""OpenI / Indiana University chest X-ray collection -> the external site's cohort.

Rules (the first that fails names the exclusion reason):
  1. A report must reference images (<parentImage id=...>); each image is one candidate.
  2. Label from the report's MeSH <major> terms: normal = exactly the single term "normal";
     cardiomegaly = any term whose first part is "Cardiomegaly" (any severity or location,
     other findings allowed); everything else is excluded.
  3. The image must appear in the DICOM metadata table.
  4. View position PA only. About a third of the images have an empty View Position. It is not
     derived from another field (Patient Orientation cannot tell PA from AP), so a missing view
     is its own exclusion reason, "view position missing".
The collection has no usable sex (empty everywhere) or age (masked in the reports): both are
recorded as unknown. Each report is one patient. Images are PNGs at <images>/<image id>.png.
"""
from __future__ import annotations

import csv
import gzip
import io
import os
import tarfile
import xml.etree.ElementTree as ElementTree
from typing import Iterator

from cardio.data.sources import Candidate, Selection

SITE = "openi"


def _open_text(path: str):
    return io.TextIOWrapper(gzip.open(path), encoding="utf-8", newline="") \
        if path.endswith(".gz") else open(path, newline="", encoding="utf-8")


def read_views(dicom_metadata_csv: str) -> dict:
    """{image id: View Position} from the DICOM metadata table."""
    with _open_text(dicom_metadata_csv) as f:
        return {row["imageid"]: row["View Position"].strip() for row in csv.DictReader(f)}


def iter_reports(reports: str) -> Iterator[tuple[str, bytes]]:
    """(name, XML bytes) for every report in a .tgz or a directory."""
    if os.path.isdir(reports):
        for root, _, files in os.walk(reports):
            for name in sorted(files):
                if name.endswith(".xml"):
                    with open(os.path.join(root, name), "rb") as f:
                        yield name, f.read()
        return
    with tarfile.open(reports) as archive:
        for member in archive:
            if member.isfile() and member.name.endswith(".xml"):
                yield member.name, archive.extractfile(member).read()


def label_from_mesh(major_terms: list[str]) -> int | None:
    terms = [t.strip() for t in major_terms if t and t.strip()]
    if [t.lower() for t in terms] == ["normal"]:
        return 0
    if any(t.split("/")[0].strip().lower() == "cardiomegaly" for t in terms):
        return 1
    return None


def select(reports: str, dicom_metadata_csv: str) -> Selection:
    views = read_views(dicom_metadata_csv)
    selection = Selection()
    for name, xml in iter_reports(reports):
        try:
            root = ElementTree.fromstring(xml)
        except ElementTree.ParseError as error:
            # The file name is the report number, which OpenI uses as the patient id: salt it.
            selection.quarantine("reports", f"report unparseable: {error}", name)
            continue
        report_id = root.find("uId").get("id") if root.find("uId") is not None else name
        images = [e.get("id") for e in root.iter("parentImage")]
        if not images:
            selection.exclude("report without images")
            continue
        label = label_from_mesh([e.text for e in root.iter("major")])
        for image_id in images:
            if label is None:
                selection.exclude("neither normal nor cardiomegaly")
            elif image_id not in views:
                selection.exclude("no DICOM metadata")
            elif views[image_id] == "":
                selection.exclude("view position missing")
            elif views[image_id] != "PA":
                selection.exclude("not PA projection")
            else:
                selection.candidates.append(Candidate(
                    image_id=image_id, path=f"{image_id}.png", patient_id=report_id, label=label,
                    site=SITE))
    return selection
