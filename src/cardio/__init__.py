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
