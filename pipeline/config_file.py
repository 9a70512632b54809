"""The pipeline's configuration file (YAML): one file a platform team edits for its own data.

Every key of the file is a field of `PipelineConfig` (same name, same meaning) plus the run's
places (`data_root`, `workdir`, `serving_root`). The JSON Schema the file is validated against is
derived from the dataclass, so a field added to `PipelineConfig` is a valid key with no change here;
only the fields whose file form differs from the Python one have a converter (`_CONVERTERS`):

- `grid`: `{backbones: [...], weightings: [...]}` (their product) or a list of `{backbone, weighting}`;
- `gate`: a profile's name (`study`, `demo`) or the profile itself, inline;
- `segmenter_uri`: `shipped` for the shipped lung U-Net, a directory, or null (no crop);
- `weights`: `random`, `imagenet` (Keras's cache, downloading where a network exists), `image`
  (the pipeline image's /opt/cardio/weights, looked up where the Trainer runs), a file or a
  directory, or a URI (`gs://...`).

Errors name the key and the reason (`ConfigError`). Relative paths are taken from the directory
the command runs in, as on the command line.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing

import jsonschema
import yaml

from cardio.components.gate import GATE_PROFILES, GateProfile
from cardio.imaging import SHIPPED_UNET_DIR
from cardio.pipeline.configs import GridCell, PipelineConfig

SHIPPED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config_files")
SHIPPED = {"study": "study.yaml", "demo": "demo.yaml", "nih": "nih-cxr14-128.yaml",
           "nih-wingspan": "nih-wingspan.yaml"}
PLACES = ("data_root", "workdir", "serving_root")   # where the run reads and writes, not the recipe


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and the key."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    config: PipelineConfig
    data_root: str | None
    workdir: str | None
    serving_root: str | None
    source: str                          # the file it was read from

    @property
    def pipeline_root(self) -> str:
        return os.path.join(self.workdir, "pipeline")

    @property
    def serving_dir(self) -> str:
        return self.serving_root or os.path.join(self.workdir, "serving")


# The range of every numeric key, by field name (any dataclass of the configuration): a value
# outside it is refused before anything runs. `test_every_numeric_key_has_a_range` keeps this
# table complete as fields are added.
_PROBABILITY = {"exclusiveMinimum": 0, "exclusiveMaximum": 1}
_UNIT = {"minimum": 0, "maximum": 1}
_POSITIVE = {"minimum": 1}
_COUNT = {"minimum": 0}
RANGES = {
    "image_size": {"minimum": 32}, "crop_size": {"minimum": 32}, "epochs": _POSITIVE,
    "batch_size": _POSITIVE, "learning_rate": {"exclusiveMinimum": 0, "maximum": 10},
    "lr_factor": _PROBABILITY, "lr_patience": _COUNT, "positive_copies": _COUNT,
    "steps_per_epoch": _POSITIVE, "target_sensitivity": _PROBABILITY, "decoded_cache_bytes": _COUNT,
    "min_validation_positives": _COUNT, "min_split_positives": _COUNT, "seed": _COUNT,
    "deployment_prevalence": _PROBABILITY, "fairness_min_per_class": _COUNT,
    "drift_max_categorical_linf": {"exclusiveMinimum": 0, "maximum": 1},
    "drift_max_numeric_jsd": {"exclusiveMinimum": 0, "maximum": 1},
    # gate (GateProfile)
    "external_auc_min": _UNIT, "internal_auc_min": _UNIT, "sensitivity_min": _UNIT,
    "auc_regression_tolerance": _UNIT,
    # batching (BatchingConfig)
    "max_batch_size": _POSITIVE, "batch_timeout_micros": _COUNT, "max_enqueued_batches": _POSITIVE,
    "num_batch_threads": _POSITIVE,
}


def _json_type(hint, name: str = "") -> dict:
    """JSON Schema of a dataclass field's type annotation (the file's YAML form of it)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return {"anyOf": [_json_type(h, name) for h in typing.get_args(hint)]}
    if hint is type(None):
        return {"type": "null"}
    if hint is bool:
        return {"type": "boolean"}
    if hint is int:
        return {"type": "integer", **RANGES.get(name, {})}
    if hint is float:
        return {"type": "number", **RANGES.get(name, {})}
    if hint is str:
        return {"type": "string"}
    if hint in (tuple, list) or typing.get_origin(hint) in (tuple, list):
        return {"type": "array"}
    if dataclasses.is_dataclass(hint):
        return _object_schema(hint)
    return {}


def _object_schema(cls, required: bool = False) -> dict:
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    schema = {"type": "object", "additionalProperties": False,
              "properties": {f.name: _json_type(hints[f.name], f.name) for f in fields}}
    if required:
        schema["required"] = [f.name for f in fields
                              if f.default is dataclasses.MISSING
                              and f.default_factory is dataclasses.MISSING]
    return schema


_CELL = {"type": "object", "additionalProperties": False, "required": ["backbone", "weighting"],
         "properties": {"backbone": {"type": "string"}, "weighting": {"type": "string"}}}
# File forms that differ from the dataclass's type.
_FILE_FORMS = {
    "grid": {"anyOf": [
        {"type": "object", "additionalProperties": False, "required": ["backbones", "weightings"],
         "properties": {"backbones": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                        "weightings": {"type": "array", "minItems": 1, "items": {"type": "string"}}}},
        {"type": "array", "minItems": 1, "items": _CELL}]},
    "gate": {"anyOf": [{"enum": sorted(GATE_PROFILES)}, _object_schema(GateProfile, required=True)]},
    "spans": {"anyOf": [{"type": "null"}, {"type": "array", "items": {"type": "integer", "minimum": 0},
                                           "minItems": 2, "maxItems": 2}]},
    "internal_sites": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
    "views": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
}


def json_schema(cls=PipelineConfig) -> dict:
    """The file's JSON Schema: the config class's fields, their file forms, and the run's places."""
    schema = _object_schema(cls)
    schema["properties"].update(_FILE_FORMS)
    schema["properties"].update({p: {"type": "string", "minLength": 1} for p in PLACES})
    return schema


def _grid(value) -> tuple:
    from cardio.trainer import model, task   # what the trainer can build

    cells = ([GridCell(b, w) for b in value["backbones"] for w in value["weightings"]]
             if isinstance(value, dict) else [GridCell(c["backbone"], c["weighting"]) for c in value])
    for cell in cells:
        if cell.backbone not in model.BACKBONES:
            raise ValueError(f"unknown backbone {cell.backbone!r}; choose from "
                             f"{', '.join(sorted(model.BACKBONES))}")
        if cell.weighting not in task.CLASS_WEIGHTINGS:
            raise ValueError(f"unknown weighting {cell.weighting!r}; choose from "
                             f"{', '.join(task.CLASS_WEIGHTINGS)}")
    if len({c.name for c in cells}) != len(cells):
        raise ValueError("a grid cell is listed twice")
    return tuple(cells)


def _gate(value) -> GateProfile:
    return GATE_PROFILES[value] if isinstance(value, str) else GateProfile(**value)


def _segmenter(value):
    if value in (None, "shipped"):
        return SHIPPED_UNET_DIR if value else None
    return value if "://" in value else os.path.abspath(value)


def _weights(value):
    if value in (None, "random", "imagenet", "image") or "://" in value:
        return value
    return os.path.abspath(value)


def _nested(cls):
    return lambda value: cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})


# Fields whose file form is not the dataclass's value (everything else: lists become tuples).
_CONVERTERS = {"grid": _grid, "gate": _gate, "segmenter_uri": _segmenter, "weights": _weights}


def _convert(name: str, value, hint):
    if name in _CONVERTERS:
        return _CONVERTERS[name](value)
    if isinstance(value, dict) and dataclasses.is_dataclass(hint):
        return _nested(hint)(value)
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, int) and not isinstance(value, bool) and hint is float:
        return float(value)
    return value


def _key_path(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def _deepest(error):
    """Of an `anyOf` (a file form: `gate` as a name or inline), the alternative's error deepest
    in the document: `gate.external_auc_min` rather than `gate`."""
    while error.context:
        deeper = max(error.context, key=lambda e: len(e.absolute_path))
        if len(deeper.absolute_path) <= len(error.absolute_path):
            break
        error = deeper
    return error


def parse(document: dict, source: str = "<config>", base: PipelineConfig | None = None) -> RunConfig:
    """A RunConfig from the file's mapping; keys left out keep `base`'s values (the study's)."""
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: expected a mapping of keys to values, got "
                          f"{type(document).__name__}")
    base = base or PipelineConfig()
    schema = json_schema(type(base))
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    if errors:
        error = _deepest(errors[0])
        if error.validator == "additionalProperties" and not error.absolute_path:
            known = ", ".join(sorted(schema["properties"]))
            raise ConfigError(f"{source}: {error.message}; known keys: {known}")
        raise ConfigError(f"{source}: key {_key_path(error)}: {error.message}")
    hints = typing.get_type_hints(type(base))
    fields = {}
    for name, value in document.items():
        if name in PLACES:
            continue
        try:
            fields[name] = _convert(name, value, hints[name])
        except (ValueError, TypeError, KeyError) as error:
            raise ConfigError(f"{source}: key {name}: {error}") from None
    try:
        config = dataclasses.replace(base, **fields)
        config.validate()
    except ValueError as error:
        raise ConfigError(f"{source}: {error}") from None
    places = {p: (document[p] if p not in document or "://" in document[p]
                  else os.path.abspath(document[p])) for p in PLACES if p in document}
    return RunConfig(config=config, data_root=places.get("data_root"),
                     workdir=places.get("workdir"), serving_root=places.get("serving_root"),
                     source=source)


def load(path: str) -> RunConfig:
    """Reads and validates a configuration file; `path` may be a shipped file's name (`nih`)."""
    path = os.path.join(SHIPPED_DIR, SHIPPED[path]) if path in SHIPPED else path
    try:
        with open(path) as f:
            document = yaml.safe_load(f)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the configuration: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    return parse(document if document is not None else {}, source=path)
