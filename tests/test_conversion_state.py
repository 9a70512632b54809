"""What a conversion leaves behind: a killed or interrupted one never leaves a span the pipeline
reads, its leftovers are removed by the next run (with a message), a failed attempt's report goes
once a conversion succeeds, and the image-id map's place is checked before any work."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cardio.cli import main
from cardio.data import convert
from cardio.pipeline import preflight

# A conversion of synthetic radiographs whose loader is slow, so it can be stopped mid-way.
SLOW = """
import functools, sys, time
from cardio.data import convert

def slow(candidate):
    time.sleep(0.05)
    return convert.synthetic_loader(0, 64, candidate)

if sys.argv[2] == "sigterm":
    convert.exit_on_sigterm()
convert.convert(convert.synthetic_selection(0, 400), slow, sys.argv[1], 1, (), salt="s",
                workers=1)
"""


def _stop_midway(out, how):
    process = subprocess.Popen([sys.executable, "-c", SLOW, str(out), how],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        partial = [p for p in out.glob(".span-1.partial-*") if list(p.glob("*/*.tfrecord.gz"))]
        if partial:
            break
        time.sleep(0.05)
    assert process.poll() is None, process.stderr.read().decode()[-2000:]
    time.sleep(0.3)                       # well inside the writing of the span
    process.send_signal(signal.SIGKILL if how == "sigkill" else signal.SIGTERM)
    process.wait(timeout=60)
    return process


@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
def test_a_conversion_stopped_midway_leaves_no_span_and_the_next_run_cleans_up(tmp_path, how):
    out = tmp_path / "data"
    _stop_midway(out, how)
    # Nothing the pipeline reads: no span-N directory (ExampleGen's pattern, the preflight's).
    assert not (out / "span-1").exists()
    assert preflight.span_numbers(str(out)) == []
    leftovers = sorted(p.name for p in out.glob(".span-1.partial-*"))
    if how == "sigterm":
        assert leftovers == []            # unwound: it removed its own partial span
        return
    assert leftovers                      # a kill skips every cleanup ...
    summary = convert.convert(convert.synthetic_selection(0, 20),
                              lambda c: convert.synthetic_loader(0, 64, c), str(out), 1, (),
                              salt="s", workers=1)
    assert summary["removed"] == leftovers                  # ... the next run removes it
    assert sorted(p.name for p in out.iterdir()) == ["span-1"]
    assert preflight.span_numbers(str(out)) == [1]


def _csv(tmp_path, rows):
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    pixels = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    with open(tmp_path / "export.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "patient_id", "site"])
        for i, name in enumerate(rows):
            if name.endswith(".png"):
                Image.fromarray(pixels).save(images / name)
            writer.writerow([name, i % 2, f"P{i}", "site-a"])
    return images


def test_a_failed_attempts_report_is_removed_by_the_next_success_with_a_message(tmp_path,
                                                                               monkeypatch):
    monkeypatch.setenv("CARDIO_PATIENT_SALT", "test-salt")
    images = _csv(tmp_path, [f"{i}.png" for i in range(8)] + ["missing-a.png.x", "missing-b.x"])
    command = ["data", "csv", "--csv", str(tmp_path / "export.csv"), "--images", str(images),
               "--out", str(tmp_path / "out"), "--id-map", str(tmp_path / "ids.csv")]
    failed = CliRunner().invoke(main, command)
    assert failed.exit_code == 1 and "no span was written" in failed.output
    assert (tmp_path / "out" / "failed-span-1" / "quarantine.csv").exists()
    passed = CliRunner().invoke(main, command + ["--quarantine-limit", "0.5"])
    assert passed.exit_code == 0, passed.output
    assert not (tmp_path / "out" / "failed-span-1").exists()
    assert "removed" in passed.output and "failed-span-1" in passed.output
    assert sorted(os.listdir(tmp_path / "out")) == ["span-1"]
    assert json.loads(passed.stdout.strip().splitlines()[-1])["removed"] == ["failed-span-1"]


def test_an_unwritable_id_map_place_is_refused_before_any_work_naming_the_option(tmp_path,
                                                                                monkeypatch):
    monkeypatch.setenv("CARDIO_PATIENT_SALT", "test-salt")
    images = _csv(tmp_path, [f"{i}.png" for i in range(4)])
    # The default place is beside the metadata; here that directory cannot take a file (it is a
    # file itself: permission bits would not stop root).
    (tmp_path / "mounted").write_text("")
    result = CliRunner().invoke(main, [
        "data", "csv", "--csv", str(tmp_path / "export.csv"), "--images", str(images), "--out",
        str(tmp_path / "out"), "--id-map", str(tmp_path / "mounted" / "ids.csv")])
    assert result.exit_code == 2 and "--id-map" in result.output
    assert "cannot write the image-id map" in result.output
    assert not (tmp_path / "out").exists()                 # refused before any image was read
    if os.geteuid() != 0:                                   # a read-only metadata directory
        readonly = tmp_path / "readonly"
        readonly.mkdir()
        (tmp_path / "export.csv").rename(readonly / "export.csv")
        readonly.chmod(0o555)
        result = CliRunner().invoke(main, [
            "data", "csv", "--csv", str(readonly / "export.csv"), "--images", str(images),
            "--out", str(tmp_path / "out")])
        readonly.chmod(0o755)
        assert result.exit_code == 2 and "--id-map" in result.output


def test_a_sites_declared_bit_depth_reaches_the_stored_pixels(tmp_path, monkeypatch):
    """`--bits-stored 12`: a 12-bit detector's 16-bit PNGs (no sBIT) are stored as a 12-bit
    DICOM of the same radiograph would be."""
    import glob

    import tensorflow as tf

    from cardio import features as F

    monkeypatch.setenv("CARDIO_PATIENT_SALT", "test-salt")
    images = tmp_path / "images"
    images.mkdir()
    pixels = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (64, 1))
    with open(tmp_path / "export.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "patient_id", "site"])
        for i in range(6):
            Image.fromarray(pixels).save(images / f"{i}.png")
            writer.writerow([f"{i}.png", i % 2, f"P{i}", "site-a"])

    def stored_maximum(out, *options):
        result = CliRunner().invoke(main, ["data", "csv", "--csv", str(tmp_path / "export.csv"),
                                           "--images", str(images), "--out", str(out),
                                           "--id-map", str(tmp_path / f"{out.name}.csv"),
                                           *options])
        assert result.exit_code == 0, result.output
        records = tf.data.TFRecordDataset(glob.glob(str(out / "span-1" / "*" / "*.gz")), "GZIP")
        return max(int(tf.io.decode_png(tf.train.Example.FromString(r.numpy()).features.feature[
            F.IMAGE].bytes_list.value[0], dtype=tf.uint16).numpy().max()) for r in records)

    assert stored_maximum(tmp_path / "declared", "--bits-stored", "12") == 65535
    assert stored_maximum(tmp_path / "as-stored") == 4095
