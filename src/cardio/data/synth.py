"""Synthetic PA chest radiographs: the built-in default dataset.

Each image is drawn from a simple anatomical model (body, lungs, heart, mediastinum, diaphragm,
ribs, clavicles, spine, and outside the chest cavity the neck, shoulders, arms and a burned-in
marker). Cardiomegaly is defined as a cardiothoracic ratio (heart width / thoracic width) above
0.5; CTRs come from a mixture of normal and enlarged hearts with 17% prevalence (`draw_ctr`). Sites differ in acquisition (bit depth, contrast, gamma,
noise, resolution and positioning) so that an external-site slice shows a real domain shift.

Ground-truth lung and heart masks and the CTR are returned with every image. Everything is
deterministic per (seed, index).
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

CARDIOMEGALY_CTR = 0.5
PREVALENCE = 0.17
DRAW_SIZE = 512


@dataclasses.dataclass(frozen=True)
class SiteProfile:
    """How one site acquires and stores its radiographs."""
    name: str
    size: int            # long side in pixels
    bit_depth: int       # 8 or 16
    gamma: float         # display gamma applied by the modality
    contrast: float      # multiplies deviations from mid-grey
    noise: float         # quantum-noise standard deviation (fraction of full scale)
    shift: float         # patient positioning jitter (fraction of the image)
    zoom: tuple          # range of field-of-view scaling


SITES = {
    # The training hospital: 16-bit, well centred, low noise (PadChest-like).
    "site-a": SiteProfile("site-a", size=1024, bit_depth=16, gamma=1.0, contrast=1.0,
                          noise=0.01, shift=0.02, zoom=(0.95, 1.05)),
    # The external site: 8-bit, harder contrast, noisier, looser positioning (OpenI-like).
    "site-b": SiteProfile("site-b", size=1280, bit_depth=8, gamma=0.75, contrast=1.25,
                          noise=0.025, shift=0.05, zoom=(0.85, 1.1)),
}


@dataclasses.dataclass
class Radiograph:
    image: np.ndarray        # uint8 or uint16 [H, W], MONOCHROME2
    lungs: np.ndarray        # bool [H, W]
    heart: np.ndarray        # bool [H, W]
    ctr: float
    label: int
    site: str
    patient_id: str
    sex: str
    age: int
    view: str = "PA"


def _rng(seed: int, *keys) -> np.random.Generator:
    digest = hashlib.sha256(repr((seed,) + keys).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _ellipse(xx, yy, cx, cy, rx, ry, power=2.0):
    return (np.abs((xx - cx) / rx) ** power + np.abs((yy - cy) / ry) ** power) <= 1.0


def draw(rng: np.random.Generator, ctr: float, site: SiteProfile, size: int | None = None):
    """Draws one radiograph with the given CTR; returns (image in [0,1], lungs, heart)."""
    size = size or site.size
    full_h, full_w = size, int(round(size * rng.uniform(0.9, 1.0)))
    # Anatomy is smooth: draw it at most at DRAW_SIZE and interpolate up; the site's noise is
    # added later at full resolution. This keeps a 2000 px radiograph well under a second.
    scale = min(1.0, DRAW_SIZE / size)
    h, w = int(round(full_h * scale)), int(round(full_w * scale))
    zoom = rng.uniform(*site.zoom)
    dx, dy = rng.normal(0, site.shift, 2)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # Normalised coordinates centred on the chest, so anatomy scales with the field of view.
    u = ((xx / w) - 0.5 - dx) / zoom
    v = ((yy / h) - 0.45 - dy) / zoom

    thorax_half = rng.uniform(0.30, 0.36)           # half the thoracic width
    lung_top, dome = -0.30, rng.uniform(0.17, 0.23)  # apex and diaphragm dome height
    img = np.full((h, w), 0.04, np.float32)          # air

    # Torso with soft shoulders; arms hang beside it with an air gap; neck and chin above.
    body = _ellipse(u, v, 0, 0.15, thorax_half + 0.1, 0.72, 2.8) & (v > -0.36)
    shoulders = _ellipse(u, v, 0, -0.30, thorax_half + 0.14, 0.1, 2.2)
    arm_x = thorax_half + rng.uniform(0.17, 0.2)
    arms = (np.abs(np.abs(u) - arm_x) < 0.05 + 0.02 * (v < -0.2)) & (v > -0.35)
    neck = (np.abs(u) < 0.07) & (v < -0.28)
    head = _ellipse(u, v, 0, -0.6, 0.15, 0.13)
    img[body | shoulders | neck | head] = 0.4
    img[arms] = 0.45
    img[arms & (np.abs(np.abs(u) - arm_x) < 0.012)] = 0.62  # humerus
    img += 0.06 * np.clip(1 - np.abs(u) / (thorax_half + 0.12), 0, 1) * body  # tissue thickness

    # Lungs: narrow apex widening to sharp costophrenic angles; the medial border follows the
    # mediastinum; the diaphragm domes up under each lung (higher on the right, as usual).
    medial = rng.uniform(0.05, 0.07)
    lungs = np.zeros((h, w), bool)
    for side in (-1, 1):
        x = u * side                                             # distance from midline, this side
        dome_side = dome - (0.02 if side < 0 else 0.0)           # patient's right: image left
        t = np.clip((v - lung_top) / (dome_side - lung_top), 0, 1)
        lateral = medial + (thorax_half - medial) * np.sin(np.pi / 2 * np.clip(t * 1.1, 0, 1) ** 0.45)
        centre = (medial + thorax_half) / 2
        diaphragm = dome_side - 0.07 * (1 - ((x - centre) / ((thorax_half - medial) / 2)) ** 2)
        lungs |= (x > medial) & (x < lateral) & (v > lung_top) & (v < diaphragm)

    # Heart: sits on the diaphragm, shifted to the patient's left (image right).
    heart_half = ctr * thorax_half
    heart_cx = heart_half * rng.uniform(0.15, 0.3)
    heart_h = rng.uniform(0.14, 0.18) + 0.2 * (ctr - 0.45)
    heart = _ellipse(u, v, heart_cx, dome - heart_h * 0.75, heart_half, heart_h, 2.2)
    mediastinum = (np.abs(u) < medial + 0.005) & (v > lung_top - 0.08) & (v < dome)

    img[lungs] = 0.12 + 0.05 * np.clip((v[lungs] - lung_top) / (dome - lung_top), 0, 1)
    img[mediastinum] = 0.5
    img[heart] = 0.58
    abdomen = (v > lung_top) & body & ~lungs & ~heart & ~mediastinum & (v > dome - 0.1)
    img[abdomen] = 0.5 + 0.08 * np.clip((v[abdomen] - dome) / 0.3, 0, 1)
    stomach = _ellipse(u, v, thorax_half * 0.45, dome + 0.06, 0.07, 0.04)  # gas under left dome
    img[stomach & body] -= 0.15

    # Posterior ribs arc down and out from the spine; clavicles; spine with vertebral bodies.
    # (Each side's arc shape and extent computed once, not once per rib: the same arithmetic.)
    sides = []
    for side in (-1, 1):
        x = np.maximum(u * side, 0)
        sides.append((0.16 * (x / thorax_half) ** 1.5, 0.05 * (x / thorax_half) ** 3,
                       (x > 0.03) & (x < thorax_half + 0.03)))
    for k in range(9):
        y0 = lung_top - 0.01 + k * (dome - lung_top) / 9.5
        width = 0.008 + 0.004 * k / 9
        for rise, fall, extent in sides:
            rib = (np.abs(v - (y0 + rise - fall)) < width) & extent
            np.add(img, 0.08, out=img, where=rib)
    for side in (-1, 1):
        clav = np.abs(v - (-0.3 + 0.12 * (np.abs(u) - 0.05))) < 0.016
        img[clav & (u * side > 0.03) & (np.abs(u) < thorax_half + 0.05)] += 0.15
    spine = np.abs(u) < 0.035
    img[spine & (v > -0.45)] += 0.1
    img[spine & (np.sin((v + 0.5) * 110) > 0.6)] += 0.04

    # Burned-in marker outside the chest cavity (a lead letter, bright).
    marker = Image.new("L", (w, h), 0)
    mx = int(w * rng.choice([0.08, 0.82])); my = int(h * rng.uniform(0.05, 0.15))
    ImageDraw.Draw(marker).rectangle([mx, my, mx + w // 25, my + h // 20], fill=255)
    img = np.maximum(img, np.asarray(marker, np.float32) / 255 * 0.95)

    img = ndimage.gaussian_filter(img, sigma=h / 400)
    lungs &= ~heart
    if (h, w) != (full_h, full_w):
        zoom = (full_h / h, full_w / w)
        img = ndimage.zoom(img, zoom, order=1, grid_mode=True, mode="nearest")
        lungs = ndimage.zoom(lungs.astype(np.uint8), zoom, order=0, grid_mode=True, mode="nearest") > 0
        heart = ndimage.zoom(heart.astype(np.uint8), zoom, order=0, grid_mode=True, mode="nearest") > 0
    return img, lungs, heart


def acquire(img: np.ndarray, site: SiteProfile, rng: np.random.Generator) -> np.ndarray:
    """Applies the site's contrast, gamma, noise and bit depth; returns uint8 or uint16."""
    img = 0.5 + (img - 0.5) * site.contrast
    img = np.clip(img + rng.normal(0, site.noise, img.shape).astype(np.float32), 0, 1)
    img = img ** site.gamma
    top = (1 << site.bit_depth) - 1
    return np.round(img * top).astype(np.uint16 if site.bit_depth > 8 else np.uint8)


def draw_ctr(rng: np.random.Generator) -> float:
    """A CTR from a two-component mixture: normal hearts N(0.44, 0.035) below 0.5 and, with
    probability PREVALENCE, enlarged hearts N(0.57, 0.045) above it (clinical cohorts' shape)."""
    if rng.random() < PREVALENCE:
        low, high, mean, sd = CARDIOMEGALY_CTR + 0.005, 0.72, 0.57, 0.045
    else:
        low, high, mean, sd = 0.33, CARDIOMEGALY_CTR, 0.44, 0.035
    while True:
        ctr = rng.normal(mean, sd)
        if low <= ctr <= high:
            return float(ctr)


def metadata(seed: int, index: int, patient_id: str) -> dict:
    """CTR, label, sex and age of image `index`, without drawing it.

    The heart belongs to the patient: a patient's images share one CTR up to a small
    per-image measurement jitter, as repeat radiographs of one person do."""
    patient = _rng(seed, "patient", patient_id)
    base = draw_ctr(patient)
    sex, age = str(patient.choice(["F", "M"])), int(patient.integers(18, 95))
    ctr = float(np.clip(base + _rng(seed, "jitter", index).normal(0, 0.005), 0.3, 0.75))
    return {"ctr": round(ctr, 4), "label": int(ctr > CARDIOMEGALY_CTR), "sex": sex, "age": age}


def sample(seed: int, index: int, site: str, patient_id: str, size: int | None = None) -> Radiograph:
    """The radiograph number `index` of a dataset with this seed. Deterministic."""
    rng = _rng(seed, index)
    meta = metadata(seed, index, patient_id)
    image, lungs, heart = draw(rng, meta["ctr"], SITES[site], size)
    return Radiograph(image=acquire(image, SITES[site], rng), lungs=lungs, heart=heart,
                      ctr=meta["ctr"], label=meta["label"], site=site, patient_id=patient_id,
                      sex=meta["sex"], age=meta["age"])


def cohort(seed: int, n: int, sites=("site-a", "site-b"), weights=(0.75, 0.25)):
    """Yields (index, site, patient_id) for n images; about a fifth of patients have two."""
    rng = _rng(seed, "cohort")
    patient = 0
    index = 0
    while index < n:
        site = str(rng.choice(sites, p=np.asarray(weights) / sum(weights)))
        repeats = 2 if rng.random() < 0.2 else 1
        for _ in range(min(repeats, n - index)):
            yield index, site, f"{site}-p{patient:05d}"
            index += 1
        patient += 1


def export_files(out_dir: str, n: int, seed: int, size: int | None = None, progress=None) -> dict:
    """Writes the radiographs as each site stores them, for the file converters and the U-Net.

    site-a: 16-bit PNG (MONOCHROME2); site-b: 12-bit DICOM, MONOCHROME1 (stored inverted, bright
    air), so the external site also differs in photometric interpretation and file format.
    Also writes `masks/<id>_lungs.png`, `masks/<id>_heart.png` and `export.csv` (the generic
    converter's format, with the CTR)."""
    import csv
    import os

    from PIL import Image

    from cardio.imaging.dicom import write_dicom

    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "masks"), exist_ok=True)
    rows = []
    for index, site, patient in cohort(seed, n):
        r = sample(seed, index, site, patient, size)
        image_id = f"synth-{seed}-{index:06d}"
        if site == "site-b":
            stored = 4095 - np.round(r.image.astype(np.float64) / np.iinfo(r.image.dtype).max * 4095)
            name = f"{image_id}.dcm"
            write_dicom(os.path.join(out_dir, "images", name), stored.astype(np.uint16),
                        photometric="MONOCHROME1", bits=12)
        else:
            name = f"{image_id}.png"
            Image.fromarray(r.image).save(os.path.join(out_dir, "images", name))
        Image.fromarray(r.lungs.astype(np.uint8) * 255).save(
            os.path.join(out_dir, "masks", f"{image_id}_lungs.png"))
        Image.fromarray(r.heart.astype(np.uint8) * 255).save(
            os.path.join(out_dir, "masks", f"{image_id}_heart.png"))
        rows.append({"path": name, "label": r.label, "patient_id": patient, "sex": r.sex,
                     "age": r.age, "view": r.view, "site": site, "ctr": r.ctr})
        if progress:
            progress(1)
    with open(os.path.join(out_dir, "export.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return {"images": len(rows), "csv": os.path.join(out_dir, "export.csv")}
