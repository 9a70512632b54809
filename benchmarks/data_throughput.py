"""Data layer throughput on this machine.

- synthetic generation: radiographs/s at the sites' native sizes (1024-1280 px), all cores;
- conversion: the generic-CSV converter (read, normalise, hash, split, write TFRecords) on the
  same PNG files, as images/s and as a ratio to a plain decode + encode of those files in the
  same process (the unavoidable work): 1.0 means the converter adds nothing on top.
"""
from __future__ import annotations

import csv
import functools
import os
import tempfile
import time

from cardio.data import convert, synth
from cardio.imaging import files
from cardio.imaging.files import encode_png

N_SYNTH = 48
N_CONVERT = 48


def _time(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main():
    with tempfile.TemporaryDirectory() as tmp:
        seconds_synth, _ = _time(lambda: convert.write_synthetic(
            os.path.join(tmp, "synth"), N_SYNTH, seed=0, size=None, span=1,
            external_sites=("site-b",)))

        images = os.path.join(tmp, "images")
        os.makedirs(images)
        rows = []
        for index, site, patient in synth.cohort(1, N_CONVERT):
            r = synth.sample(1, index, site, patient)
            name = f"{index:05d}.png"
            with open(os.path.join(images, name), "wb") as f:
                f.write(encode_png(r.image))
            rows.append({"path": name, "label": r.label, "patient_id": patient, "site": site})
        with open(os.path.join(tmp, "export.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, ["path", "label", "patient_id", "site"])
            writer.writeheader()
            writer.writerows(rows)

        paths = [os.path.join(images, row["path"]) for row in rows]
        seconds_plain, _ = _time(lambda: [files.normalised_png(p) for p in paths])

        def run_converter(workers):
            selection = convert.csv_selection(os.path.join(tmp, "export.csv"))
            return convert.convert(selection, functools.partial(convert.file_loader, images),
                                   os.path.join(tmp, f"out-{workers}"), 1, ("site-b",), salt="bench",
                                   workers=workers)
        seconds_one, _ = _time(lambda: run_converter(1))
        seconds_all, _ = _time(lambda: run_converter(os.cpu_count() or 1))

    cores = os.cpu_count()
    print(f"\nData layer throughput ({cores} cores)")
    print(f"{'what':<52}{'images':>8}{'images/s':>10}{'ratio':>8}")
    print(f"{'synthetic generation, native size, all cores':<52}{N_SYNTH:>8}"
          f"{N_SYNTH / seconds_synth:>10.1f}{'':>8}")
    print(f"{'plain decode + encode (baseline), 1 core':<52}{N_CONVERT:>8}"
          f"{N_CONVERT / seconds_plain:>10.1f}{1.0:>8.2f}")
    print(f"{'converter, 1 worker':<52}{N_CONVERT:>8}{N_CONVERT / seconds_one:>10.1f}"
          f"{seconds_plain / seconds_one:>8.2f}")
    print(f"{f'converter, {cores} workers':<52}{N_CONVERT:>8}{N_CONVERT / seconds_all:>10.1f}"
          f"{seconds_plain / seconds_all:>8.2f}")


if __name__ == "__main__":
    main()
