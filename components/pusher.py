"""The Pusher's executor: TFX's own, with an atomic push and a models.config that follows it.

The stock executor copies files straight into `<base>/<version>/` (saved_model.pb last), so a
server polling the directory can see a half-copied version. Here the copy goes to a sibling
whose name is not a number (TF Serving ignores those) and is renamed into place, then the
model's version is added to `<serving root>/models.config` and the batching parameters file is
rewritten from the pipeline config (custom_config["batching"]).

On a local or network filesystem the rename is atomic. On object stores (gs://, s3://) a
"directory" rename is a copy of each object, so the version appears object by object; there,
point TF Serving at the models.config (whose policy names the version only after the copy).

Used as `Pusher(..., custom_executor_spec=executor_spec.ExecutorClassSpec(Executor))`, so the
component, its artifacts and its Kubeflow compilation stay the stock Pusher's.
"""
from __future__ import annotations

import json
import os
import time

from absl import logging
from tfx.components.pusher import executor as tfx_pusher
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

from cardio.serving import config as config_lib, releases


def push_version(model_path: str, serving_root: str, model_name: str, version: int) -> str:
    """Copies a SavedModel to `<serving_root>/<model_name>/<version>/` atomically; returns it."""
    model_dir = os.path.join(serving_root, model_name)
    final = os.path.join(model_dir, str(version))
    if fileio.exists(final):
        raise FileExistsError(f"{final} already exists; versions are immutable")
    partial = os.path.join(model_dir, f".incomplete-{version}")
    if fileio.exists(partial):
        fileio.rmtree(partial)        # left by a push that was killed mid-copy
    io_utils.copy_dir(model_path, partial)
    fileio.rename(partial, final)
    return final


class Executor(tfx_pusher.Executor):

    def Do(self, input_dict, output_dict, exec_properties):
        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY],
                                  destination)
        model_dir = destination.filesystem.base_directory.rstrip("/")
        serving_root, model_name = os.path.dirname(model_dir), os.path.basename(model_dir)
        custom = json.loads(exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY)
                            or "null") or {}

        version = int(time.time())    # TF Serving's convention, as the stock Pusher does
        existing = config_lib.pushed_versions(model_dir)
        if existing and version <= existing[-1]:
            version = existing[-1] + 1    # versions only ever grow
        serving_path = push_version(self.GetModelPath(input_dict), serving_root, model_name,
                                    version)
        releases.record_push(serving_root, model_name, version)
        batching = config_lib.BatchingConfig(**custom.get("batching", {}))
        config_lib.write_atomically(os.path.join(serving_root, config_lib.BATCHING_PARAMETERS),
                                    config_lib.render_batching_parameters(batching))
        logging.info("Pushed %s version %d to %s", model_name, version, serving_path)

        io_utils.copy_dir(self.GetModelPath(input_dict), model_push.uri)   # archive, as stock
        self._MarkPushed(model_push, pushed_destination=serving_path,
                         pushed_version=str(version))
