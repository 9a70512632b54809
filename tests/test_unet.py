"""The shipped lung U-Net on a small fixed subset of held-out real radiographs, and on synthetic
radiographs it never saw."""
import os
import shutil

from conftest import shared_path

from cardio.data import synth
from cardio.imaging import unet


def test_shipped_weights_exist_within_size_and_with_a_card():
    assert os.path.isfile(unet.DEFAULT_WEIGHTS), "the U-Net weights ship with the project"
    assert os.path.getsize(unet.DEFAULT_WEIGHTS) <= 8 * 1024 * 1024
    card = unet.card_metadata(unet.DEFAULT_WEIGHTS)
    assert "non-commercial" in card["licence"] and card["held_out"]["dice"] >= 0.95


def test_held_out_real_subset_dice(tmp_path):
    images = shared_path("data", "lung-masks", "images")
    masks = shared_path("data", "lung-masks", "masks")
    held_out = sorted(n for n in os.listdir(images) if unet.held_out(n))
    subset = [n for n in held_out if n.startswith("MCUCXR")][:4] + \
             [n for n in held_out if n.startswith("CHNCXR")][:8]
    for directory in ("images", "masks"):
        os.makedirs(tmp_path / directory)
    for name in subset:
        shutil.copy(images / name, tmp_path / "images" / name)
        shutil.copy(masks / name, tmp_path / "masks" / name)
    result = unet.evaluate(str(tmp_path / "images"), str(tmp_path / "masks"))
    assert result["n"] == 12
    assert set(result["subsets"]) == {"montgomery", "shenzhen"}
    assert result["dice"] >= 0.93


def test_synthetic_radiographs_are_segmented(tmp_path):
    synth.export_files(str(tmp_path), 8, seed=987, size=512)
    result = unet.evaluate(str(tmp_path / "images"), str(tmp_path / "masks"))
    assert result["n"] == 8 and result["subsets"]["synthetic"]["n"] == 8
    assert result["dice"] >= 0.85
