"""Synthetic radiographs: deterministic, realistic label definition and prevalence, two sites."""
import numpy as np

from cardio.data import synth


def test_same_seed_same_image_and_masks():
    a = synth.sample(3, 5, "site-a", "p1", size=256)
    b = synth.sample(3, 5, "site-a", "p1", size=256)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.lungs, b.lungs)
    assert a.ctr == b.ctr
    c = synth.sample(4, 5, "site-a", "p1", size=256)
    assert not np.array_equal(a.image, c.image)


def test_label_is_ctr_above_half_and_prevalence_is_clinical():
    rng = np.random.default_rng(0)
    ctrs = np.array([synth.draw_ctr(rng) for _ in range(4000)])
    prevalence = (ctrs > synth.CARDIOMEGALY_CTR).mean()
    assert 0.14 <= prevalence <= 0.20
    assert 0.42 <= np.median(ctrs) <= 0.47
    r = synth.sample(0, 1, "site-b", "p", size=256)
    assert r.label == int(r.ctr > 0.5)


def test_sites_differ_in_bit_depth_and_size():
    a = synth.sample(0, 0, "site-a", "p")
    b = synth.sample(0, 0, "site-b", "p")
    assert a.image.dtype == np.uint16 and b.image.dtype == np.uint8
    assert max(a.image.shape) == 1024 and max(b.image.shape) == 1280


def test_masks_are_plausible_lungs_and_heart():
    r = synth.sample(0, 2, "site-a", "p", size=512)
    assert r.lungs.shape == r.image.shape == r.heart.shape
    assert not (r.lungs & r.heart).any()
    lung_fraction = r.lungs.mean()
    assert 0.1 < lung_fraction < 0.5
    # The lungs are darker than the heart (MONOCHROME2: air is dark).
    assert r.image[r.lungs].mean() < r.image[r.heart].mean()
    # Two lungs: one either side of the midline.
    cols = np.where(r.lungs.any(axis=0))[0]
    assert cols.min() < r.image.shape[1] / 2 < cols.max()


def test_heart_width_follows_ctr():
    small = synth.sample(0, 0, "site-a", "p", size=512)
    widths = {}
    for ctr in (0.4, 0.6):
        rng = np.random.default_rng(1)
        _, _, heart = synth.draw(rng, ctr, synth.SITES["site-a"], 512)
        cols = np.where(heart.any(axis=0))[0]
        widths[ctr] = cols.max() - cols.min()
    assert widths[0.6] / widths[0.4] == np.clip(widths[0.6] / widths[0.4], 1.35, 1.65)
    assert small.image.ndim == 2


def test_cohort_has_repeat_patients_and_both_sites():
    rows = list(synth.cohort(0, 400))
    assert len(rows) == 400
    patients = [p for _, _, p in rows]
    assert len(set(patients)) < len(patients)
    sites = {s for _, s, _ in rows}
    assert sites == {"site-a", "site-b"}


def test_a_patients_images_share_their_heart():
    rows = [(i, p) for i, _, p in synth.cohort(0, 300)]
    by_patient = {}
    for index, patient in rows:
        by_patient.setdefault(patient, []).append(synth.metadata(0, index, patient)["ctr"])
    repeats = [ctrs for ctrs in by_patient.values() if len(ctrs) > 1]
    assert repeats
    assert max(abs(a - b) for a, b in repeats) < 0.05


def test_the_demo_draws_a_set_once_per_seed_and_size_and_copies_it_after(tmp_path, monkeypatch):
    from cardio.pipeline import configs, demo

    # Six radiographs: drawn in this process (the converter spawns workers from eight on).
    monkeypatch.setenv("CARDIO_DATA_CACHE", str(tmp_path / "cache"))
    config, said = configs.demo_config(None), []
    first = demo.cached_data(str(tmp_path / "a"), 6, 3, 64, config, None, said.append)
    assert said == [] and sum(sum(c.values()) for c in first.values()) == 6
    second = demo.cached_data(str(tmp_path / "b"), 6, 3, 64, config, None, said.append)
    assert second == first and len(said) == 1 and said[0].startswith("Reusing")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(tmp_path / "b")
                                     for p in (tmp_path / "b").rglob("*") if p.is_file())
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    # Another seed or size is another set; nothing half-written is left in the cache.
    assert demo.synthetic_cache(12, 4, 64, "site-b") != demo.synthetic_cache(12, 3, 64, "site-b")
    assert demo.synthetic_cache(12, 3, 96, "site-b") != demo.synthetic_cache(12, 3, 64, "site-b")
    assert not list((tmp_path / "cache").glob("*.partial-*"))
