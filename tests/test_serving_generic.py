"""A model written for TF Serving, not for this project, served by `cardio serve` as TF Serving
serves it: zero-padded version directories, shapes judged by the model, Regress and
MultiInference, the REST API; version life cycle (availability-preserving unloads, load
retries) and a malformed models.config."""
from __future__ import annotations

import json
import shutil

import grpc
import numpy as np
import pytest
import tensorflow as tf
from serving_helpers import (GenericModel, examples, export_generic, http, start_cardio,
                             wait_for)
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    model_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from cardio.serving import server as server_lib

MODEL = "generic"


@pytest.fixture(scope="module")
def generic(tmp_path_factory):
    """The generic model pushed as `00000123` (as TF Serving's own test models are named)."""
    base = tmp_path_factory.mktemp("generic")
    export_generic(str(base), "00000123")
    monitoring = base / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }')
    running = start_cardio([f"--model_base_path={base}", f"--model_name={MODEL}",
                            "--rest_api_port=-1", f"--monitoring_config_file={monitoring}"])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def stub(generic):
    channel = grpc.insecure_channel(generic.target)
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


def _predict(stub, x, version=None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    if version is not None:
        request.model_spec.version.value = version
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.asarray(x, np.float32)))
    return stub.Predict(request, timeout=60)


def test_zero_padded_version_directory_loads_as_its_integer_version(generic, stub):
    with generic.client() as client:
        assert client.status(MODEL) == {123: "AVAILABLE"}
    response = _predict(stub, [[1.0], [2.0]], version=123)
    assert response.model_spec.version.value == 123
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]), [[3.0], [5.0]])


def test_shapes_are_judged_by_the_model_not_the_server(stub):
    # [1] for a signature declaring [?, 1]: TF Serving feeds it, and this model accepts it.
    np.testing.assert_allclose(tf.make_ndarray(_predict(stub, [4.0]).outputs["y"]).ravel(), [9.0])
    # A shape the model itself refuses: its TensorFlow error, as INVALID_ARGUMENT.
    with pytest.raises(grpc.RpcError) as raised:
        _predict(stub, np.ones([1000, 1]))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "x has 1000 or more values" in raised.value.details()


def test_regress_and_multi_inference(stub):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name, request.model_spec.signature_name = MODEL, "regress"
    request.input.example_list.examples.extend(examples(1.0, -2.0))
    response = stub.Regress(request, timeout=60)
    assert [r.value for r in response.result.regressions] == [3.0, -3.0]
    assert response.model_spec.version.value == 123

    multi = inference_pb2.MultiInferenceRequest()
    multi.input.example_list.examples.extend(examples(0.0))
    for signature, method in (("regress", "tensorflow/serving/regress"),
                              ("classify", "tensorflow/serving/classify")):
        multi.tasks.add(model_spec={"name": MODEL, "signature_name": signature},
                        method_name=method)
    response = stub.MultiInference(multi, timeout=60)
    regressed, classified = response.results
    assert regressed.model_spec.signature_name == "regress"
    assert [r.value for r in regressed.regression_result.regressions] == [1.0]
    assert [(c.label, c.score) for c in classified.classification_result.classifications[0]
            .classes] == [("neg", 0.5), ("pos", 0.5)]
    # serving_default (a float input, output `y`) cannot regress Examples: TF Serving's
    # PreProcessRegression refuses it (no `outputs` output).
    wrong = inference_pb2.MultiInferenceRequest(input=multi.input)
    wrong.tasks.add(model_spec={"name": MODEL}, method_name="tensorflow/serving/regress")
    with pytest.raises(grpc.RpcError) as raised:
        stub.MultiInference(wrong, timeout=60)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "No output Tensor with name outputs." in raised.value.details()
    duplicate = inference_pb2.MultiInferenceRequest(input=multi.input)
    duplicate.tasks.add(model_spec={"name": MODEL, "signature_name": "regress"},
                        method_name="tensorflow/serving/regress")
    duplicate.tasks.add(model_spec={"name": MODEL, "signature_name": "regress"},
                        method_name="tensorflow/serving/regress")
    with pytest.raises(grpc.RpcError) as raised:
        stub.MultiInference(duplicate, timeout=60)
    assert "Duplicate evaluation of signature: regress" in raised.value.details()


def test_generic_model_over_rest(generic):
    url = f"{generic.rest}/v1/models/{MODEL}"
    status, body = http("GET", url)
    assert status == 200
    assert body == {"model_version_status": [{"version": "123", "state": "AVAILABLE", "status": {
        "error_code": "OK", "error_message": ""}}]}
    assert http("POST", f"{url}:predict", {"instances": [[1.0], [2.0]]}) == \
        (200, {"predictions": [[3.0], [5.0]]})
    assert http("POST", f"{url}/versions/123:predict", {"inputs": {"x": [[0.5]]}}) == \
        (200, {"outputs": [[2.0]]})
    assert http("POST", f"{url}:regress", {"signature_name": "regress",
                                           "examples": [{"x": 1.0}, {"x": 2.5}]}) == \
        (200, {"results": [3.0, 6.0]})
    status, body = http("POST", f"{url}:classify", {"signature_name": "classify",
                                                    "examples": [{"x": 0.0}]})
    assert status == 200 and body == {"results": [[["neg", 0.5], ["pos", 0.5]]]}
    status, body = http("POST", f"{url}:predict", {"instances": [[1.0]] * 1000})
    assert status == 400 and "x has 1000 or more values" in body["error"]
    status, body = http("GET", f"{url}/metadata")
    # The shape of TF Serving's golden half_plus_two_model_metadata.json
    # (servables/tensorflow/testdata): default fields printed, the Any unpacked.
    assert status == 200 and body["model_spec"] == {"name": MODEL, "signature_name": "",
                                                    "version": "123"}
    assert set(body) == {"model_spec", "metadata"} and "@type" not in json.dumps(body)
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert set(signatures) >= {"serving_default", "regress"}
    x = signatures["serving_default"]["inputs"]["x"]
    assert x["dtype"] == "DT_FLOAT" and x["tensor_shape"] == {
        "dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}], "unknown_rank": False}
    assert signatures["regress"]["method_name"] == "tensorflow/serving/regress"
    assert signatures["regress"]["defaults"] == {}


def test_failed_new_version_keeps_the_old_one_serving_and_loads_are_retried(tmp_path):
    base = tmp_path / MODEL
    export_generic(str(base), "1")
    staging = export_generic(str(tmp_path / "staging"), "2")
    running = start_cardio([f"--model_base_path={base}", f"--model_name={MODEL}",
                            "--file_system_poll_wait_seconds=1", "--max_num_load_retries=1",
                            "--load_retry_interval_micros=3000000"])
    try:
        with running.client(timeout=60) as client:
            # A half-copied version 2: its load fails twice (one retry), then it stays END,
            # and under the `latest` policy version 1 keeps serving.
            (base / "2").mkdir()
            wait_for(lambda: client.status(MODEL).get(2) == "END", what="version 2 to fail")
            assert client.status(MODEL)[1] == "AVAILABLE"
            assert running.server.manager.statuses(model_pb2.ModelSpec(name=MODEL))[1][1].error
            shutil.rmtree(base / "2")
            wait_for(lambda: 2 not in client.status(MODEL), what="the failed version forgotten")
            # Version 3 is copied in while its first load attempt fails: the retry loads it.
            (base / "3").mkdir()
            wait_for(lambda: client.status(MODEL).get(3) == "LOADING", what="loading 3")
            shutil.copytree(staging, base / "3", dirs_exist_ok=True)
            wait_for(lambda: client.status(MODEL).get(3) == "AVAILABLE", what="the retry")
            wait_for(lambda: client.status(MODEL).get(1) == "END", what="version 1 unloaded")
    finally:
        running.stop()


def test_malformed_models_config_exits_with_tf_servings_line_and_status(tmp_path, capsys):
    # model_servers/main.cc prints the ParseProtoTextFile status (util/proto_util.h) and
    # returns -1; protobuf's TextFormat has logged where the text went wrong.
    config = tmp_path / "models.config"
    config.write_text("model_config_list { config { name: 'x' base_path: '/m' } ")
    assert server_lib.main([f"--model_config_file={config}", "--port=0"]) == 255
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        f"Failed to start server. Error: INVALID_ARGUMENT: Invalid protobuf file: '{config}'"]
    assert captured.err.startswith(
        "Error parsing text-format tensorflow.serving.ModelServerConfig: 1:"), captured.err


def _samples(text: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_prometheus_metrics_are_tf_servings_series_plus_the_projects_own(generic, stub):
    url = f"{generic.rest}/monitoring/prometheus/metrics"
    status, text = http("GET", url)
    assert status == 200
    before = _samples(text)
    _predict(stub, [[1.0]])
    http("POST", f"{generic.rest}/v1/models/{MODEL}:predict", {"instances": [[1.0]]})
    http("POST", f"{generic.rest}/v1/models/{MODEL}:predict", {"instances": [["text"]]})
    text = http("GET", url)[1]
    after = _samples(text)

    def delta(name, **labels):
        key = (name, tuple(sorted({"model_name": MODEL, **labels}.items())))
        return after.get(key, 0) - before.get(key, 0)

    # TF Serving's names, types and labels (servables/tensorflow/util.cc; its exporter,
    # util/prometheus_exporter.cc, writes a counter under its bare name).
    assert "# TYPE :tensorflow:serving:request_count counter" in text
    assert "# TYPE :tensorflow:serving:request_latency histogram" in text
    assert "# TYPE :tensorflow:serving:runtime_latency histogram" in text
    count = ":tensorflow:serving:request_count"
    assert f'{count}{{model_name="{MODEL}",status="OK"}}' in text
    # (prometheus_client's parser names a counter's samples `..._total`, whatever the text)
    assert delta(count + "_total", status="OK") == 2
    assert delta(count + "_total", status="INVALID_ARGUMENT") == 1
    latency = ":tensorflow:serving:request_latency_count"
    assert delta(latency, API="Predict", entrypoint="GRPC") == 1
    assert delta(latency, API="predict", entrypoint="REST") == 1     # successes only
    # Model runs, from either entry point, as TF Serving's predict_util.cc labels them.
    assert delta(":tensorflow:serving:runtime_latency_count", API="Predict", runtime="TF1") == 2
    assert f'{latency[:-6]}_bucket{{model_name="{MODEL}",API="Predict",entrypoint="GRPC",' \
           f'le="+Inf"}}' in text
    loads = [k for k in after if k[0] == ":tensorflow:cc:saved_model:load_attempt_count_total"]
    assert loads and dict(loads[0][1])["status"] == "success"
    # The project's own, per version and API, under its prefix.
    assert delta("cardio_serve_requests_total", version="123", API="predict",
                 entrypoint="GRPC", status="OK") == 1
    assert delta("cardio_serve_requests_total", version="", API="predict", entrypoint="REST",
                 status="INVALID_ARGUMENT") == 1


def test_multi_inference_accepts_a_tf2_models_predict_method_signatures(tmp_path):
    # tf.saved_model.save writes method_name "tensorflow/serving/predict" for every signature;
    # TF Serving checks only the task's method unless --enable_signature_method_name_check.
    module = GenericModel()
    tf.saved_model.save(module, str(tmp_path / "m" / "1"),
                        signatures={"regress": module.regress, "classify": module.classify})
    running = start_cardio([f"--model_base_path={tmp_path}/m", "--model_name=m"])
    try:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(running.target))
        multi = inference_pb2.MultiInferenceRequest()
        multi.input.example_list.examples.extend(examples(1.0))
        multi.tasks.add(model_spec={"name": "m", "signature_name": "regress"},
                        method_name="tensorflow/serving/regress")
        multi.tasks.add(model_spec={"name": "m", "signature_name": "classify"},
                        method_name="tensorflow/serving/classify")
        regressed, classified = stub.MultiInference(multi, timeout=60).results
        assert [r.value for r in regressed.regression_result.regressions] == [3.0]
        assert len(classified.classification_result.classifications[0].classes) == 2
        unknown = inference_pb2.MultiInferenceRequest(input=multi.input)
        unknown.tasks.add(model_spec={"name": "m", "signature_name": "nope"},
                          method_name="tensorflow/serving/regress")
        with pytest.raises(grpc.RpcError) as raised:
            stub.MultiInference(unknown, timeout=60)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "Requested signature not found in model graph: nope" in raised.value.details()
    finally:
        running.stop()


def _tf1_half_plus_three(path: str):
    """Like TF Serving's saved_model_half_plus_three: a TF1 SavedModel (SavedModelBuilder, no
    object graph) with y = 0.5 x + 3 over a float input and over Examples (ParseExample)."""
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as session:
        a, b = v1.Variable(0.5, name="a"), v1.Variable(3.0, name="b")
        serialized = v1.placeholder(tf.string, name="tf_example")
        parsed = v1.parse_example(serialized, {"x": v1.FixedLenFeature([1], tf.float32)})["x"]
        x = v1.placeholder(tf.float32, [None, 1], name="x")
        session.run(v1.global_variables_initializer())
        info = v1.saved_model.utils.build_tensor_info
        signature = v1.saved_model.signature_def_utils.build_signature_def
        # As in TF Serving's own export, the regress input is declared float though it is fed
        # serialized Examples (TF Serving's regressor does not check it).
        examples_as_float = info(serialized)
        examples_as_float.dtype = tf.float32.as_datatype_enum
        builder = v1.saved_model.builder.SavedModelBuilder(path)
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={
            "serving_default": signature({"x": info(x)}, {"y": info(a * x + b)},
                                         "tensorflow/serving/predict"),
            "regress_x_to_y": signature({"inputs": examples_as_float},
                                        {"outputs": info(a * parsed + b)},
                                        "tensorflow/serving/regress"),
            "classify_x_to_y": signature({"inputs": info(serialized)},
                                         {"scores": info(a * parsed + b)},
                                         "tensorflow/serving/classify")})
        builder.save()


def test_a_tf1_saved_model_loads_into_a_session_and_serves_every_api(tmp_path):
    _tf1_half_plus_three(str(tmp_path / "hp3" / "123"))
    running = start_cardio([f"--model_base_path={tmp_path}/hp3", "--model_name=hp3",
                            "--rest_api_port=-1"])
    try:
        assert http("POST", f"{running.rest}/v1/models/hp3:predict",
                    {"instances": [[1.0], [2.0]]}) == (200, {"predictions": [[3.5], [4.0]]})
        assert http("POST", f"{running.rest}/v1/models/hp3:regress", {
            "signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}) == \
            (200, {"results": [4.0]})
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(running.target))
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name, request.model_spec.signature_name = "hp3", "classify_x_to_y"
        request.input.example_list.examples.extend(examples(4.0))
        assert stub.Classify(request, timeout=60).result.classifications[0].classes[0].score \
            == 5.0
    finally:
        running.stop()


def test_a_session_bundle_fails_to_load_as_in_tf_serving(tmp_path):
    # TF Serving's bad_half_plus_two: a SessionBundle (export.meta), no saved_model.pb.
    export_generic(str(tmp_path / "m"), "1")
    (tmp_path / "m" / "2").mkdir()
    (tmp_path / "m" / "2" / "export.meta").write_bytes(b"")
    running = start_cardio([f"--model_base_path={tmp_path}/m", "--model_name=m",
                            "--max_num_load_retries=0",
                            "--rest_api_port=-1"])
    try:
        status, body = http("GET", f"{running.rest}/v1/models/m/versions/2")
        assert status == 200 and body["model_version_status"][0]["status"] == {
            "error_code": "UNIMPLEMENTED",
            "error_message": "Session Bundle is deprecated and removed."}, body
        # Not loaded: TF Serving's manager answers NOT_FOUND (core/basic_manager.cc).
        assert http("POST", f"{running.rest}/v1/models/m/versions/2:predict",
                    {"instances": [[1.0]]})[0] == 404
    finally:
        running.stop()
