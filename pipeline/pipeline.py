"""The pipeline, assembled in one place. It reads top to bottom like the data flow."""
from __future__ import annotations

import dataclasses
import os

from tfx.components import ExampleValidator, ImportExampleGen, Pusher, StatisticsGen
from tfx.components.schema_gen.import_schema_gen.component import ImportSchemaGen
from tfx.dsl.components.common.importer import Importer
from tfx.orchestration.pipeline import Pipeline
from tfx.proto import example_gen_pb2, pusher_pb2, range_config_pb2, trainer_pb2
from tfx.types import standard_artifacts
from tfx.dsl.components.base import executor_spec

from cardio import features as F
from cardio.components import (
    baseline as baseline_lib,
    evaluator as evaluator_lib,
    model_card as model_card_lib,
    model_comparison,
    pusher as pusher_lib,
    trainer_component,
)
from cardio.components.anomaly_gate import AnomalyGate
from cardio.components.drift_gate import DriftGate, PreviousStatisticsLookup
from cardio.components.crop_report import CropReport
from cardio.components.lung_crop import LungCrop
from cardio.pipeline.configs import PipelineConfig


def example_gen_input_config(splits=F.SPLITS):
    """One split per directory of the newest `span-{SPAN}` (see cardio/data/convert.py)."""
    return example_gen_pb2.Input(splits=[
        example_gen_pb2.Input.Split(name=split, pattern=f"span-{{SPAN}}/{split}/*")
        for split in splits])


def span_range_config(spans):
    """None reads the newest span; (first, last) reads that range of spans."""
    if spans is None:
        return None
    first, last = spans
    return range_config_pb2.RangeConfig(static_range=range_config_pb2.StaticRange(
        start_span_number=first, end_span_number=last))


def create_pipeline(config: PipelineConfig, data_root: str, pipeline_root: str,
                    serving_root: str, schema_file: str,
                    metadata_connection_config=None,
                    import_schema: bool = False) -> Pipeline:
    # Radiograph TFRecords of the newest span (or the configured span range), split by directory.
    example_gen = ImportExampleGen(
        input_base=data_root, input_config=example_gen_input_config(config.splits),
        range_config=span_range_config(config.spans))
    # The curated schema (schemas/, with the deployment's sites), not one inferred from the span.
    if import_schema:
        # On Kubeflow: imported as an artifact (the directory of `schema_file`), so that every
        # consumer's launcher downloads it like any input, from a MinIO/S3 root too (a file read
        # by parameter would need TensorFlow to open the object store). Same task name.
        schema_gen = Importer(
            source_uri=os.path.dirname(schema_file),
            artifact_type=standard_artifacts.Schema).with_id("ImportSchemaGen")
        schema = schema_gen.outputs["result"]
    else:
        schema_gen = ImportSchemaGen(schema_file=schema_file)
        schema = schema_gen.outputs["schema"]
    # Feature statistics of every split (TFDV); the schema makes label and bit depth categorical.
    statistics_gen = StatisticsGen(examples=example_gen.outputs["examples"], schema=schema)
    # Anomalies (unknown site, label outside {0, 1}, missing image) stop the run before training.
    example_validator = ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema)
    # Fails the run on any anomaly, so an anomalous span trains nothing.
    anomaly_gate = AnomalyGate(anomalies=example_validator.outputs["anomalies"])
    # Drift from the previous span's statistics (site, sex, age band, label, image size and bit
    # depth) past the configured thresholds stops the run before training, like the anomaly gate.
    # The previous span's statistics are found in MLMD and handed to the gate as an input, so
    # that on Kubeflow its launcher downloads them (components/drift_gate.py).
    previous_statistics = PreviousStatisticsLookup(
        examples=example_gen.outputs["examples"], pipeline_name=config.pipeline_name,
        metadata_connection=baseline_lib.connection_parameter(metadata_connection_config))
    drift_gate = DriftGate(statistics=statistics_gen.outputs["statistics"],
                           previous_statistics=previous_statistics.outputs["previous"],
                           pipeline_name=config.pipeline_name, schema=schema,
                           max_categorical_linf=config.drift_max_categorical_linf,
                           max_numeric_jsd=config.drift_max_numeric_jsd,
                           min_split_positives=config.min_split_positives,
                           evaluated_splits=",".join(config.scored_splits))
    components = [example_gen, schema_gen, statistics_gen, example_validator, anomaly_gate,
                  previous_statistics, drift_gate]
    examples = example_gen.outputs["examples"]
    crop_report = None
    if config.segmenter_uri:
        # The lung U-Net, imported so that lineage records which one cropped the data.
        segmenter = Importer(source_uri=config.segmenter_uri,
                             artifact_type=standard_artifacts.Model).with_id("LungSegmenter")
        # Every split cropped to the chest cavity (Beam), box and QC flags kept per example.
        lung_crop = LungCrop(examples=examples, segmenter=segmenter.outputs["result"],
                             output_size=config.crop_size)
        lung_crop.add_upstream_node(anomaly_gate)
        lung_crop.add_upstream_node(drift_gate)
        components += [segmenter, lung_crop]
        if len(config.sites) > 1:
            # t-SNE by site before and after cropping, and how separable the sites are (AUC).
            crop_report = CropReport(raw_examples=examples,
                                     cropped_examples=lung_crop.outputs["cropped_examples"])
            components.append(crop_report)
        examples = lung_crop.outputs["cropped_examples"]

    trained = {}   # every cell's model, training run, blessing and push, for the comparison
    for cell in config.grid:
        # One Trainer per (backbone x class weighting), each with its own artifacts and lineage.
        # (TFX's Trainer with epochs and learning rate as parameters; see components/trainer_component.py.)
        trainer = trainer_component.Trainer(
            run_fn="cardio.trainer.task.run_fn",
            examples=examples,
            schema=schema,
            train_args=trainer_pb2.TrainArgs(splits=[F.TRAIN]),
            eval_args=trainer_pb2.EvalArgs(splits=[F.VALIDATION]),
            custom_config=config.trainer_custom_config(cell)).with_id(f"Trainer.{cell.name}")
        # The anomaly and drift gates must pass before any training starts.
        trainer.add_upstream_node(anomaly_gate)
        trainer.add_upstream_node(drift_gate)
        # This cell's last blessed model (found in MLMD), which a new model may not fall below.
        baseline = baseline_lib.create(trainer.outputs["model"], config, cell.name,
                                       metadata_connection_config)
        # TFMA metrics per site slice on test + external; blesses only models that pass the gate.
        evaluator = evaluator_lib.create(examples, trainer.outputs["model"],
                                         baseline.outputs["baseline"], config, cell.name,
                                         confidence_intervals=config.confidence_intervals)
        # Blessed models land in <serving_root>/<model name>/<version>/, as TF Serving reads it,
        # copied atomically; models.config and the batching file follow (components/pusher.py).
        pusher = Pusher(
            model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
            push_destination=pusher_pb2.PushDestination(
                filesystem=pusher_pb2.PushDestination.Filesystem(
                    base_directory=os.path.join(serving_root, cell.name))),
            custom_config={"batching": dataclasses.asdict(config.batching)},
            custom_executor_spec=executor_spec.ExecutorClassSpec(pusher_lib.Executor)).with_id(
                f"Pusher.{cell.name}")
        # Model card: data, lineage, metrics per slice with CIs, operating point, licences.
        card = model_card_lib.create(trainer, evaluator, pusher, examples, config, cell.name)
        trained[cell.name] = {"model": trainer.outputs["model"],
                              "model_run": trainer.outputs["model_run"],
                              "blessing": evaluator.outputs["blessing"],
                              "pushed_model": pusher.outputs["pushed_model"]}
        components += [trainer, baseline, evaluator, pusher, card]

    # Every model scored on the same images: AUCs with CIs, DeLong for every pair, operating
    # points, the fairness review and the champion (chosen on internal data only), in one report.
    components.append(model_comparison.create(
        examples, trained, config, raw_examples=example_gen.outputs["examples"],
        crop_report=crop_report.outputs["report"] if crop_report else None))

    return Pipeline(
        pipeline_name=config.pipeline_name, pipeline_root=pipeline_root, components=components,
        enable_cache=True, metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(config.beam_pipeline_args))
