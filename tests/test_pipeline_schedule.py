"""`cardio pipeline schedule` and `submit` go through kfp.Client to the KFP v2beta1 API. A stand-in
API server on loopback records what the client sends; the test checks the cron expression, the
submitted spec (the compiled PipelineSpec, unchanged) and that no parameter overrides the
compiled defaults (so every scheduled run reads the newest span), and that the pipeline root
travels both in the spec and in the run's runtime config (the KFP driver otherwise falls back to
the namespace's default store, MinIO on a stock install, which TensorFlow cannot write)."""
import http.server
import json
import threading

import pytest
from click.testing import CliRunner
from json_http import JsonHandler

from cardio.cli import main
from cardio.pipeline import kubeflow_runner, scheduling


class StandInKfpApi(http.server.ThreadingHTTPServer):
    """Answers the calls kfp.Client makes, as KFP 2.x's API server does, and records them.

    With `token`, it stands for multi-user KFP behind its auth: a request without
    `Authorization: Bearer <token>` is answered 401 (a `forbidden` token: 403, as a
    SubjectAccessReview that denies), and `rotate` (a callable) runs after the named call is
    answered, as the kubelet rotating a projected token between two requests."""

    def __init__(self, token=None, forbidden=None):
        self.requests = []
        self.authorizations = []     # (path, Authorization header or None), every request
        self.refused = []
        self.experiments = {}
        self.token, self.forbidden = token, forbidden
        self.rotate = {}             # (method, path) -> callable, run after answering it
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_port}"

    def bodies(self, method, path):
        return [body for m, p, body in self.requests if m == method and p.split("?")[0] == path]


class _Handler(JsonHandler):

    def _refused(self) -> bool:
        """401 / 403 as KFP's API answers them (gRPC-gateway's JSON error: code 16 / 7)."""
        header = self.headers.get("Authorization")
        self.server.authorizations.append((self.path.split("?")[0], header))
        if self.server.token is None:
            return False
        if self.server.forbidden and header == f"Bearer {self.server.forbidden}":
            self.server.refused.append(403)
            self._send(403, {"code": 7, "message": "PermissionDenied: not authorized"})
            return True
        if header != f"Bearer {self.server.token}":
            self.server.refused.append(401)
            self._send(401, {"code": 16, "message": "Unauthenticated: missing or bad token"})
            return True
        return False

    def _after(self, method):
        hook = self.server.rotate.pop((method, self.path.split("?")[0]), None)
        if hook:
            hook()

    def do_GET(self):
        if self._refused():
            return
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
        if self._refused():
            return
        self.server.requests.append(("POST", self.path, body))
        if self.path == "/apis/v2beta1/experiments":
            experiment_id = f"exp-{len(self.server.experiments) + 1}"
            self.server.experiments[body["display_name"]] = experiment_id
            self._send(200, {"experiment_id": experiment_id, **body})
            return self._after("POST")
        if self.path == "/apis/v2beta1/recurringruns":
            return self._send(200, {"recurring_run_id": "rr-1", **body})
        if self.path == "/apis/v2beta1/runs":
            return self._send(200, {"run_id": "run-1", **body})
        self._send(404, {"error": f"no route {self.path}"})


def _serve(server):
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    return server


@pytest.fixture
def api():
    server = _serve(StandInKfpApi())
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def secured_api():
    """Multi-user KFP's API: bearer token `token-1` required."""
    server = _serve(StandInKfpApi(token="token-1", forbidden="token-of-another-account"))
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
    compiled, platform = kubeflow_runner.read_package(package)
    # kfp.Client sends both documents of the package: the spec and its platform spec (each
    # task's artifact volume), as the API server takes them.
    assert job["pipeline_spec"] == {"pipeline_spec": compiled, "platform_spec": platform}
    assert platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
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
    # kfp.Client sends the spec and its platform spec together (the artifact volumes).
    assert set(run["pipeline_spec"]) == {"pipeline_spec", "platform_spec"}
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "cardiomegaly-demo"
    assert run["pipeline_spec"]["pipeline_spec"]["defaultPipelineRoot"] == "gs://b/root"
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


def test_calls_carry_the_projected_token_re_read_before_every_request(secured_api, package,
                                                                      tmp_path):
    """The CronJob's case: KF_PIPELINES_SA_TOKEN_PATH names the projected token and --host is
    given (kfp.Client alone then sends no token: kfp/client/client.py `_load_config`). The
    kubelet rotates the token while the command runs: every request must read the file anew."""
    token = tmp_path / "token"
    token.write_text("token-1\n")

    def rotate():   # after the experiment is created: the old token is no longer accepted
        token.write_text("token-2\n")
        secured_api.token = "token-2"
    secured_api.rotate[("POST", "/apis/v2beta1/experiments")] = rotate

    result = CliRunner().invoke(
        main, ["pipeline", "schedule", "--host", secured_api.url, "--package", package,
               "--namespace", "cardio-pipelines"],
        env={"KF_PIPELINES_SA_TOKEN_PATH": str(token)})
    assert result.exit_code == 0, result.output
    assert secured_api.refused == []
    sent = dict(secured_api.authorizations)
    assert sent["/apis/v2beta1/experiments"] == "Bearer token-1"
    assert sent["/apis/v2beta1/recurringruns"] == "Bearer token-2"
    (job,) = secured_api.bodies("POST", "/apis/v2beta1/recurringruns")
    assert job["display_name"] == "cardio-retraining"

    # A later call (the next CronJob run): the file's current token, by --token-file too.
    token.write_text("token-3\n")
    secured_api.token = "token-3"
    summary = scheduling.submit(secured_api.url, package, namespace="cardio-pipelines",
                                token_file=str(token))
    assert summary["run_id"] == "run-1"
    assert secured_api.authorizations[-1] == ("/apis/v2beta1/runs", "Bearer token-3")


@pytest.mark.parametrize("token,expected", [
    (None, "HTTP 401 Unauthorized: no token was sent: give --token-file or set "
           "KF_PIPELINES_SA_TOKEN_PATH"),
    ("a-stale-token", "HTTP 401 Unauthorized: the token in {path} was not accepted"),
    ("token-of-another-account", "HTTP 403 Forbidden: the caller may not use the pipelines API "
                                 "in namespace cardio-pipelines"),
])
def test_a_refused_call_is_one_line_naming_the_host_and_the_cause(secured_api, package, tmp_path,
                                                                  monkeypatch, token, expected):
    monkeypatch.delenv("KF_PIPELINES_SA_TOKEN_PATH", raising=False)
    args = ["pipeline", "submit", "--host", secured_api.url, "--package", package,
            "--namespace", "cardio-pipelines"]
    path = tmp_path / "token"
    if token:
        path.write_text(token)
        args += ["--token-file", str(path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    (line,) = result.output.splitlines()
    assert line.startswith(f"Error: Kubeflow Pipelines at {secured_api.url} refused the call: "
                           + expected.format(path=path)), line
    assert secured_api.bodies("POST", "/apis/v2beta1/runs") == []
    # Refused once, not retried: kfp's own healthz would retry 5 times, 5 s apart.
    assert len(secured_api.refused) == 1


def test_an_unreachable_host_is_one_line_naming_the_host_and_the_cause(package, caplog):
    import socket
    import warnings

    with socket.socket() as probe:   # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        host = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        result = CliRunner().invoke(main, ["pipeline", "submit", "--host", host,
                                           "--package", package])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"Error: cannot reach Kubeflow Pipelines at {host}: Connection refused"]
    # Nothing else would reach stderr: no warning (kfp's FutureWarning), no urllib3 retry log.
    assert [str(w.message) for w in shown] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= 30] == []


def test_a_missing_token_file_is_refused_before_anything_is_sent(api, package, tmp_path):
    result = CliRunner().invoke(main, ["pipeline", "submit", "--host", api.url, "--package",
                                       package, "--token-file", str(tmp_path / "absent")])
    assert result.exit_code == 2 and "KFP token file" in result.output
    assert api.requests == []
