"""What TensorFlow prints while its shared libraries load, and a filter that drops only that.

TF_CPP_MIN_LOG_LEVEL hides TensorFlow's C++ INFO and WARNING lines, but not those printed before
absl's logging is initialised: absl's pre-initialisation notice, INFO/WARNING lines of static
initialisers (the CUDA stub's "Could not find cuda drivers", oneDNN, TF-TRT), and the
registration/CUDA-probe errors a CPU-only host always gets. `install()` runs the first
`import tensorflow` with file descriptor 2 captured and writes back every other line, in order.

Used by the `cardio` command (cli.py) and, for any Python process `./cardio exec` starts, by
tools/python-startup/sitecustomize.py. Nothing here imports TensorFlow.
"""
from __future__ import annotations

import contextlib
import glob
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile

# Only these lines, and only while `import tensorflow` runs, are dropped.
LOAD_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] "
    r"|\d{4}-\d\d-\d\d [\d:.]+: [IW] \S+:\d+\] "
    r"|(E\d{4} [\d:.]+ +\d+ |\d{4}-\d\d-\d\d [\d:.]+: E )[\w./]+:\d+\] (Unable to register "
    r"cu(DNN|FFT|BLAS) factory|.*computation placer already registered|failed call to cuInit)"
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler")


@contextlib.contextmanager
def load_noise_filtered():
    """File descriptor 2 goes to a temporary file for the duration; then every line but
    LOAD_NOISE's is written to the real stderr, in order."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):       # no usable stderr: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = b"".join(line for line in capture.read().splitlines(keepends=True)
                            if not LOAD_NOISE.match(line.decode(errors="replace")))
            while kept:
                kept = kept[os.write(2, kept):]


class QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Runs the first `import tensorflow` under load_noise_filtered. On hosts without an NVIDIA
    device it also lists the devices there: TensorFlow's CUDA probe (an error line on CPU-only
    hosts) runs then rather than at the first op."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def quiet_exec_module(module):
            with load_noise_filtered():
                exec_module(module)
                if not glob.glob("/dev/nvidia[0-9]*"):
                    module.config.list_physical_devices()

        spec.loader.exec_module = quiet_exec_module
        return spec


def install() -> None:
    """Filters the first `import tensorflow` of this process (once; nothing if already imported)."""
    if "tensorflow" not in sys.modules and \
            not any(isinstance(f, QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, QuietTensorFlowImport())
