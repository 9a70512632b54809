"""Sources of radiographs. Each maps its own metadata to the same `Candidate` record and keeps its
site-specific rules (cohort selection, label mapping, exclusion lists) in its own module."""
from __future__ import annotations

import collections
import dataclasses

from cardio import features as F

SEX_SPELLINGS = {"f": "F", "female": "F", "woman": "F", "w": "F", "m": "M", "male": "M", "man": "M"}


def normalise_sex(value) -> str:
    """"F", "M" or "unknown" from the spellings exports use (F/M, female/male, in any case)."""
    return SEX_SPELLINGS.get(str(value or "").strip().lower(), F.UNKNOWN)


@dataclasses.dataclass
class Candidate:
    """One selected image, before its pixels are read."""
    image_id: str
    path: str             # relative to the source's image root
    patient_id: str       # the source's raw identifier; hashed before it reaches any artifact
    label: int            # 1 cardiomegaly, 0 normal
    site: str
    sex: str = "unknown"
    age: int | None = None
    view: str = "PA"
    source: str = ""      # where it was listed ("labels.csv:12"), named when its image fails


@dataclasses.dataclass
class Selection:
    """A source's cohort: the selected candidates, and every excluded row counted by reason."""
    candidates: list = dataclasses.field(default_factory=list)
    excluded: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    # Rows that could not be read, as (source row, raw image name or "", reason): a parse error
    # is quarantined and counted against the limit, never hidden among the exclusions.
    quarantined: list = dataclasses.field(default_factory=list)

    def exclude(self, reason: str):
        self.excluded[reason] += 1

    def quarantine(self, source: str, reason: str, image: str = ""):
        self.quarantined.append((source, image, reason))

    def class_counts(self) -> dict:
        counts = collections.Counter(c.label for c in self.candidates)
        return {"normal": counts[0], "cardiomegaly": counts[1]}
