"""The local runner's progress lines on stderr: every component's, for the whole run."""
import logging

import tensorflow as tf
from absl import logging as absl_logging

from cardio.pipeline import local_runner


class _Shown(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_component_lines_outlive_a_savedmodel_export_under_the_quiet_default(tmp_path):
    """TensorFlow's SavedModel export saves and restores absl's verbosity; the Trainer exports,
    and the components after it must still be shown. Chatter and warnings stay hidden."""
    shown, absl_logger = _Shown(), logging.getLogger("absl")
    absl_logger.addHandler(shown)
    before = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)   # what `cardio` sets without --verbose
    try:
        with local_runner.component_progress(2):
            absl_logging.info("Component %s is running.", "Trainer")
            tf.saved_model.save(tf.Module(), str(tmp_path / "model"))
            absl_logging.info("Component %s is finished.", "Trainer")
            absl_logging.info("Component %s is running.", "Evaluator")
            absl_logging.info("other INFO chatter")
            absl_logging.warning("a fallback notice")
        assert absl_logging.get_verbosity() == absl_logging.ERROR   # restored afterwards
    finally:
        absl_logger.removeHandler(shown)
        absl_logging.set_verbosity(before)
    assert [m.split("] ")[1] for m in shown.messages] == [
        "Trainer running", "Trainer finished", "Evaluator running"]
    assert shown.messages[1].startswith("[1/2 done, ")
