"""The files `tensorflow_model_server` reads, generated and parsed in one place.

  <serving root>/models.config                 ModelServerConfig (text format): one model per grid
                                               cell, its version policy and version labels
  <serving root>/batching_parameters.txt       BatchingParameters (text format)
  <serving root>/<model name>/<version>/       SavedModels, as the Pusher lays them out

`models.config` is the release state: the labels (`stable`, `canary`) live in it and nowhere
else, so TF Serving, `cardio serve` and `cardio release` all read the same truth.

The serving-api wheel ships ModelServerConfig but not BatchingParameters (it lives in TF
Serving's session_bundle_config.proto), so that message is declared here at runtime with the
same field names and numbers; text-format parsing and printing are protobuf's own.
"""
from __future__ import annotations

import dataclasses
import os

import tensorflow as tf
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

MODELS_CONFIG = "models.config"
BATCHING_PARAMETERS = "batching_parameters.txt"
STABLE, CANARY = "stable", "canary"

ModelServerConfig = model_server_config_pb2.ModelServerConfig


@dataclasses.dataclass(frozen=True)
class BatchingConfig:
    """Server-side batching (TF Serving's BatchingParameters). Defaults suit a CPU server
    answering single radiographs: up to 8 requests share one model call, waiting at most 5 ms."""
    max_batch_size: int = 8
    batch_timeout_micros: int = 5000
    max_enqueued_batches: int = 64
    num_batch_threads: int = 2
    allowed_batch_sizes: tuple = ()      # empty: any size up to max_batch_size


def _batching_parameters_class():
    """tensorflow.serving.BatchingParameters, fields as numbered in session_bundle_config.proto."""
    int64 = ".google.protobuf.Int64Value"
    file = descriptor_pb2.FileDescriptorProto(
        name="cardio/serving/batching_parameters.proto", package="tensorflow.serving",
        syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
    message = file.message_type.add(name="BatchingParameters")
    optional, repeated = (descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
                          descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED)
    kind = descriptor_pb2.FieldDescriptorProto
    for number, name, type_name in ((1, "max_batch_size", int64),
                                    (2, "batch_timeout_micros", int64),
                                    (3, "max_enqueued_batches", int64),
                                    (4, "num_batch_threads", int64),
                                    (5, "thread_pool_name", ".google.protobuf.StringValue")):
        message.field.add(name=name, number=number, label=optional, type=kind.TYPE_MESSAGE,
                          type_name=type_name)
    message.field.add(name="allowed_batch_sizes", number=6, label=repeated, type=kind.TYPE_INT64)
    message.field.add(name="pad_variable_length_inputs", number=7, label=optional,
                      type=kind.TYPE_BOOL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(
        wrappers_pb2.DESCRIPTOR.serialized_pb))
    pool.Add(file)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


BatchingParameters = _batching_parameters_class()


def render_batching_parameters(batching: BatchingConfig) -> str:
    """The text `--batching_parameters_file` reads."""
    if batching.allowed_batch_sizes and batching.allowed_batch_sizes[-1] != batching.max_batch_size:
        raise ValueError("the last allowed batch size must equal max_batch_size (TF Serving's rule)")
    params = BatchingParameters()
    params.max_batch_size.value = batching.max_batch_size
    params.batch_timeout_micros.value = batching.batch_timeout_micros
    params.max_enqueued_batches.value = batching.max_enqueued_batches
    params.num_batch_threads.value = batching.num_batch_threads
    params.allowed_batch_sizes.extend(batching.allowed_batch_sizes)
    return text_format.MessageToString(params)


def parse_batching_parameters(text: str, source: str = "batching parameters") -> BatchingConfig:
    """Text-format BatchingParameters -> BatchingConfig, with TF Serving's defaults for unset
    fields (max_batch_size 1000, no timeout, 10 enqueued batches, one thread per core)."""
    params = parse_text_proto(text, BatchingParameters(), source)
    if params.pad_variable_length_inputs:
        raise ValueError(f"{source}: pad_variable_length_inputs is not implemented by cardio serve")

    def value(name, default):
        return getattr(params, name).value if params.HasField(name) else default

    config = BatchingConfig(
        max_batch_size=value("max_batch_size", 1000),
        batch_timeout_micros=value("batch_timeout_micros", 0),
        max_enqueued_batches=value("max_enqueued_batches", 10),
        num_batch_threads=value("num_batch_threads", os.cpu_count() or 1),
        allowed_batch_sizes=tuple(params.allowed_batch_sizes))
    if config.allowed_batch_sizes and (config.allowed_batch_sizes[-1] != config.max_batch_size or
                                       list(config.allowed_batch_sizes) !=
                                       sorted(config.allowed_batch_sizes)):
        raise ValueError(f"{source}: allowed_batch_sizes must increase and end at max_batch_size")
    return config


# --- models.config ------------------------------------------------------------------------------

class ConfigError(ValueError):
    """A text-proto file that does not parse, as TF Serving reports it: the status message is
    `Invalid protobuf file: '<path>'` (util/proto_util.h, ParseProtoTextFile) and protobuf's
    TextFormat logs the line and column on stderr (`detail`)."""

    def __init__(self, source: str, detail: str):
        super().__init__(f"Invalid protobuf file: '{source}'")
        self.detail = detail


def parse_text_proto(text: str, message, source: str):
    """`message` filled from text-format `text`, or ConfigError naming `source`."""
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as error:
        raise ConfigError(source, f"Error parsing text-format {message.DESCRIPTOR.full_name}: "
                                  f"{error}") from None
    return message


def parse_models_config(text: str, source: str = MODELS_CONFIG) -> ModelServerConfig:
    return parse_text_proto(text, ModelServerConfig(), source)


def read_models_config(path: str) -> ModelServerConfig:
    with tf.io.gfile.GFile(path) as f:
        return parse_models_config(f.read(), path)


def version_directories(model_dir: str) -> dict[int, str]:
    """{version: directory name} for the version directories TF Serving would see: names that
    are integers, zero-padded or not (`00000123` is version 123, loaded from `00000123/`);
    temporary copies and anything else are ignored, as TF Serving ignores them. Where two names
    give one version, the first in sorted order wins (TF Serving keeps one, too)."""
    if not tf.io.gfile.isdir(model_dir):
        return {}
    found = {}
    for name in sorted(n.rstrip("/") for n in tf.io.gfile.listdir(model_dir)):
        if name.isdigit() and name.isascii():
            found.setdefault(int(name), name)
    return found


def pushed_versions(model_dir: str) -> list[int]:
    """The integer versions under a model's base path, ascending."""
    return sorted(version_directories(model_dir))


def render_models_config(models: dict[str, dict]) -> str:
    """{model name: {"base_path": ..., "versions": [...], "labels": {label: version}}} -> the
    text `--model_config_file` reads. Each model serves exactly the versions listed (a
    `specific` policy), so a label always points at a loaded version."""
    config = ModelServerConfig()
    for name in sorted(models):
        model = models[name]
        entry = config.model_config_list.config.add(
            name=name, base_path=model["base_path"], model_platform="tensorflow")
        versions = sorted(set(model["versions"]) | set(model.get("labels", {}).values()))
        entry.model_version_policy.specific.versions.extend(versions)
        for label, version in sorted(model.get("labels", {}).items()):
            entry.version_labels[label] = version
    return text_format.MessageToString(config)


def models_from_config(config: ModelServerConfig) -> dict[str, dict]:
    """The inverse of render_models_config (for configs it wrote)."""
    models = {}
    for entry in config.model_config_list.config:
        policy = entry.model_version_policy
        versions = list(policy.specific.versions) if policy.HasField("specific") else []
        models[entry.name] = {"base_path": entry.base_path, "versions": versions,
                              "labels": dict(entry.version_labels)}
    return models


def write_atomically(path: str, text: str):
    """Writes beside the target, then renames over it: a polling server never reads half a file."""
    partial = f"{path}.partial"
    with tf.io.gfile.GFile(partial, "w") as f:
        f.write(text)
    tf.io.gfile.rename(partial, path, overwrite=True)
