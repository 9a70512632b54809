"""TF Serving's gRPC contract: the same tests against `cardio serve` and, when it is on PATH,
the real `tensorflow_model_server` (skipped with the reason otherwise)."""
from __future__ import annotations

import base64
import concurrent.futures
import functools
import json
import os

import grpc
import numpy as np
import pytest
import tensorflow as tf
from serving_helpers import SERVERS, export_version, http, jpeg, png, write_batching_file
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from cardio import features as F
from cardio.serving import config as config_lib, releases

MODEL = "cardio-tiny"


@pytest.fixture(scope="module")
def serving_root(tmp_path_factory):
    """Two pushed versions: `stable` -> 1, `canary` -> 2."""
    root = str(tmp_path_factory.mktemp("serving"))
    staging = str(tmp_path_factory.mktemp("exports"))
    for version, seed in ((1, 0), (2, 1)):
        export_version(staging, root, MODEL, version, seed)
        releases.record_push(root, MODEL, version)
    releases.promote(root, MODEL, config_lib.CANARY, 2)
    write_batching_file(os.path.join(root, config_lib.BATCHING_PARAMETERS), max_batch_size=8,
                        batch_timeout_micros=20000, num_batch_threads=1)
    return root


@pytest.fixture(scope="module", params=sorted(SERVERS))
def running(request, serving_root):
    server = SERVERS[request.param]([
        f"--model_config_file={serving_root}/models.config", "--enable_batching",
        "--rest_api_port=-1",
        f"--batching_parameters_file={serving_root}/{config_lib.BATCHING_PARAMETERS}"])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(running):
    with running.client(timeout=60) as c:
        yield c


@functools.cache
def _loaded(serving_root, version):
    return tf.saved_model.load(os.path.join(serving_root, MODEL, str(version)))


def in_process(serving_root, version, images):
    """serving_default of the same SavedModel, called in-process."""
    model = _loaded(serving_root, version)
    return model.signatures["serving_default"](image_bytes=tf.constant(images))


def test_predict_answers_by_latest_version_and_label(client, serving_root):
    images = [png(0), png(1, bits=8), jpeg(2)]
    expected = {v: in_process(serving_root, v, images)["probability"].numpy() for v in (1, 2)}
    assert not np.allclose(expected[1], expected[2]), "the two versions must differ"
    for spec, version in (({}, 2), ({"version": 1}, 1), ({"label": "stable"}, 1),
                          ({"label": "canary"}, 2)):
        results = client.predict(images, MODEL, **spec)
        assert [r["version"] for r in results] == [version] * 3, spec
        np.testing.assert_allclose([r["probability"] for r in results], expected[version],
                                   atol=1e-6)
        for r in results:
            assert r["predicted_label"] == int(r["probability"] >= 0.5)
            assert r["crop_box"] == [0.0, 0.0, 1.0, 1.0] and r["crop_qc"] == []


def test_predict_output_filter_and_model_spec(client):
    response = client.predict_raw({"image_bytes": np.array([png(3)], dtype=object)}, MODEL,
                                  label="stable", output_filter=["probability"])
    assert set(response.outputs) == {"probability"}
    assert tf.make_ndarray(response.outputs["probability"]).shape == (1,)
    assert response.model_spec.name == MODEL and response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"


def test_classify_serves_the_classify_signature(client):
    images = [png(4), jpeg(5)]
    scores = client.classify(images, MODEL, version=2)
    probabilities = [r["probability"] for r in client.predict(images, MODEL, version=2)]
    assert [set(s) for s in scores] == [{"normal", "cardiomegaly"}] * 2
    np.testing.assert_allclose([s["cardiomegaly"] for s in scores], probabilities, atol=1e-6)
    np.testing.assert_allclose([s["normal"] + s["cardiomegaly"] for s in scores], 1.0, atol=1e-6)


def test_model_metadata_lists_the_signatures(client):
    version, signatures = client.metadata(MODEL, label="canary")
    assert version == 2
    assert {"serving_default", "serving_examples", F.SERVING_CLASSIFY} <= set(signatures.signature_def)
    default = signatures.signature_def["serving_default"]
    assert default.inputs["image_bytes"].dtype == tf.string.as_datatype_enum
    assert {"probability", "predicted_label", "crop_box", "crop_qc"} <= set(default.outputs)


def test_model_status_reports_each_version(client):
    assert client.status(MODEL) == {1: "AVAILABLE", 2: "AVAILABLE"}
    assert client.status(MODEL, label="canary") == {2: "AVAILABLE"}


def _predict(image_bytes, **spec):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = spec.pop("name", MODEL)
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    if image_bytes is not None:
        request.inputs["image_bytes"].CopyFrom(image_bytes)
    return request


def _strings(values, shape=None):
    return tf.make_tensor_proto(np.array(values, dtype=object), shape=shape, dtype=tf.string)


BAD_REQUESTS = {
    "unknown model": ("Predict", lambda: _predict(_strings([png(0)]), name="no-such-model"),
                      grpc.StatusCode.NOT_FOUND, "no-such-model"),
    "unknown version": ("Predict", lambda: _predict(_strings([png(0)]), version=99),
                        grpc.StatusCode.NOT_FOUND, "99"),
    # TF Serving answers INVALID_ARGUMENT for an unknown label (ServerCore), not NOT_FOUND.
    "unknown label": ("Predict", lambda: _predict(_strings([png(0)]), version_label="beta"),
                      grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: beta"),
    "unknown signature": ("Predict", lambda: _predict(_strings([png(0)]), signature_name="nope"),
                          grpc.StatusCode.FAILED_PRECONDITION, "nope"),
    "wrong dtype": ("Predict", lambda: _predict(tf.make_tensor_proto([1.5, 2.5])),
                    grpc.StatusCode.INVALID_ARGUMENT, "string"),
    "wrong shape": ("Predict", lambda: _predict(_strings([[png(0)]], shape=[1, 1])),
                    grpc.StatusCode.INVALID_ARGUMENT, "shape"),
    "undecodable image": ("Predict", lambda: _predict(_strings([b"not an image"])),
                          grpc.StatusCode.INVALID_ARGUMENT, "image"),
    "empty batch": ("Predict", lambda: _predict(_strings([], shape=[0])),
                    grpc.StatusCode.INVALID_ARGUMENT, ""),
    "unknown input": ("Predict", lambda: _predict(None).__class__(
        model_spec=_predict(None).model_spec, inputs={"pixels": _strings([png(0)])}),
        grpc.StatusCode.INVALID_ARGUMENT, "pixels"),
    "empty classify": ("Classify", lambda: classification_pb2.ClassificationRequest(
        model_spec={"name": MODEL, "signature_name": F.SERVING_CLASSIFY}),
        grpc.StatusCode.INVALID_ARGUMENT, "empty"),
    "classify on a predict signature": ("Classify", lambda: _classify_request("serving_default"),
                                        grpc.StatusCode.INVALID_ARGUMENT, ""),
    "metadata without field": ("GetModelMetadata",
                               lambda: get_model_metadata_pb2.GetModelMetadataRequest(
                                   model_spec={"name": MODEL}),
                               grpc.StatusCode.INVALID_ARGUMENT, "metadata_field"),
    "status of unknown model": ("GetModelStatus",
                                lambda: get_model_status_pb2.GetModelStatusRequest(
                                    model_spec={"name": "no-such-model"}),
                                grpc.StatusCode.NOT_FOUND, "no-such-model"),
}


def _classify_request(signature):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = MODEL, signature
    request.input.example_list.examples.add().features.feature["image"].bytes_list.value.append(
        png(0))
    return request


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_get_a_clear_status_and_the_server_keeps_serving(client, case):
    method, make, code, needle = BAD_REQUESTS[case]
    stub = client.models if method == "GetModelStatus" else client.predictions
    with pytest.raises(grpc.RpcError) as raised:
        getattr(stub, method)(make(), timeout=60)
    assert raised.value.code() == code, raised.value.details()
    assert needle.lower() in raised.value.details().lower()
    assert raised.value.details().strip(), "the status needs a message"
    assert client.predict([png(7)], MODEL)[0]["version"] == 2


def test_messages_are_unlimited_by_default(client):
    """A 16-bit radiograph larger than gRPC's 4 MB default gets through (TF Serving's default)."""
    big = png(8, size=(1600, 1600))
    assert len(big) > 4 * 1024 * 1024
    assert client.predict([big], MODEL)[0]["version"] == 2


def test_concurrent_requests_are_batched_across_clients(running, client, serving_root):
    if running.server is None:
        pytest.skip("model calls are counted inside cardio serve only")
    servable = running.server.manager.resolve(_predict(None).model_spec)
    before = servable.model_calls
    images = [png(100 + i) for i in range(32)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda image: client.predict([image], MODEL), images))
    calls = servable.model_calls - before
    assert all(r[0]["version"] == 2 for r in results)
    assert calls < len(images), f"{calls} model calls for {len(images)} requests: no batching"
    # Each request gets its own rows of the batched call.
    expected = in_process(serving_root, 2, images)["probability"].numpy()
    np.testing.assert_allclose([r[0]["probability"] for r in results], expected, atol=1e-6)


# --- the same contract over TF Serving's REST API ------------------------------------------------

def _plain_grpc(running, images, spec):
    """A client written for TF Serving: a bare stub and make_tensor_proto."""
    channel = grpc.insecure_channel(running.target, options=[
        ("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)])
    try:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL
        if "version" in spec:
            request.model_spec.version.value = spec["version"]
        if "label" in spec:
            request.model_spec.version_label = spec["label"]
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(images))
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=60)
        return (response.model_spec.version.value,
                tf.make_ndarray(response.outputs["probability"]).tolist())
    finally:
        channel.close()


def _plain_rest(running, images, spec):
    """A plain HTTP POST of {"instances": [{"b64": ...}]} (row format, one named input)."""
    path = {"version": "/versions/{}", "label": "/labels/{}"}
    suffix = "".join(path[k].format(v) for k, v in spec.items())
    status, body = http("POST", f"{running.rest}/v1/models/{MODEL}{suffix}:predict", {
        "instances": [{"image_bytes": {"b64": base64.b64encode(i).decode()}} for i in images]})
    assert status == 200, body
    return None, [row["probability"] for row in body["predictions"]]


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_unchanged_tf_serving_clients_get_the_same_predictions(running, serving_root, transport):
    images = [png(0), jpeg(2)]
    for spec, version in (({}, 2), ({"version": 1}, 1), ({"label": "stable"}, 1)):
        expected = in_process(serving_root, version, images)["probability"].numpy()
        answered, probabilities = (_plain_grpc if transport == "grpc" else _plain_rest)(
            running, images, spec)
        assert answered in (version, None), spec
        np.testing.assert_allclose(probabilities, expected, atol=1e-6)


def test_rest_columnar_format_signature_name_and_bytes_outputs(running, serving_root):
    image = base64.b64encode(png(3)).decode()
    status, body = http("POST", f"{running.rest}/v1/models/{MODEL}/labels/canary:predict", {
        "signature_name": "serving_default", "inputs": {"image_bytes": [{"b64": image}]}})
    assert status == 200, body
    expected = in_process(serving_root, 2, [png(3)])
    assert set(body["outputs"]) == set(expected)
    np.testing.assert_allclose(body["outputs"]["probability"], expected["probability"].numpy(),
                               atol=1e-6)
    assert body["outputs"]["crop_box"] == [[0.0, 0.0, 1.0, 1.0]]
    status, body = http("POST", f"{running.rest}/v1/models/{MODEL}/versions/2:classify", {
        "signature_name": F.SERVING_CLASSIFY, "examples": [{"image": {"b64": image}}]})
    assert status == 200, body
    ((normal, cardiomegaly),) = body["results"]
    assert [normal[0], cardiomegaly[0]] == ["normal", "cardiomegaly"]
    np.testing.assert_allclose(cardiomegaly[1], expected["probability"].numpy()[0], atol=1e-6)


def test_rest_status_and_metadata_match_grpc(running, client):
    status, body = http("GET", f"{running.rest}/v1/models/{MODEL}")
    assert status == 200
    assert {int(v["version"]): v["state"] for v in body["model_version_status"]} == \
        client.status(MODEL)
    assert all(v["status"]["error_code"] == "OK" for v in body["model_version_status"])
    status, body = http("GET", f"{running.rest}/v1/models/{MODEL}/labels/stable/metadata")
    assert status == 200 and body["model_spec"]["version"] == "1"
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert signatures["serving_default"]["inputs"]["image_bytes"]["dtype"] == "DT_STRING"


def test_the_kubernetes_readiness_probe_path_answers(running):
    import yaml

    with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "kubernetes", "base",
                           "deployment.yaml")) as f:
        documents = [d for d in yaml.safe_load_all(f) if d and d.get("kind") == "Deployment"]
    (container,) = [c for c in documents[0]["spec"]["template"]["spec"]["containers"]
                    if "readinessProbe" in c]
    path = container["readinessProbe"]["httpGet"]["path"]
    # The probe names the deployed grid cell's model; the label path is what is probed.
    assert path.startswith("/v1/models/") and path.endswith("/labels/stable")
    status, body = http("GET", f"{running.rest}/v1/models/{MODEL}/labels/stable")
    assert status == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"
    assert http("GET", f"{running.rest}/v1/models/no-such-model/labels/stable")[0] == 404


# TF Serving's HTTP codes for the gRPC statuses (http_server.cc ToHTTPStatusCode).
REST_BAD_REQUESTS = {
    "unknown model": ("/v1/models/no-such-model:predict", {"instances": [{"b64": "AA=="}]},
                      404, "no-such-model"),
    "unknown version": (f"/v1/models/{MODEL}/versions/99:predict", {"instances": ["x"]}, 404, "99"),
    "unknown label": (f"/v1/models/{MODEL}/labels/beta:predict", {"instances": ["x"]}, 400,
                      "Unrecognized servable version label: beta"),
    # TF Serving's HTTP handler (http_rest_api_handler.cc GetInfoMap): 400, not gRPC's 412.
    "unknown signature": (f"/v1/models/{MODEL}:predict", {"signature_name": "nope",
                                                          "instances": ["x"]}, 400,
                          'Serving signature name: "nope" not found in signature def'),
    "wrong dtype": (f"/v1/models/{MODEL}:predict", {"instances": [1.5]}, 400, "string"),
    "undecodable image": (f"/v1/models/{MODEL}:predict", {"instances": [{"b64": "bm90"}]}, 400,
                          "image"),
    "bad b64": (f"/v1/models/{MODEL}:predict", {"instances": [{"b64": "%%%"}]}, 400, "base64"),
    "neither format": (f"/v1/models/{MODEL}:predict", {"rows": []}, 400, "instances"),
    "not JSON": (f"/v1/models/{MODEL}:predict", "{", 400, "JSON"),
    "unknown path": ("/v1/modelz", None, 400, "Malformed request"),
}


@pytest.mark.parametrize("case", sorted(REST_BAD_REQUESTS))
def test_rest_bad_requests_get_tf_servings_http_code_and_error_body(running, client, case):
    path, body, code, needle = REST_BAD_REQUESTS[case]
    if body == "{":     # raw, unparseable
        import urllib.request
        import urllib.error
        try:
            urllib.request.urlopen(urllib.request.Request(f"{running.rest}{path}", data=b"{",
                                                          method="POST"), timeout=60)
        except urllib.error.HTTPError as error:
            status, answer = error.code, json.loads(error.read())
    else:
        status, answer = http("GET" if body is None else "POST", f"{running.rest}{path}", body)
    assert status == code, answer
    assert set(answer) == {"error"} and needle.lower() in answer["error"].lower(), answer
    assert client.predict([png(7)], MODEL)[0]["version"] == 2
