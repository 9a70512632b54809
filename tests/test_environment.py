"""The environment imports the pinned stack at the pinned versions."""
import importlib
import sys

from packaging.version import Version

from cardio import stack


def test_stack_versions_are_the_pinned_ones():
    v = {name: Version(version) for name, version in stack.versions().items()
         if name not in ("python", "glibc")}
    assert sys.version_info[:2] == (3, 13)
    assert v["tfx"] == Version("1.21.0")
    assert Version("2.21") <= v["tensorflow"] < Version("2.22")
    assert Version("0.52") <= v["tensorflow-model-analysis"] < Version("0.53")
    assert Version("1.21") <= v["tensorflow-transform"] < Version("1.22")
    assert Version("1.21") <= v["tensorflow-data-validation"] < Version("1.22")
    assert Version("2.77") <= v["apache-beam"] < Version("2.78")
    assert Version("2.16") <= v["kfp"] < Version("2.17")
    assert v["kfp-pipeline-spec"] < Version("2.17")
    assert v["kubernetes"] < Version("27")
    assert Version("2.21") <= v["tf-keras"] < Version("2.22")


def test_glibc_is_new_enough_for_mlmd_and_tfdv():
    assert Version(stack.versions()["glibc"]) >= Version("2.39")


def test_stack_imports():
    for module in ("tfx.v1", "tensorflow_model_analysis", "tensorflow_transform",
                   "tensorflow_data_validation", "apache_beam", "kfp", "ml_metadata",
                   "tensorflow_serving.apis.prediction_service_pb2_grpc",
                   "tensorflow_serving.apis.model_service_pb2_grpc"):
        importlib.import_module(module)


def test_keras_2_is_what_tensorflow_exposes():
    import tensorflow as tf
    import tf_keras

    assert tf.keras.Model is tf_keras.Model
