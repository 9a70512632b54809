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

    body = _ellipse(u, v, 0, 0.12, thorax_half + 0.11, 0.75, 2.6) & (v > -0.38)
    shoulders = _ellipse(u, v, 0, -0.34, thorax_half + 0.16, 0.09, 2.0)
    arms = (np.abs(u) > thorax_half + 0.13) & (np.abs(u) < thorax_half + 0.24) & (v > -0.36)
    neck = (np.abs(u) < 0.075) & (v < -0.3)
    head = _ellipse(u, v, 0, -0.62, 0.16, 0.14)
    img[body | shoulders | neck | head] = 0.42
    img[arms] = 0.47
    img += 0.05 * np.clip(1 - np.abs(u) / (thorax_half + 0.12), 0, 1)  # soft-tissue thickness

    # Lungs: rounded, flat on the mediastinal side, domed diaphragm below.
    lung_w = thorax_half * rng.uniform(0.72, 0.8)
    lungs = np.zeros((h, w), bool)
    for side in (-1, 1):
        cx = side * (thorax_half - lung_w / 2)
        lung = _ellipse(u, v, cx, (lung_top + dome) / 2, lung_w / 2, (dome - lung_top) / 2, 2.4)
        lungs |= lung

    # Heart: sits on the diaphragm, shifted to the patient's left (image right).
    heart_half = ctr * thorax_half
    heart_cx = heart_half * rng.uniform(0.15, 0.3)
    heart_h = rng.uniform(0.14, 0.18) + 0.2 * (ctr - 0.45)
    heart = _ellipse(u, v, heart_cx, dome - heart_h * 0.75, heart_half, heart_h, 2.2)
    mediastinum = (np.abs(u) < rng.uniform(0.05, 0.07)) & (v > lung_top - 0.05) & (v < dome)

    img[lungs] = 0.13
    img[mediastinum] = 0.5
    img[heart] = 0.58
    img[(v > dome) & body & ~lungs] = 0.55                 # abdomen under the diaphragm

    # Ribs: posterior arcs over the lungs; clavicles; spine with vertebral bodies.
    for k in range(10):
        y0 = lung_top + 0.02 + k * (dome - lung_top) / 10.5
        for side in (-1, 1):
            arc = y0 + 0.09 * ((u * side - 0.02) / thorax_half) ** 2 - 0.03 * (u * side > 0)
            rib = (np.abs(v - arc - 0.05 * np.abs(u)) < 0.011) & (np.abs(u) < thorax_half + 0.02)
            img[rib & (u * side > 0)] += 0.09
    for side in (-1, 1):
        clav = np.abs(v - (-0.3 + 0.12 * (np.abs(u) - 0.05))) < 0.016
        img[clav & (u * side > 0.03) & (np.abs(u) < thorax_half + 0.05)] += 0.15
    spine = np.abs(u) < 0.035
    img[spine & (v > -0.45)] += 0.12
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
    """CTR, label, sex and age of image `index`, without drawing it (the same draws `sample` makes)."""
    ctr = draw_ctr(_rng(seed, index))
    patient = _rng(seed, "patient", patient_id)
    return {"ctr": round(ctr, 4), "label": int(ctr > CARDIOMEGALY_CTR),
            "sex": str(patient.choice(["F", "M"])), "age": int(patient.integers(18, 95))}


def sample(seed: int, index: int, site: str, patient_id: str, size: int | None = None) -> Radiograph:
    """The radiograph number `index` of a dataset with this seed. Deterministic."""
    rng = _rng(seed, index)
    ctr = draw_ctr(rng)
    meta = metadata(seed, index, patient_id)
    image, lungs, heart = draw(rng, ctr, SITES[site], size)
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
