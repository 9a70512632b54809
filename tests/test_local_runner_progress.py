"""The local runner's progress lines on stderr: every component's, for the whole run."""
import tensorflow as tf
from absl import logging as absl_logging

from conftest import shown_log_records
from cardio.pipeline import local_runner


def test_component_lines_outlive_a_savedmodel_export_under_the_quiet_default(tmp_path):
    """TensorFlow's SavedModel export saves and restores absl's verbosity; the Trainer exports,
    and the components after it must still be shown. Chatter and warnings stay hidden."""
    before = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)   # what `cardio` sets without --verbose
    try:
        with shown_log_records() as shown, local_runner.component_progress(2):
            absl_logging.info("Component %s is running.", "Trainer")
            tf.saved_model.save(tf.Module(), str(tmp_path / "model"))
            absl_logging.info("Component %s is finished.", "Trainer")
            absl_logging.info("Component %s is running.", "Evaluator")
            absl_logging.info("other INFO chatter")
            absl_logging.warning("a fallback notice")
        assert absl_logging.get_verbosity() == absl_logging.ERROR   # restored afterwards
    finally:
        absl_logging.set_verbosity(before)
    messages = [record.getMessage() for record in shown]
    assert [m.split("] ")[1] for m in messages] == [
        "Trainer running", "Trainer finished", "Evaluator running"]
    assert messages[1].startswith("[1/2 done, ")
