"""TF Serving's REST API (--rest_api_port), served by aiohttp over the same request handling
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

import asyncio
import base64
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import socket
import threading
import time

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
from aiohttp import web

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


def _with_defaults(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def json_expansion(body: bytes) -> int:
    """An upper estimate of the bytes parsing `body` takes, counted before parsing it: the text
    twice (str, base64-decoded bytes) and, per JSON value (at most one per comma or bracket),
    its Python object and list slot, its ndarray element and its TensorProto value (64)."""
    return 2 * len(body) + 64 * (body.count(b",") + body.count(b"[") + 1)


# --- the application --------------------------------------------------------------------------

class RestApi:
    """The REST endpoints over serving/service.py, synchronous; `RestServer` reads each request
    whole, then hands it to a worker thread that calls `handle`."""

    def __init__(self, manager, method_check: bool = False, timeout_ms: int = 30_000,
                 metrics=None, metrics_path: str | None = None, budget=None):
        """`budget` (serving/memory.py's Budget): bodies and their parsed JSON hold their
        size from it while they run."""
        self.manager, self.method_check, self.metrics = manager, method_check, metrics
        self.budget = budget
        self.timeout = timeout_ms / 1000 if timeout_ms > 0 else None
        self.metrics_path = metrics_path if metrics is not None else None

    def status(self, model, version=None, label=None, **_):
        request = get_model_status_pb2.GetModelStatusRequest()
        fill_model_spec(request.model_spec, model, version, label)
        response = service.model_status(self.manager, request.model_spec)
        return _with_defaults(response)

    def metadata(self, model, version=None, label=None, **_):
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        fill_model_spec(request.model_spec, model, version, label)
        response = service.model_metadata(self.manager.resolve(request.model_spec), request)
        # As TF Serving's http_rest_api_util.cc ToJsonString(GetModelMetadataResponse): the
        # model spec and the unpacked SignatureDefMap (no "@type"), each with default fields.
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        return {"model_spec": _with_defaults(response.model_spec),
                "metadata": {"signature_def": _with_defaults(signatures)}}

    def infer(self, body, model, method, version=None, label=None, timeout=None):
        if not isinstance(body, dict):
            raise _bad("The request body must be a JSON object")
        signature_name = body.get("signature_name", "")
        if method == "predict":
            request = predict_pb2.PredictRequest()
            fill_model_spec(request.model_spec, model, version, label, signature_name)
            servable = self.manager.resolve(request.model_spec)
            name = signature_name or "serving_default"
            if name not in servable.signature_defs:
                # TF Serving's HTTP handler (model_servers/http_rest_api_handler.cc, GetInfoMap)
                # answers this one INVALID_ARGUMENT (400), where its gRPC Predict answers
                # FAILED_PRECONDITION.
                raise _bad(f'Serving signature name: "{name}" not found in signature def')
            signature = servable.signature(signature_name)
            for alias, proto in predict_request(body, signature).items():
                request.inputs[alias].CopyFrom(proto)
            return service.predict(servable, request, timeout)
        kind = (classification_pb2.ClassificationRequest if method == "classify"
                else regression_pb2.RegressionRequest)
        request = kind()
        fill_model_spec(request.model_spec, model, version, label, signature_name)
        examples_input(body, request.input)
        servable = self.manager.resolve(request.model_spec)
        if method == "classify":
            return service.classify(servable, request, self.method_check, timeout)
        return service.regress(servable, request, self.method_check, timeout)

    @staticmethod
    def render(method: str, body: dict, response) -> dict:
        if method == "predict":
            return predict_response(response, "instances" in body)
        if method == "classify":
            return {"results": [[[c.label, c.score] for c in row.classes]
                                for row in response.result.classifications]}
        return {"results": [r.value for r in response.result.regressions]}

    def handle(self, endpoint: str, args: dict, body: bytes | None = None,
               arrived: float | None = None) -> tuple[dict, int]:
        """One request -> (JSON payload, HTTP status). `arrived` (time.monotonic()) starts the
        --rest_api_timeout_in_ms clock, so time spent queued for a worker counts."""
        api = {"status": "GetModelStatus", "metadata": "GetModelMetadata"}.get(
            endpoint, args.get("method"))
        try:
            if endpoint == "infer":
                timeout = None
                if self.timeout is not None:
                    timeout = self.timeout - (time.monotonic() - (arrived or time.monotonic()))
                    if timeout <= 0:
                        raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                           "Deadline exceeded before a worker took the request "
                                           "(--rest_api_timeout_in_ms)")
                with (self.budget.held(json_expansion(body), "the JSON body") if self.budget
                      else contextlib.nullcontext()):
                    try:
                        parsed = json.loads(body)
                    except (ValueError, RecursionError) as error:   # too deeply nested too
                        raise _bad(f"JSON Parse error: {error}") from None
                    response = service.measured(
                        self.metrics, api, "REST", args["model"],
                        lambda: self.infer(parsed, **args, timeout=timeout))
                    return self.render(args["method"], parsed, response), 200
            call = self.status if endpoint == "status" else self.metadata
            return service.measured(self.metrics, api, "REST", args["model"],
                                    lambda: call(**args)), 200
        except ServingError as error:
            return {"error": error.message}, HTTP_STATUS.get(error.code, 500)
        except Exception as error:    # answered, logged; the server keeps serving
            log.exception("REST %s %s failed", endpoint, args)
            return {"error": f"{type(error).__name__}: {error}"}, 500


# --- the HTTP server --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class HttpLimits:
    """What clients may hold of the REST server before any worker sees their request. A
    request is read whole on the event loop (a slow or stalled client holds a connection, never
    a worker), within `header_timeout` of connecting (or of its previous answer on a kept-alive
    connection) and `body_timeout` of its header; a declared or actual body over
    `max_body_bytes` is answered 413 without buffering it; past `max_connections` open
    connections a new one is answered 503 and closed."""
    max_body_bytes: int = 64 << 20
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 256


def _json_response(payload: dict, status: int) -> web.Response:
    return web.Response(body=json.dumps(payload).encode(), status=status,
                        content_type="application/json")


class _Refused(asyncio.Protocol):
    """A connection past --rest_api_max_connections: one 503 answer, then closed."""
    BODY = json.dumps({"error": "Too many open connections (--rest_api_max_connections)"}).encode()
    ANSWER = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
              b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY))

    def connection_made(self, transport):
        transport.write(self.ANSWER)
        transport.close()


class RestServer:
    """aiohttp's HTTP server on an event loop of its own thread; requests run on
    `num_threads` worker threads (--rest_api_num_threads), status and metadata on two more of
    their own, so readiness probes never queue behind model runs."""

    def __init__(self, api: RestApi, host: str, port: int, num_threads: int,
                 limits: HttpLimits = HttpLimits()):
        self.api, self.limits = api, limits
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.create_server((host, port), family=family, backlog=128)
        self.port = self._socket.getsockname()[1]
        self._workers = concurrent.futures.ThreadPoolExecutor(max(1, num_threads), "rest")
        self._control = concurrent.futures.ThreadPoolExecutor(2, "rest-status")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rest", daemon=True)
        self._runner = self._listener = None

    # --- routes ---

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=self.limits.max_body_bytes)
        model = "/v1/models/{model:[^/:]+}"
        for suffix in ("", "/versions/{version:[0-9]+}", "/labels/{label:[^/:]+}"):
            app.router.add_get(model + suffix, self._status)
            app.router.add_get(model + suffix + "/metadata", self._metadata)
            app.router.add_post(model + suffix + ":{method:predict|classify|regress}",
                                self._infer)
        if self.api.metrics_path:
            app.router.add_get(self.api.metrics_path, self._metrics)
        app.router.add_route("*", "/{path:.*}", self._malformed)
        return app

    @staticmethod
    def _args(request: web.Request) -> dict:
        args = dict(request.match_info)
        if "version" in args:
            args["version"] = int(args["version"])
        return args

    async def _malformed(self, request: web.Request) -> web.Response:
        return _json_response({"error": f"Malformed request: {request.method} {request.path}"},
                              400 if request.path.startswith("/v1/") else 404)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.api.metrics.exposition(), content_type="text/plain",
                            charset="utf-8")

    async def _status(self, request: web.Request) -> web.Response:
        return await self._run(self._control, "status", self._args(request))

    async def _metadata(self, request: web.Request) -> web.Response:
        return await self._run(self._control, "metadata", self._args(request))

    async def _infer(self, request: web.Request) -> web.Response:
        arrived, limit = time.monotonic(), self.limits.max_body_bytes
        declared = request.content_length
        if declared is not None and declared > limit:    # refused before reading a byte of it
            return self._closing(_json_response(
                {"error": f"Request body of {declared} bytes is over the limit of {limit} bytes "
                          f"(--rest_api_max_body_bytes)"}, 413))
        held = limit if declared is None else declared     # chunked: up to the cap
        budget = self.api.budget
        try:
            if budget is not None:
                budget.reserve(held, "the request body")
        except ServingError as error:        # no room to buffer it now: refused unread
            return self._closing(_json_response({"error": error.message}, 429))
        try:
            try:
                async with asyncio.timeout(self.limits.body_timeout):
                    body = await request.read()
            except web.HTTPRequestEntityTooLarge:     # a chunked body that grew past the limit
                return self._closing(_json_response(
                    {"error": f"Request body is over the limit of {limit} bytes "
                              f"(--rest_api_max_body_bytes)"}, 413))
            except TimeoutError:
                return self._closing(_json_response(
                    {"error": f"Request body not received within "
                              f"{self.limits.body_timeout:g} s"}, 408))
            return await self._run(self._workers, "infer", self._args(request), body, arrived)
        finally:
            if budget is not None:
                budget.release(held)

    @staticmethod
    def _closing(response: web.Response) -> web.Response:
        response.force_close()      # the rest of the body is not read, so the connection ends
        return response

    async def _run(self, pool, endpoint: str, *args) -> web.Response:
        payload, status = await self._loop.run_in_executor(
            pool, self.api.handle, endpoint, *args)
        return _json_response(payload, status)

    # --- the connection limit and life cycle ---

    def _protocol(self):
        if len(self._runner.server.connections) >= self.limits.max_connections:
            return _Refused()
        return self._runner.server()

    async def _listen(self):
        # keepalive_timeout closes a connection that has not sent a whole header this long
        # after connecting or after its previous answer: aiohttp's header read timeout.
        self._runner = web.AppRunner(self._app(), access_log=None, handle_signals=False,
                                     keepalive_timeout=self.limits.header_timeout,
                                     lingering_time=1.0, shutdown_timeout=1.0)
        await self._runner.setup()
        self._listener = await self._loop.create_server(self._protocol, sock=self._socket)

    async def _close(self):
        # Let connections the kernel has already accepted get their transports first: asyncio
        # (3.13) cannot attach one to a closed server, and leaks it.
        for _ in range(3):
            await asyncio.sleep(0)
        self._listener.close()
        await self._runner.cleanup()
        self._listener.close_clients()      # _Refused ones too; then every transport detaches
        try:
            await asyncio.wait_for(self._listener.wait_closed(), 5)
        except TimeoutError:
            self._listener.abort_clients()

    def start(self):
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result()

    def stop(self):
        if self._listener is not None:
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self._workers.shutdown(wait=False, cancel_futures=True)
        self._control.shutdown(wait=False, cancel_futures=True)
