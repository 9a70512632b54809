"""The one record every source is converted to, and its tf.Example encoding.

Synthetic data, PadChest, OpenI and a generic CSV export all become `Record`s; everything
downstream (schema, ExampleGen, trainer, evaluator) sees only this shape.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os

from cardio import features as F


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclasses.dataclass
class Record:
    image_png: bytes   # MONOCHROME2 PNG, 8- or 16-bit
    label: int
    image_id: str      # already salted and hashed (see `hash_image_id`)
    patient_id: str    # already salted and hashed (see `hash_patient_id`)
    site: str
    sex: str = F.UNKNOWN
    age: int | None = None
    view: str = "PA"
    extras: dict = dataclasses.field(default_factory=dict)  # optional features: bytes or float


def hash_patient_id(raw_id: str, salt: str) -> str:
    """Salted SHA-256 of a patient identifier: stable per salt, not reversible without it."""
    if not salt:
        raise ValueError("a non-empty patient-id salt is required (set CARDIO_PATIENT_SALT)")
    return hashlib.sha256(f"{salt}\0{raw_id}".encode()).hexdigest()[:20]


def hash_image_id(raw_id: str, salt: str) -> str:
    """Salted SHA-256 of a source image name (file names and report numbers can carry MRNs)."""
    if not salt:
        raise ValueError("a non-empty salt is required (set CARDIO_PATIENT_SALT)")
    return "img-" + hashlib.sha256(f"{salt}\0image\0{raw_id}".encode()).hexdigest()[:20]


def patient_salt() -> str:
    """The deployment's salt, from the environment; a fixed public default only for demos."""
    return os.environ.get("CARDIO_PATIENT_SALT", "")


def to_example(record: Record):
    import tensorflow as tf

    def b(value: str):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))

    feature = {
        F.IMAGE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[record.image_png])),
        F.LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(record.label)])),
        F.IMAGE_ID: b(record.image_id),
        F.PATIENT_ID: b(record.patient_id),
        F.SITE: b(record.site),
        F.SEX: b(record.sex),
        F.AGE_BAND: b(F.age_band(record.age)),
        F.VIEW: b(record.view),
    }
    if record.image_png.startswith(PNG_SIGNATURE):  # IHDR: width, height, bit depth
        for name, value in ((F.IMAGE_WIDTH, int.from_bytes(record.image_png[16:20], "big")),
                            (F.IMAGE_HEIGHT, int.from_bytes(record.image_png[20:24], "big")),
                            (F.BIT_DEPTH, record.image_png[24])):
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
    if record.age is not None:
        feature[F.AGE] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(record.age)]))
    for name, value in record.extras.items():
        feature[name] = (tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
                         if isinstance(value, bytes) else
                         tf.train.Feature(float_list=tf.train.FloatList(value=[float(value)])))
    return tf.train.Example(features=tf.train.Features(feature=feature))
