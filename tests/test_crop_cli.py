"""`cardio crop` on a folder of mixed formats: crops, CSV, overlays and one JSON summary."""
import csv
import json

from click.testing import CliRunner

from cardio.cli import main
from cardio.data import synth
from cardio.imaging import unet


def test_crop_folder(tmp_path):
    synth.export_files(str(tmp_path / "files"), 4, seed=3, size=200)   # PNG 16-bit and DICOM
    images = tmp_path / "files" / "images"
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    weights = tmp_path / "unet.weights.h5"
    unet.build().save_weights(str(weights))
    result = CliRunner().invoke(main, ["crop", "--images", str(images), "--out",
                                       str(tmp_path / "out"), "--weights", str(weights),
                                       "--size", "64", "--overlays", "2"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["n"] == 5 and summary["cropped"] == 4 and summary["failed"] == 1
    assert 0 <= summary["flagged"] <= 4
    rows = list(csv.DictReader(open(tmp_path / "out" / "crops.csv")))
    assert len(rows) == 5
    broken = next(r for r in rows if r["file"] == "broken.png")
    assert broken["error"] and not broken["y0"]
    assert len(list((tmp_path / "out" / "crops").glob("*.png"))) == 4
    assert len(list((tmp_path / "out" / "overlays").glob("*.png"))) == 2
    flagged = sum(1 for r in rows if r["qc_flags"])
    assert flagged == summary["flagged"]
