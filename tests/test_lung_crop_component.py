"""LungCrop, the Beam stage: every split cropped, features kept, the box the shared crop function
computes, lineage; on the in-process runner, and (a slow check, `python -m benchmarks checks`)
on a two-process runner with identical outputs."""
import glob
import logging
import os

import numpy as np
import pytest
import tensorflow as tf
from tfx import v1 as tfx

from conftest import shown_log_records
from cardio import features as F, imaging
from cardio.components import lung_crop
from cardio.data import convert
from cardio.imaging import crop, unet
from cardio.pipeline import configs, local_runner, outputs

FN_API = configs.FN_API_RUNNER


@pytest.fixture(scope="module")
def span_and_weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("crop")
    convert.write_synthetic(str(root / "data"), 40, seed=4, size=256, span=1,
                            external_sites=("site-b",), workers=1)
    os.makedirs(root / "unet")
    model = unet.build()
    model.save_weights(str(root / "unet" / imaging.UNET_WEIGHTS_FILE))
    return root


def _run(root, name, beam_args):
    example_gen = tfx.components.ImportExampleGen(
        input_base=str(root / "data"),
        input_config=tfx.proto.Input(splits=[
            tfx.proto.Input.Split(name=s, pattern=f"span-{{SPAN}}/{s}/*") for s in F.SPLITS]))
    segmenter = tfx.dsl.Importer(source_uri=str(root / "unet"),
                                 artifact_type=tfx.types.standard_artifacts.Model).with_id("UNet")
    cropper = lung_crop.LungCrop(examples=example_gen.outputs["examples"],
                                 segmenter=segmenter.outputs["result"], output_size=128)
    pipeline_root = root / name
    pipeline = tfx.dsl.Pipeline(
        pipeline_name=name, pipeline_root=str(pipeline_root),
        components=[example_gen, segmenter, cropper], enable_cache=False,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(pipeline_root / "metadata.sqlite")),
        beam_pipeline_args=beam_args)
    tfx.orchestration.LocalDagRunner().run(pipeline)
    store = outputs.open_store(str(pipeline_root / "metadata.sqlite"))
    return outputs.latest_output(store, name, "LungCrop", "cropped_examples"), store


def _examples(artifact, split):
    files = glob.glob(os.path.join(artifact.uri, f"Split-{split}", "*"))
    return [tf.train.Example.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


@pytest.fixture(scope="module")
def single(span_and_weights):
    """The component on Beam's in-process runner, under the local runner's progress filter:
    (cropped examples, MLMD store, the log records shown)."""
    with shown_log_records() as shown, pytest.MonkeyPatch.context() as patch, \
            local_runner.component_progress(3):
        patch.setattr(lung_crop, "PROGRESS_EVERY", 8)
        cropped, store = _run(span_and_weights, "single",
                              list(configs.PipelineConfig().beam_pipeline_args))
    return cropped, store, shown


def test_the_crop_stage_reports_its_progress_and_nothing_else_is_shown(single):
    shown = [record.getMessage() for record in single[2] if record.levelno == logging.INFO]
    progress = [m for m in shown if m.startswith("LungCrop: ")]
    assert progress and all("radiographs cropped by this worker" in m and "/s" in m
                            for m in progress)
    assert int(progress[0].split()[1]) >= 8   # a line once every 8 radiographs (patched)
    # Everything else shown at INFO is the runner's numbered component lines.
    assert all(m.startswith("[") and " done, " in m for m in shown if m not in progress)


def test_crop_component_keeps_features_and_stores_the_shared_crop(span_and_weights, single):
    root = span_and_weights
    cropped, store, _ = single
    summary = convert.json.loads((root / "data" / "span-1" / "summary.json").read_text())
    for split in F.SPLITS:
        examples = _examples(cropped, split)
        assert len(examples) == sum(summary["splits"][split].values()), split
        for example in examples:
            f = example.features.feature
            assert len(f[F.CROP_BOX].float_list.value) == 4 and F.CROP_QC in f
            for kept in (F.LABEL, F.SITE, F.PATIENT_ID, F.SEX, F.AGE_BAND):
                assert kept in f
            assert F.LUNG_MASK not in f
            image = tf.io.decode_png(f[F.IMAGE].bytes_list.value[0], dtype=tf.uint16)
            assert image.shape == (128, 128, 1)
    # The stored box is the one the shared crop function computes for the original image.
    model = unet.load(str(root / "unet" / imaging.UNET_WEIGHTS_FILE))
    original = {e.features.feature[F.IMAGE_ID].bytes_list.value[0]: e
                for path in glob.glob(str(root / "data" / "span-1" / F.TEST / "*"))
                for e in map(lambda r: tf.train.Example.FromString(r.numpy()),
                             tf.data.TFRecordDataset(path, compression_type="GZIP"))}
    test_examples = {e.features.feature[F.IMAGE_ID].bytes_list.value[0]: e
                     for e in _examples(cropped, F.TEST)}
    for key, source in original.items():
        _, box, _ = crop.crop_encoded(model, source.features.feature[F.IMAGE].bytes_list.value[0],
                                      128)
        np.testing.assert_allclose(
            test_examples[key].features.feature["crop_box"].float_list.value, box.numpy(),
            atol=1e-6)
    # Lineage: the cropped examples were produced from the imported U-Net.
    execution = outputs.node_executions(store, "single", "LungCrop")[-1]
    inputs = [store.get_artifacts_by_id([e.artifact_id])[0] for e in
              store.get_events_by_execution_ids([execution.id]) if e.type == e.INPUT]
    assert any(a.uri == str(root / "unet") for a in inputs)


@pytest.mark.slow
def test_multi_process_runner_writes_the_same_examples(span_and_weights, single):
    """Two Beam worker processes, each loading the U-Net: byte-identical examples."""
    multi, _ = _run(span_and_weights, "multi", [
        f"--runner={FN_API}", "--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    for split in F.SPLITS:
        a = {e.features.feature[F.IMAGE_ID].bytes_list.value[0]: e
             for e in _examples(single[0], split)}
        b = {e.features.feature[F.IMAGE_ID].bytes_list.value[0]: e for e in _examples(multi, split)}
        assert a and a.keys() == b.keys()
        for key, example in a.items():
            assert example.SerializeToString(deterministic=True) == \
                b[key].SerializeToString(deterministic=True)


def test_the_dofn_keeps_each_batchs_window_and_names_a_batch_it_cannot_crop(span_and_weights):
    """One batch is in flight on a background thread: every output still carries its own batch's
    window and timestamp, the last batch of each bundle comes out, and a crop error reaches the
    pipeline with the batch's image ids."""
    import apache_beam as beam
    from apache_beam.runners.portability import fn_api_runner
    from apache_beam.testing.util import assert_that, equal_to
    from apache_beam.transforms import window

    root = span_and_weights
    weights = str(root / "unet" / imaging.UNET_WEIGHTS_FILE)
    records = [r.numpy() for path in sorted(glob.glob(str(root / "data" / "span-1" / "*" / "*")))
               for r in tf.data.TFRecordDataset(path, compression_type="GZIP")][:7]
    ids = [tf.train.Example.FromString(r).features.feature[F.IMAGE_ID].bytes_list.value[0]
           for r in records]

    def cropped(records, size=64):
        return (beam.Create(list(enumerate(records)))
                | beam.Map(lambda i_r: window.TimestampedValue(i_r[1], i_r[0]))
                | beam.WindowInto(window.FixedWindows(4))         # windows [0, 4) and [4, 8)
                | beam.BatchElements(min_batch_size=2, max_batch_size=2)
                | beam.ParDo(lung_crop.CropDoFn(weights, size)))

    def described(raw, w=beam.DoFn.WindowParam, t=beam.DoFn.TimestampParam):
        f = tf.train.Example.FromString(raw).features.feature
        shape = tuple(tf.io.decode_png(f[F.IMAGE].bytes_list.value[0], dtype=tf.uint16).shape)
        return f[F.IMAGE_ID].bytes_list.value[0], int(w.start), t == w.max_timestamp(), shape

    with beam.Pipeline(runner=fn_api_runner.FnApiRunner()) as pipeline:
        out = pipeline | cropped(records) | beam.Map(described)
        # BatchElements stamps a window's batches with its end: the crops keep it.
        assert_that(out, equal_to([(key, 4 * (i // 4), True, (64, 64, 1))
                                   for i, key in enumerate(ids)]))

    broken = tf.train.Example.FromString(records[5])
    broken.features.feature[F.IMAGE].bytes_list.value[:] = [b"not an image"]
    with pytest.raises(Exception, match="LungCrop: cannot crop the batch of image ids") as raised:
        with beam.Pipeline(runner=fn_api_runner.FnApiRunner()) as pipeline:
            _ = pipeline | cropped(records[:5] + [broken.SerializeToString()] + records[6:])
    assert ids[5].decode() in str(raised.value)
