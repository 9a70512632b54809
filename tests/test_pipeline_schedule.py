"""`cardio pipeline schedule` and `submit` go through kfp.Client to the KFP v2beta1 API. A stand-in
API server on loopback records what the client sends; the test checks the cron expression, the
submitted spec (the compiled PipelineSpec, unchanged) and that no parameter overrides the
compiled defaults (so every scheduled run reads the newest span), and that the pipeline root
travels both in the spec and in the run's runtime config (the KFP driver otherwise falls back to
the namespace's default store, MinIO on a stock install, which TensorFlow cannot write)."""
import http.server
import json
import threading
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from json_http import JsonHandler

from cardio.cli import main
from cardio.pipeline import kubeflow_runner, scheduling


class StandInKfpApi(http.server.ThreadingHTTPServer):
    """Answers the calls kfp.Client makes, as KFP 2.x's API server does, and records them."""

    def __init__(self):
        self.requests = []
        self.experiments = {}
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_port}"

    def bodies(self, method, path):
        return [body for m, p, body in self.requests if m == method and p.split("?")[0] == path]


class _Handler(JsonHandler):

    def do_GET(self):
        self.server.requests.append(("GET", self.path, None))
        path = self.path.split("?")[0]
        if path == "/apis/v2beta1/healthz":
            return self._send(200, {"multi_user": False})
        if path == "/apis/v2beta1/experiments":
            return self._send(200, {"experiments": [
                {"experiment_id": i, "display_name": n} for n, i in self.server.experiments.items()
                if n in self.path]})
        self._send(404, {"error": f"no route {path}"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        self.server.requests.append(("POST", self.path, body))
        if self.path == "/apis/v2beta1/experiments":
            experiment_id = f"exp-{len(self.server.experiments) + 1}"
            self.server.experiments[body["display_name"]] = experiment_id
            return self._send(200, {"experiment_id": experiment_id, **body})
        if self.path == "/apis/v2beta1/recurringruns":
            return self._send(200, {"recurring_run_id": "rr-1", **body})
        if self.path == "/apis/v2beta1/runs":
            return self._send(200, {"run_id": "run-1", **body})
        self._send(404, {"error": f"no route {self.path}"})


@pytest.fixture
def api():
    server = StandInKfpApi()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    out = tmp_path_factory.mktemp("compiled")
    summary = kubeflow_runner.compile_profile(
        "demo", str(out / "cardio.json"), data_root="gs://b/data", pipeline_root="gs://b/root",
        serving_root="gs://b/serving", segmenter_uri="gs://b/unet", tag="1.0.0")
    return summary["pipeline_spec"]


def test_schedule_creates_a_weekly_recurring_run_of_the_compiled_spec(api, package):
    result = CliRunner().invoke(main, ["pipeline", "schedule", "--host", api.url,
                                       "--package", package, "--experiment", "retraining"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary == {"recurring_run_id": "rr-1", "cron": "0 0 3 * * 1",
                       "experiment": "retraining", "job_name": "cardio-retraining",
                       "pipeline_root": "gs://b/root"}

    (experiment,) = api.bodies("POST", "/apis/v2beta1/experiments")
    assert experiment["display_name"] == "retraining"
    (job,) = api.bodies("POST", "/apis/v2beta1/recurringruns")
    # KFP's cron has a seconds field: Mondays at 03:00:00.
    assert job["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 1"}}
    assert job["experiment_id"] == api.experiments["retraining"]
    assert job["mode"] == "ENABLE" and job["no_catchup"] is True
    assert int(job["max_concurrency"]) == 1
    assert job["display_name"] == "cardio-retraining"
    # The spec is the compiled one, as compiled; no parameter overrides its defaults, so each
    # run reads the newest span with the profile's training arguments.
    compiled = yaml.safe_load(Path(package).read_text())
    assert job["pipeline_spec"] == compiled
    assert not job["runtime_config"].get("parameters")
    assert compiled["defaultPipelineRoot"] == "gs://b/root"
    assert job["runtime_config"]["pipeline_root"] == "gs://b/root"
    defaults = compiled["root"]["inputDefinitions"]["parameters"]
    assert defaults["range_config"]["defaultValue"] == ""


def test_submit_starts_one_run(api, package):
    summary = scheduling.submit(api.url, package, experiment="retraining", run_name="weekly")
    assert summary == {"run_id": "run-1", "experiment": "retraining",
                       "pipeline_root": "gs://b/root"}
    (run,) = api.bodies("POST", "/apis/v2beta1/runs")
    assert run["display_name"] == "weekly"
    assert run["pipeline_spec"]["pipelineInfo"]["name"] == "cardiomegaly-demo"
    assert run["pipeline_spec"]["defaultPipelineRoot"] == "gs://b/root"
    assert run["runtime_config"]["pipeline_root"] == "gs://b/root"


def test_the_pipeline_root_can_be_overridden_at_submission_but_not_to_an_unwritable_one(
        api, package):
    result = CliRunner().invoke(main, ["pipeline", "submit", "--host", api.url, "--package",
                                       package, "--pipeline-root", "gs://other/root"])
    assert result.exit_code == 0, result.output
    (run,) = api.bodies("POST", "/apis/v2beta1/runs")
    assert run["runtime_config"]["pipeline_root"] == "gs://other/root"
    result = CliRunner().invoke(main, ["pipeline", "schedule", "--host", api.url, "--package",
                                       package, "--pipeline-root", "hdfs://namenode/root"])
    assert result.exit_code == 2 and "scheme hdfs://" in result.output
    assert api.bodies("POST", "/apis/v2beta1/recurringruns") == []


@pytest.mark.parametrize("cron,message", [
    ("0 3 * * 1", "expects 6, seconds first: '0 0 3 * * 1'"),
    ("weekly", "must have 6 fields"),
])
def test_a_crontab_line_is_refused_before_anything_is_sent(api, package, cron, message):
    result = CliRunner().invoke(main, ["pipeline", "schedule", "--host", api.url,
                                       "--package", package, "--cron", cron])
    assert result.exit_code == 2 and message in result.output
    assert api.requests == []


def test_the_pipeline_job_json_is_refused_with_the_fix(tmp_path):
    job = tmp_path / "cardio.json"
    job.write_text("{}")
    with pytest.raises(ValueError, match="PipelineSpec YAML"):
        scheduling.submit("http://127.0.0.1:9", str(job))
