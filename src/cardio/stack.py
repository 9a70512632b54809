"""The pinned stack, as this environment actually imports it."""
import importlib.metadata
import platform

DISTRIBUTIONS = ("tfx", "tensorflow", "tensorflow-model-analysis", "tensorflow-transform",
                 "tensorflow-data-validation", "apache-beam", "kfp", "kfp-pipeline-spec",
                 "kubernetes", "tf-keras", "tensorflow-serving-api", "ml-metadata")


def versions() -> dict:
    result = {"python": platform.python_version(), "glibc": platform.libc_ver()[1]}
    for name in DISTRIBUTIONS:
        result[name] = importlib.metadata.version(name)
    return result
