"""cardio: a TFX / Kubeflow pipeline that detects cardiomegaly on chest radiographs.

One import name. Layers, top to bottom; each may import only those below it (import-linter's
contract in pyproject.toml, checked by the test suite):

  cardio.cli            the `cardio` command
  cardio.pipeline       pipeline assembly, configuration and runners        (pipeline/)
  cardio.components     the TFX components, Pusher executor included        (components/)
  cardio.trainer        model, input pipeline, run_fn, export               (trainer/)
    | cardio.serving    `cardio serve`, client, releases, TF Serving files  (serving/)
  cardio.evaluation     statistics, model comparison, reports, explanations
  cardio.data           sources, converters, splits, records, synthetic radiographs
  cardio.imaging        decode, DICOM, U-Net, crop, saliency
  cardio.features       every shared name (features, splits, signatures)    + cardio.schemas
"""
__version__ = "0.1.0"

# TFX's Kubeflow V2 entrypoint imports a custom artifact type by its KFP schema title, which must
# be `<namespace>.<Name>` (one dot): the pipeline's own types resolve here, imported on first use.
_ARTIFACT_TYPES = {"DatasetReport": ("cardio.components.crop_report", "DatasetReport"),
                   "ModelCard": ("cardio.components.model_card", "ModelCardArtifact"),
                   "ModelComparison": ("cardio.components.model_comparison",
                                       "ModelComparisonArtifact")}


def __getattr__(name: str):
    if name in _ARTIFACT_TYPES:
        import importlib

        module, attribute = _ARTIFACT_TYPES[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'cardio' has no attribute {name!r}")
