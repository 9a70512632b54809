"""On Kubeflow every artifact lives in object storage (gs://, s3://), not on a local disk: the
stages that read the lung U-Net's HDF5 weights (LungCrop, the Trainer's serving export) load it
from a remote URI, and the crop report draws its figure there. TensorFlow's in-memory `ram://` file system stands in for the bucket."""
import numpy as np
import tensorflow as tf

from cardio import imaging
from cardio.components import crop_report
from cardio.imaging import unet


def test_unet_weights_load_from_a_remote_uri(tmp_path):
    model = unet.build()
    local = tmp_path / imaging.UNET_WEIGHTS_FILE
    model.save_weights(str(local))
    remote = f"ram://bucket/unet/{imaging.UNET_WEIGHTS_FILE}"
    tf.io.gfile.makedirs("ram://bucket/unet")
    tf.io.gfile.copy(str(local), remote, overwrite=True)
    assert not tf.io.gfile.exists(remote.replace("ram://", "/"))

    loaded = unet.load(remote)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    # The model card metadata reads the same remote file.
    assert unet.card_metadata(remote)["weights_sha256"] == unet.card_metadata(str(local))[
        "weights_sha256"]


def test_crop_report_figure_is_written_to_a_remote_uri():
    rng = np.random.default_rng(0)
    sites = np.array(["site-a"] * 12 + ["site-b"] * 12)
    panels = {"before cropping": (rng.normal(size=(24, 16)), sites, 0.9),
              "after cropping": (rng.normal(size=(24, 16)), sites, 0.6)}
    path = "ram://bucket/report/crop_report.png"
    crop_report.plot(path, panels)
    with tf.io.gfile.GFile(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
