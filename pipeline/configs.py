"""Every tunable value of the pipeline, in one place.

`PipelineConfig()` is the study's recipe: five backbones x two class weightings, 224 px, RMSprop
1e-3, batch 16, 30 epochs, and the study's acceptance gate. `demo_config()` is a small override
of it that trains one small model for a few steps on the built-in synthetic data.
"""
from __future__ import annotations

import dataclasses

from cardio import features as F
from cardio.components.gate import GATE_PROFILES, GateProfile  # noqa: F401  (part of the configuration's API)
from cardio.evaluation.statistics import NO_CI, TFMA_CI
from cardio.imaging import SHIPPED_UNET_DIR, UNET_WEIGHTS_FILE
from cardio.serving.config import BatchingConfig

# Beam always runs on a named runner: DirectRunner would first try to download a Prism binary.
FN_API_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
# TFX builds an sdist of itself for Beam's workers unless a dependency flag is given
# (tfx/utils/dependency_utils.py): 2.7 s per Beam stage, and 52 MB left in a temporary directory
# it never removes. Beam's local runner, in-process or multi-process, stages nothing and runs its
# workers in this environment; an empty --extra_package is such a flag, and TFX skips the sdist.
NO_STAGING = "--extra_package="


@dataclasses.dataclass(frozen=True)
class GridCell:
    backbone: str
    weighting: str

    @property
    def name(self) -> str:
        """Model name, as TF Serving and the component ids use it."""
        return f"cardio-{self.backbone}-{self.weighting}".replace("_", "-")


STUDY_BACKBONES = ("efficientnetb2", "densenet121", "xception", "inceptionv3", "mobilenet")
STUDY_WEIGHTINGS = ("75-25", "50-50")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    pipeline_name: str = "cardiomegaly"
    grid: tuple = tuple(GridCell(b, w) for b in STUDY_BACKBONES for w in STUDY_WEIGHTINGS)
    spans: tuple | None = None             # (first, last) span to read; None: the newest
    internal_sites: tuple = ("site-a",)
    # None: no external site; the gate then judges the internal test slices only, and says so.
    external_site: str | None = "site-b"
    # Projections a span may hold (the study: PA only); a span with another view is refused.
    views: tuple = ("PA",)
    gate: GateProfile = GATE_PROFILES["study"]
    image_size: int = 224
    weights: str | None = None             # ImageNet weights file or cache directory
    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 1e-3
    lr_factor: float = 0.5                 # ReduceLROnPlateau on validation loss
    lr_patience: int = 5
    augment_positives: bool = True         # rotation, shift, shear, scale, flip; cardiomegaly only
    # Augmented copies added per cardiomegaly image and epoch (kept beside the original). The
    # study gives no factor; 1 doubles the positives, e.g. 81 -> 162 of 3,460 NIH training images.
    positive_copies: int = 1
    mixed_precision: bool = True           # float16 compute when training on GPUs
    steps_per_epoch: int | None = None     # None: one pass over the training split per epoch
    # Training and validation decoded once and kept in memory when they take no more than this
    # decoded (images x size^2 x 3 x 4 bytes); larger splits are decoded again every epoch.
    decoded_cache_bytes: int = 1 << 30
    target_sensitivity: float = 0.9
    # Fewer validation positives: the Trainer refuses calibration and the operating threshold,
    # and the gate fails the model naming why (trainer/calibration.py).
    min_validation_positives: int = 10
    # Fewer positives in an evaluated split (validation, test, external): the run stops before
    # training, naming the split and its count (components/split_check.py).
    min_split_positives: int = 10
    # TFMA's CI beside every metric (model card, demo table); the gate reads point estimates, so
    # a quick run may turn it off. `ci_method`: "bootstrap" (Poisson, 20 replicates: each example
    # is scored into every replicate, several times the evaluation's cost) or "jackknife" (20
    # delete-one-bucket estimates from one pass: a fraction of that; TFMA's own two methods).
    confidence_intervals: bool = True
    ci_method: str = "bootstrap"
    seed: int = 0
    # Same examples + configuration + seed -> the same model: seeded initialisation, shuffles and
    # augmentation, records in a content-fixed order (not Beam's), TensorFlow op determinism.
    deterministic: bool = True
    # The lung U-Net (a directory holding UNET_WEIGHTS_FILE): the crop stage runs when set.
    segmenter_uri: str | None = None
    crop_size: int = 512
    # Model comparison: PPV and NPV are reported at this prevalence of cardiomegaly, since the test
    # set has its source's prevalence, not a ward's (about 17% of PadChest's normal-or-cardiomegaly
    # PA images have it).
    deployment_prevalence: float = 0.17
    # Fairness review: a slice, or its complement, with fewer cases of a class is too small to judge.
    fairness_min_per_class: int = 10
    # Drift between spans (components/drift_gate.py): the run stops before training when a split's
    # site, sex, age band, label or bit-depth distribution moved by more than this L-infinity
    # distance from the previous span's, or its image size distribution by more than this
    # Jensen-Shannon divergence. A weekly span of a stable population moves by a few hundredths.
    drift_max_categorical_linf: float = 0.1
    drift_max_numeric_jsd: float = 0.1
    beam_pipeline_args: tuple = (f"--runner={FN_API_RUNNER}", "--direct_running_mode=in_memory",
                                 NO_STAGING)
    # TF Serving's server-side batching; the Pusher writes it beside models.config.
    batching: BatchingConfig = BatchingConfig()

    @property
    def sites(self) -> tuple:
        return tuple(self.internal_sites) + ((self.external_site,) if self.external_site else ())

    @property
    def ci_description(self) -> str:
        """What the Evaluator's intervals will be, as every table names them."""
        return TFMA_CI[self.ci_method] if self.confidence_intervals else NO_CI

    @property
    def splits(self) -> tuple:
        """The splits a span has: no `external` split without an external site."""
        return tuple(s for s in F.SPLITS if self.external_site or s != F.EXTERNAL)

    @property
    def eval_splits(self) -> list:
        """The splits the Evaluator scores per slice: internal test, and the external site's."""
        return [s for s in (F.TEST, F.EXTERNAL) if s in self.splits]

    @property
    def scored_splits(self) -> list:
        """The splits a threshold, calibration or gate rests on: validation and eval_splits.
        Each must hold `min_split_positives` cardiomegaly images."""
        return [F.VALIDATION, *self.eval_splits]

    def validate(self) -> None:
        """Raises ValueError naming the field when the values contradict each other."""
        if not self.internal_sites:
            raise ValueError("internal_sites: at least one internal site is required")
        if self.external_site in self.internal_sites:
            raise ValueError(f"external_site: {self.external_site!r} is also an internal site")
        if not self.grid:
            raise ValueError("grid: at least one (backbone, weighting) cell is required")
        if self.spans is not None and (len(self.spans) != 2 or self.spans[0] > self.spans[1]):
            raise ValueError(f"spans: expected [first, last] with first <= last, got {list(self.spans)}")
        for name in ("target_sensitivity", "deployment_prevalence"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name}: must lie strictly between 0 and 1")
        if self.ci_method not in TFMA_CI:
            raise ValueError(f"ci_method: must be one of {', '.join(TFMA_CI)}, got {self.ci_method!r}")
        for name in ("image_size", "crop_size", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1")

    def trainer_custom_config(self, cell: GridCell) -> dict:
        return {"backbone": cell.backbone, "weighting": cell.weighting,
                "image_size": self.image_size, "weights": self.weights, "epochs": self.epochs,
                "batch_size": self.batch_size, "learning_rate": self.learning_rate,
                "lr_factor": self.lr_factor, "lr_patience": self.lr_patience,
                "augment_positives": self.augment_positives,
                "positive_copies": self.positive_copies,
                "mixed_precision": self.mixed_precision, "steps_per_epoch": self.steps_per_epoch,
                "decoded_cache_bytes": self.decoded_cache_bytes,
                "target_sensitivity": self.target_sensitivity,
                "min_validation_positives": self.min_validation_positives, "seed": self.seed,
                "deterministic": self.deterministic, "crop_size": self.crop_size,
                "segmenter_weights": (f"{self.segmenter_uri.rstrip('/')}/{UNET_WEIGHTS_FILE}"
                                      if self.segmenter_uri else None)}


def demo_config(weights: str | None, **overrides) -> PipelineConfig:
    """A small MobileNet (alpha 0.25), both class weightings (so the comparison has a pair), 8
    epochs at 128 px on 256 px crops, the `demo` gate, TFMA's jackknife CIs (the bootstrap's
    intervals at a fraction of its cost; `cardio demo --full` takes the bootstrap)."""
    demo = dict(pipeline_name="cardiomegaly-demo",
                grid=(GridCell("mobilenet_025", "75-25"), GridCell("mobilenet_025", "50-50")),
                gate=GATE_PROFILES["demo"], image_size=128, weights=weights, epochs=8,
                segmenter_uri=SHIPPED_UNET_DIR, crop_size=256, ci_method="jackknife",
                # A few hundred synthetic radiographs: 240 give 4 validation positives.
                min_validation_positives=3, min_split_positives=3)
    demo.update(overrides)
    return dataclasses.replace(PipelineConfig(), **demo)
