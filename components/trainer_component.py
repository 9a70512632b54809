"""The project's Trainer: TFX's Trainer with the simple training arguments as parameters.

`epochs` and `learning_rate` are execution parameters of their own (not buried in the JSON
custom_config), so that on Kubeflow they can be runtime parameters of the compiled pipeline; the
executor merges them into the run_fn's custom_config. Locally they are plain values, the ones
the configuration already gives.

Where the training runs is the executor's business: `Executor` runs run_fn in the component's
own process (one pod on Kubeflow: MirroredStrategy over its GPUs); `components.tfjob_trainer`'s
executor submits a multi-worker TFJob that runs the same run_fn in every replica.
"""
from __future__ import annotations

from typing import Any

from tfx import types
from tfx.components.trainer import executor as trainer_executor
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter
from tfx.utils import json_utils

EPOCHS = "epochs"
LEARNING_RATE = "learning_rate"
TFJOB = "tfjob"   # JSON of components.tfjob_trainer.TFJobSpec; set only for the TFJob launcher
OVERRIDES = (EPOCHS, LEARNING_RATE)


class TrainerSpec(standard_component_specs.TrainerSpec):
    PARAMETERS = {
        **standard_component_specs.TrainerSpec.PARAMETERS,
        EPOCHS: ExecutionParameter(type=int, optional=True),
        LEARNING_RATE: ExecutionParameter(type=float, optional=True),
        TFJOB: ExecutionParameter(type=str, optional=True),
    }


def merged_exec_properties(exec_properties: dict[str, Any]) -> dict[str, Any]:
    """The exec properties TFX's GenericExecutor understands: the overrides folded into
    custom_config (the JSON the run_fn reads), our own keys removed."""
    result = {k: v for k, v in exec_properties.items() if k not in (*OVERRIDES, TFJOB)}
    custom_config = json_utils.loads(exec_properties.get("custom_config") or "null") or {}
    for key in OVERRIDES:
        if exec_properties.get(key) is not None:
            custom_config[key] = exec_properties[key]
    result["custom_config"] = json_utils.dumps(custom_config)
    return result


class Executor(trainer_executor.GenericExecutor):
    """Runs run_fn in this process, with the runtime overrides applied."""

    def Do(self, input_dict, output_dict, exec_properties):
        super().Do(input_dict, output_dict, merged_exec_properties(exec_properties))


class Trainer(base_component.BaseComponent):
    """TFX's Trainer (same inputs, outputs and run_fn contract) plus `epochs` and
    `learning_rate`. The Kubeflow compiler may set `tfjob` and the TFJob launcher executor."""
    SPEC_CLASS = TrainerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, examples, schema, run_fn: str, train_args, eval_args, custom_config: dict,
                 epochs=None, learning_rate=None):
        spec = TrainerSpec(
            examples=examples, schema=schema, train_args=train_args, eval_args=eval_args,
            run_fn=run_fn, custom_config=json_utils.dumps(custom_config),
            epochs=epochs, learning_rate=learning_rate,
            model=types.Channel(type=standard_artifacts.Model),
            model_run=types.Channel(type=standard_artifacts.ModelRun))
        super().__init__(spec=spec)
