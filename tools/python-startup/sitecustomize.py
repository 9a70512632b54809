"""Run at the start of every Python process `./cardio` starts (tools/environment.sh puts this
folder first on PYTHONPATH): with TensorFlow's C++ INFO and WARNING lines switched off
(TF_CPP_MIN_LOG_LEVEL 2 or 3, `./cardio exec`'s default), the lines TensorFlow prints before that
switch applies are dropped too (cardio.tf_noise). `./cardio --verbose exec` sets it to 0 and
everything shows. It shadows Debian's own sitecustomize, which only installs Ubuntu's apport hook.
"""
import os

if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "") in ("2", "3"):
    try:
        from cardio import tf_noise
    except ImportError:     # a PYTHONPATH without the project's src/: nothing to filter with
        pass
    else:
        tf_noise.install()
