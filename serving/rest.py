"""TF Serving's REST API (--rest_api_port), served by Werkzeug over the same request handling
as the gRPC services (serving/service.py), so both answer alike.

  GET  /v1/models/{name}[/versions/{v}|/labels/{l}]             model status
  GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata    signatures
  POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict     row ("instances") or columnar
                                                               ("inputs") format
  POST ...:classify, ...:regress                               {"examples": [...], "context"}
  GET  <prometheus path>                                       metrics, when enabled

JSON as TF Serving writes and reads it (its json_tensor.cc): `{"b64": "..."}` for binary
strings, outputs whose name ends in `_bytes` written that way, `{"predictions": ...}` /
`{"outputs": ...}`, errors as `{"error": "..."}` with the HTTP code TF Serving maps each gRPC
status to.
"""
from __future__ import annotations

import base64
import json
import logging
import threading

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
    regression_pb2,
)
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter, Map, Rule
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from cardio.serving import service
from cardio.serving.client import fill_model_spec
from cardio.serving.errors import ServingError

log = logging.getLogger("cardio.serve")

# TF Serving's http_server.cc ToHTTPStatusCode.
HTTP_STATUS = {
    grpc.StatusCode.OK: 200, grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 412, grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500, grpc.StatusCode.UNAUTHENTICATED: 401,
}


class _Name(BaseConverter):
    regex = "[^/:]+"


def _routes(metrics_path: str | None) -> Map:
    rules = []
    for suffix in ("", "/versions/<int:version>", "/labels/<name:label>"):
        base = "/v1/models/<name:model>" + suffix
        rules += [Rule(base, methods=["GET"], endpoint="status"),
                  Rule(base + "/metadata", methods=["GET"], endpoint="metadata"),
                  Rule(base + ":<any(predict, classify, regress):method>", methods=["POST"],
                       endpoint="infer")]
    if metrics_path:
        rules.append(Rule(metrics_path, methods=["GET"], endpoint="metrics"))
    return Map(rules, converters={"name": _Name}, strict_slashes=False)


def _bad(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


# --- JSON <-> tensors -------------------------------------------------------------------------

def _decode_value(value, is_string: bool):
    """A JSON leaf or list as a tensor value: {"b64": ...} -> bytes; text -> UTF-8 bytes."""
    if isinstance(value, list):
        return [_decode_value(v, is_string) for v in value]
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise _bad(f"JSON object: {json.dumps(value)[:80]} not formatted correctly. Expecting "
                       f'object with a single "b64" key')
        try:
            return base64.b64decode(value["b64"], validate=True)
        except ValueError:
            raise _bad(f"Unable to base64 decode {value['b64'][:40]!r}") from None
    if isinstance(value, str):
        if not is_string:
            raise _bad(f"JSON Value: {json.dumps(value)[:80]} Type: String is not of expected "
                       f"type: number")
        return value.encode()
    if is_string:
        raise _bad(f"JSON Value: {json.dumps(value)} Type: Number is not of expected type: string")
    return value


def _tensor(value, info, alias: str):
    """A JSON value (nested lists) -> TensorProto of the signature input's dtype."""
    dtype = tf.dtypes.as_dtype(info.dtype)
    decoded = _decode_value(value, dtype == tf.string)
    try:
        array = np.array(decoded, dtype=object if dtype == tf.string else dtype.as_numpy_dtype)
    except (ValueError, TypeError) as error:
        raise _bad(f"input {alias!r}: {error} (tensors must be rectangular lists of "
                   f"{dtype.name})") from None
    if array.dtype == object and dtype != tf.string:
        raise _bad(f"input {alias!r}: lists of unequal lengths")
    try:
        return tf.make_tensor_proto(array, dtype=dtype)
    except (TypeError, ValueError) as error:
        raise _bad(f"input {alias!r}: {error}") from None


def predict_request(body: dict, signature) -> dict:
    """{"instances": [...]} (row) or {"inputs": ...} (columnar) -> {alias: TensorProto}."""
    if ("instances" in body) == ("inputs" in body):
        raise _bad('Missing \'inputs\' or \'instances\' key' if "instances" not in body else
                   "Not both 'inputs' and 'instances' may be set")
    aliases = sorted(signature.inputs)
    if "inputs" in body:
        inputs = body["inputs"]
        if not (isinstance(inputs, dict) and set(inputs) <= set(aliases) and inputs
                and not set(inputs) == {"b64"}):
            if len(aliases) != 1:
                raise _bad(f"Columnar input must name the signature's inputs: {aliases}")
            inputs = {aliases[0]: inputs}
        return {a: _tensor(v, signature.inputs[a], a) for a, v in inputs.items()}
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise _bad("'instances' must be a non-empty list")
    named = [isinstance(i, dict) and set(i) != {"b64"} for i in instances]
    if any(named) and not all(named):
        raise _bad("Expecting object but got list at item 0 of input list" if not named[0] else
                   "Expecting value/list but got object at an item of input list")
    if not named[0]:
        if len(aliases) != 1:
            raise _bad(f"The signature has {len(aliases)} inputs {aliases}: each instance must "
                       f"be an object naming them")
        return {aliases[0]: _tensor(instances, signature.inputs[aliases[0]], aliases[0])}
    keys = set(instances[0])
    if any(set(i) != keys for i in instances):
        raise _bad("Failed to process element: every instance must have the same named inputs")
    return {k: _tensor([i[k] for i in instances], signature.inputs[k], k) for k in keys}


def _json_value(alias: str, array: np.ndarray):
    if array.dtype == object or array.dtype.kind == "S":
        if alias.endswith("_bytes"):
            return np.vectorize(lambda b: {"b64": base64.b64encode(b).decode()},
                                otypes=[object])(array).tolist()
        return np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(array).tolist()
    return array.tolist()


def predict_response(response: predict_pb2.PredictResponse, row_format: bool) -> dict:
    outputs = {a: tf.make_ndarray(t) for a, t in response.outputs.items()}
    if not row_format:
        if len(outputs) == 1:
            ((alias, array),) = outputs.items()
            return {"outputs": _json_value(alias, array)}
        return {"outputs": {a: _json_value(a, v) for a, v in outputs.items()}}
    rows = {v.shape[0] if v.ndim else None for v in outputs.values()}
    if len(rows) != 1 or None in rows:
        raise _bad("Tensors in the response must have the same 0th dimension size to be "
                   "written in row format; use the columnar 'inputs' format")
    values = {a: _json_value(a, v) for a, v in outputs.items()}
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    return {"predictions": [{a: values[a][i] for a in values} for i in range(rows.pop())]}


def _feature(value) -> tf.train.Feature:
    values = value if isinstance(value, list) else [value]
    if all(isinstance(v, bool) or isinstance(v, int) for v in values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))
    return tf.train.Feature(bytes_list=tf.train.BytesList(
        value=[_decode_value(v, True) for v in values]))


def _example(features) -> tf.train.Example:
    if not isinstance(features, dict):
        raise _bad("Each example must be a JSON object of feature name -> value")
    return tf.train.Example(features=tf.train.Features(
        feature={k: _feature(v) for k, v in features.items()}))


def examples_input(body: dict, target):
    examples = body.get("examples")
    if not isinstance(examples, list):
        raise _bad("'examples' must be a list of objects")
    if "context" in body:
        target.example_list_with_context.context.CopyFrom(_example(body["context"]))
        target.example_list_with_context.examples.extend(_example(e) for e in examples)
    else:
        target.example_list.examples.extend(_example(e) for e in examples)


# --- the application --------------------------------------------------------------------------

class RestApi:
    def __init__(self, manager, method_check: bool = False, timeout_ms: int = 30_000,
                 num_threads: int = 0, metrics=None, metrics_path: str | None = None):
        self.manager, self.method_check, self.metrics = manager, method_check, metrics
        self.timeout = timeout_ms / 1000 if timeout_ms > 0 else None
        self.routes = _routes(metrics_path if metrics is not None else None)
        # --rest_api_num_threads: at most this many requests are handled at once.
        self._slots = threading.BoundedSemaphore(num_threads) if num_threads > 0 else None

    def status(self, model, version=None, label=None, **_):
        request = get_model_status_pb2.GetModelStatusRequest()
        fill_model_spec(request.model_spec, model, version, label)
        response = service.model_status(self.manager, request.model_spec)
        return json_format.MessageToDict(response, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)

    def metadata(self, model, version=None, label=None, **_):
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        fill_model_spec(request.model_spec, model, version, label)
        response = service.model_metadata(self.manager.resolve(request.model_spec), request)
        return json_format.MessageToDict(response, preserving_proto_field_name=True)

    def infer(self, body, model, method, version=None, label=None):
        if not isinstance(body, dict):
            raise _bad("The request body must be a JSON object")
        signature_name = body.get("signature_name", "")
        if method == "predict":
            request = predict_pb2.PredictRequest()
            fill_model_spec(request.model_spec, model, version, label, signature_name)
            servable = self.manager.resolve(request.model_spec)
            signature = servable.signature(signature_name)
            for alias, proto in predict_request(body, signature).items():
                request.inputs[alias].CopyFrom(proto)
            return service.predict(servable, request, self.timeout)
        kind = (classification_pb2.ClassificationRequest if method == "classify"
                else regression_pb2.RegressionRequest)
        request = kind()
        fill_model_spec(request.model_spec, model, version, label, signature_name)
        examples_input(body, request.input)
        servable = self.manager.resolve(request.model_spec)
        if method == "classify":
            return service.classify(servable, request, self.method_check, self.timeout)
        return service.regress(servable, request, self.method_check, self.timeout)

    @staticmethod
    def render(method: str, body: dict, response) -> dict:
        if method == "predict":
            return predict_response(response, "instances" in body)
        if method == "classify":
            return {"results": [[[c.label, c.score] for c in row.classes]
                                for row in response.result.classifications]}
        return {"results": [r.value for r in response.result.regressions]}

    def __call__(self, environ, start_response):
        request = Request(environ)
        try:
            endpoint, args = self.routes.bind_to_environ(environ).match()
        except HTTPException:
            return self._json({"error": f"Malformed request: {request.method} {request.path}"},
                              400 if request.path.startswith("/v1/") else 404)(
                environ, start_response)
        if endpoint == "metrics":
            return Response(self.metrics.exposition(), mimetype="text/plain")(
                environ, start_response)
        if self._slots:
            self._slots.acquire()
        try:
            return self._json(*self._handle(request, endpoint, args))(environ, start_response)
        finally:
            if self._slots:
                self._slots.release()

    def _handle(self, request, endpoint, args) -> tuple[dict, int]:
        api = {"status": "GetModelStatus", "metadata": "GetModelMetadata"}.get(
            endpoint, args.get("method"))
        try:
            if endpoint == "infer":
                try:
                    body = json.loads(request.get_data())
                except ValueError as error:
                    raise _bad(f"JSON Parse error: {error}") from None
                response = service.measured(self.metrics, api, "REST", args["model"],
                                            lambda: self.infer(body, **args))
                return self.render(args["method"], body, response), 200
            call = self.status if endpoint == "status" else self.metadata
            return call(**args), 200
        except ServingError as error:
            return {"error": error.message}, HTTP_STATUS.get(error.code, 500)
        except Exception as error:    # answered, logged; the server keeps serving
            log.exception("REST %s %s failed", request.method, request.path)
            return {"error": f"{type(error).__name__}: {error}"}, 500

    @staticmethod
    def _json(payload: dict, status: int) -> Response:
        return Response(json.dumps(payload), status=status, mimetype="application/json")


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args, **kwargs):   # no line per request (TF Serving logs none)
        pass


class RestServer:
    """Werkzeug's threaded WSGI server on its own thread."""

    def __init__(self, app: RestApi, host: str, port: int):
        self._server = make_server(host, port, app, threaded=True, request_handler=_QuietHandler)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="rest",
                                        daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        self._server.shutdown()
        self._thread.join()
