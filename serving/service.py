"""TF Serving's gRPC services, implemented on the servicer classes of tensorflow-serving-api.

PredictionService: Predict, Classify, Regress, MultiInference, GetModelMetadata. ModelService: GetModelStatus, HandleReloadConfigRequest. Each failure is a
`ServingError` carrying the status code TF Serving answers with; the server keeps serving.
"""
from __future__ import annotations

import concurrent.futures
import contextvars
import logging
import os
import threading
import time

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import any_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    inference_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from cardio.serving.errors import ServingError

log = logging.getLogger("cardio.serve")
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
CLASSES, SCORES, OUTPUTS = "classes", "scores", "outputs"


def _model_spec(target, servable, signature_name: str):
    target.name = servable.name
    target.version.value = servable.version
    target.signature_name = signature_name or "serving_default"


def predict(servable, request: predict_pb2.PredictRequest,
            timeout: float | None = None) -> predict_pb2.PredictResponse:
    signature_name = request.model_spec.signature_name or "serving_default"
    signature = servable.signature(signature_name)
    for alias in request.output_filter:
        if alias not in signature.outputs:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"output tensor alias not found in signature: {alias} Outputs "
                               f"expected to be in the set {{{','.join(sorted(signature.outputs))}}}.")
    with servable.limits.admitted(request.inputs):
        inputs, rows = servable.validate(signature_name, request.inputs)
        outputs = _infer(servable, signature_name, inputs, rows, timeout)
        response = predict_pb2.PredictResponse()
        _model_spec(response.model_spec, servable, signature_name)
        for alias in request.output_filter or outputs:
            response.outputs[alias].CopyFrom(tf.make_tensor_proto(outputs[alias]))
    return response


# Set by `measured` for the request its thread runs: records each model run's latency.
_RUNTIME = contextvars.ContextVar("runtime_observer", default=None)


def _infer(servable, signature_name: str, inputs: dict, rows, timeout) -> dict:
    observe, started = _RUNTIME.get(), time.monotonic()
    outputs = servable.infer(signature_name, inputs, rows, timeout)
    if observe is not None:
        observe((time.monotonic() - started) * 1e6)
    return outputs


def _serialized_examples(request_input) -> list[bytes]:
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        examples = request_input.example_list.examples
    elif kind == "example_list_with_context":
        context = request_input.example_list_with_context.context
        examples = []
        for example in request_input.example_list_with_context.examples:
            merged = tf.train.Example()
            merged.CopyFrom(context)
            merged.MergeFrom(example)
            examples.append(merged)
    else:
        examples = []
    if not examples:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Input is empty.")
    return [e.SerializeToString() for e in examples]


def _run_examples(servable, signature_name: str, request_input, timeout) -> tuple[dict, int]:
    """Serialized Examples into a signature's one string input -> (outputs, rows)."""
    signature = servable.signature(signature_name)
    if len(signature.inputs) != 1:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Expected one input Tensor.")
    (alias,) = signature.inputs
    examples = _serialized_examples(request_input)
    proto = tf.make_tensor_proto(np.array(examples, dtype=object))
    with servable.limits.admitted({alias: proto}):
        inputs, rows = servable.validate(signature_name, {alias: proto}, check_dtypes=False)
        return _infer(servable, signature_name, inputs, rows, timeout), len(examples)


def _check_method(signature, expected: str, method_check: bool, what: str):
    if method_check and signature.method_name != expected:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"Expected {what} signature method_name to be {expected}. Was: "
                           f"{signature.method_name}")


def classification_result(servable, signature_name: str, request_input, method_check: bool,
                          timeout=None) -> classification_pb2.ClassificationResult:
    """Classify on a signature with one string input (serialized Examples) and `classes` and/or
    `scores` outputs; with the method-name check on, it must also be a classify signature."""
    signature = servable.signature(signature_name)
    _check_method(signature, CLASSIFY_METHOD, method_check, "classification")
    if len(signature.outputs) not in (1, 2) or not {CLASSES, SCORES} & set(signature.outputs):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"Expected classification signature outputs to contain at least one "
                           f"of {CLASSES} and {SCORES}; found {sorted(signature.outputs)}")
    outputs, rows = _run_examples(servable, signature_name, request_input, timeout)
    classes, scores = outputs.get(CLASSES), outputs.get(SCORES)
    for name, value in ((CLASSES, classes), (SCORES, scores)):
        if value is not None and (value.ndim != 2 or value.shape[0] != rows):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Expected Tensor shape: [{rows} num_classes] but got "
                               f"{list(value.shape)} for output {name!r}")
    result = classification_pb2.ClassificationResult()
    width = (classes if classes is not None else scores).shape[1]
    for i in range(rows):
        row = result.classifications.add()
        for j in range(width):
            entry = row.classes.add()
            if classes is not None:
                entry.label = classes[i, j].decode() if isinstance(classes[i, j], bytes) \
                    else str(classes[i, j])
            if scores is not None:
                entry.score = float(scores[i, j])
    return result


def regression_result(servable, signature_name: str, request_input, method_check: bool,
                      timeout=None) -> regression_pb2.RegressionResult:
    """Regress on a signature with one string input and one `outputs` output of shape [rows]
    or [rows, 1], as TF Serving's TensorFlowRegressor requires."""
    signature = servable.signature(signature_name)
    _check_method(signature, REGRESS_METHOD, method_check, "regression")
    if OUTPUTS not in signature.outputs:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"No output Tensor with name {OUTPUTS}.")
    outputs, rows = _run_examples(servable, signature_name, request_input, timeout)
    values = outputs[OUTPUTS]
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1 or values.shape[0] != rows:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"Expected output Tensor shape to be either [batch_size] or "
                           f"[batch_size, 1] but got {list(outputs[OUTPUTS].shape)}")
    result = regression_pb2.RegressionResult()
    for value in values:
        result.regressions.add(value=float(value))
    return result


def classify(servable, request: classification_pb2.ClassificationRequest, method_check: bool,
             timeout=None) -> classification_pb2.ClassificationResponse:
    signature_name = request.model_spec.signature_name or "serving_default"
    response = classification_pb2.ClassificationResponse()
    response.result.CopyFrom(classification_result(servable, signature_name, request.input,
                                                   method_check, timeout))
    _model_spec(response.model_spec, servable, signature_name)
    return response


def regress(servable, request: regression_pb2.RegressionRequest, method_check: bool,
            timeout=None) -> regression_pb2.RegressionResponse:
    signature_name = request.model_spec.signature_name or "serving_default"
    response = regression_pb2.RegressionResponse()
    response.result.CopyFrom(regression_result(servable, signature_name, request.input,
                                               method_check, timeout))
    _model_spec(response.model_spec, servable, signature_name)
    return response


def multi_inference(manager, request: inference_pb2.MultiInferenceRequest, timeout=None,
                    method_check: bool = False) -> inference_pb2.MultiInferenceResponse:
    """Several classify/regress signatures of one model over the same Examples, with TF
    Serving's checks (servables/tensorflow/multi_inference.cc: one model, no signature twice,
    the task's method classify or regress; the signature's own method_name only with
    --enable_signature_method_name_check, so a TF2 model's `predict`-method signatures are
    accepted as TF Serving accepts them)."""
    if not request.tasks:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Expected at least one task")
    names, seen = {task.model_spec.name for task in request.tasks}, set()
    if len(names) != 1:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           "All ModelSpecs in a MultiInferenceRequest must access the same model "
                           "name")
    servable = manager.resolve(request.tasks[0].model_spec)
    response = inference_pb2.MultiInferenceResponse()
    for task in request.tasks:
        signature_name = task.model_spec.signature_name or "serving_default"
        if signature_name in seen:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Duplicate evaluation of signature: {signature_name}")
        seen.add(signature_name)
        if signature_name not in servable.signature_defs:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Requested signature not found in model graph: {signature_name}")
        result = response.results.add()
        _model_spec(result.model_spec, servable, signature_name)
        if task.method_name == CLASSIFY_METHOD:
            result.classification_result.CopyFrom(classification_result(
                servable, signature_name, request.input, method_check, timeout))
        elif task.method_name == REGRESS_METHOD:
            result.regression_result.CopyFrom(regression_result(
                servable, signature_name, request.input, method_check, timeout))
        else:
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                               f"Unsupported signature method_name: {task.method_name}")
    return response


def model_metadata(servable, request) -> get_model_metadata_pb2.GetModelMetadataResponse:
    if not request.metadata_field:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           "GetModelMetadataRequest must specify at least one metadata_field")
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    _model_spec(response.model_spec, servable, "")
    response.model_spec.ClearField("signature_name")
    for field in request.metadata_field:
        if field != "signature_def":
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Metadata field {field} is not supported")
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for name, signature in servable.signature_defs.items():
            signatures.signature_def[name].CopyFrom(signature)
        packed = any_pb2.Any()
        packed.Pack(signatures)
        response.metadata["signature_def"].CopyFrom(packed)
    return response


def measured(metrics, api: str, entrypoint: str, model_name: str, call):
    """Runs one request and records its count and latency (when metrics are on): the version
    is the one that answered (from the response's model_spec), empty when none did."""
    started, code, response = time.monotonic(), grpc.StatusCode.OK, None
    token = _RUNTIME.set(None if metrics is None else
                         lambda micros: metrics.runtime(model_name, api, micros))
    try:
        response = call()
        return response
    except ServingError as error:
        code = error.code
        raise
    except Exception:
        code = grpc.StatusCode.INTERNAL
        raise
    finally:
        _RUNTIME.reset(token)
        if metrics is not None:
            spec = getattr(response, "model_spec", None)
            if spec is None and getattr(response, "results", None):
                spec = response.results[0].model_spec      # MultiInference
            metrics.observe(model_name, spec.version.value if spec else "", api, entrypoint,
                            code, started)


def model_status(manager, model_spec) -> get_model_status_pb2.GetModelStatusResponse:
    """Each version's state and status (OK, or why its load failed), as TF Serving fills it."""
    response = get_model_status_pb2.GetModelStatusResponse()
    for version, status in manager.statuses(model_spec):
        entry = response.model_version_status.add(version=version, state=status.state)
        entry.status.error_code = status.error.code.value[0] if status.error else 0
        entry.status.error_message = status.error.message if status.error else ""
    return response


def _answer(context, call):
    """Runs one request; a ServingError becomes its gRPC status (the server keeps serving)."""
    try:
        return call()
    except ServingError as error:
        context.abort(error.code, error.message)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager, method_check: bool = False, metrics=None):
        self.manager, self.method_check, self.metrics = manager, method_check, metrics

    def _serve(self, api: str, request, context, call):
        model = (request.tasks[0].model_spec.name if api == "MultiInference" and request.tasks
                 else getattr(request, "model_spec", None) and request.model_spec.name) or ""
        return _answer(context, lambda: measured(self.metrics, api, "GRPC", model, call))

    def Predict(self, request, context):
        return self._serve("predict", request, context, lambda: predict(
            self.manager.resolve(request.model_spec), request, context.time_remaining()))

    def Classify(self, request, context):
        return self._serve("classify", request, context, lambda: classify(
            self.manager.resolve(request.model_spec), request, self.method_check,
            context.time_remaining()))

    def Regress(self, request, context):
        return self._serve("regress", request, context, lambda: regress(
            self.manager.resolve(request.model_spec), request, self.method_check,
            context.time_remaining()))

    def MultiInference(self, request, context):
        return self._serve("MultiInference", request, context, lambda: multi_inference(
            self.manager, request, context.time_remaining(), self.method_check))

    def GetModelMetadata(self, request, context):
        return self._serve("GetModelMetadata", request, context, lambda: model_metadata(
            self.manager.resolve(request.model_spec), request))


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager, allow_reload: bool = True, allowed_roots: tuple = ()):
        """`allow_reload` False refuses HandleReloadConfigRequest; `allowed_roots` (when given)
        refuses a config naming a base path outside them (anyone who reaches the port could
        otherwise make the server load a SavedModel, i.e. run its graph, from anywhere)."""
        self.manager, self.allow_reload = manager, allow_reload
        self.allowed_roots = tuple(_normalised(root) for root in allowed_roots)
        self._waiting = threading.Lock()      # held by the one reload request waiting
        self._reloads = concurrent.futures.ThreadPoolExecutor(1, "reload")

    def GetModelStatus(self, request, context):
        return _answer(context, lambda: model_status(self.manager, request.model_spec))

    def check_reload(self, config):
        if not self.allow_reload:
            raise ServingError(grpc.StatusCode.PERMISSION_DENIED,
                               "HandleReloadConfigRequest is disabled on this server "
                               "(--allow_reload_config_request=false)")
        if self.allowed_roots:
            for model in config.model_config_list.config:
                path = _normalised(model.base_path)
                if not any(path.startswith(root) for root in self.allowed_roots):
                    raise ServingError(grpc.StatusCode.PERMISSION_DENIED,
                                       f"model {model.name}: base_path {model.base_path} is "
                                       f"outside --reload_config_allowed_roots")

    def HandleReloadConfigRequest(self, request, context):
        """Answered once the new config's models are loaded (as TF Serving). The loads run on
        the reload thread, and one request at a time waits for them (the server keeps a gRPC
        worker spare for it): a reload never holds a Predict worker, and a second reload while
        one waits is answered UNAVAILABLE at once."""
        response = model_management_pb2.ReloadConfigResponse()
        try:
            self.check_reload(request.config)
        except ServingError as error:
            context.abort(error.code, error.message)
        if not self._waiting.acquire(blocking=False):
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          "Another HandleReloadConfigRequest is in progress; retry once it is "
                          "answered")
        try:
            self.manager.set_config(request.config)
            loads = self._reloads.submit(self.manager.reconcile)
            try:
                loads.result(timeout=context.time_remaining())
            except concurrent.futures.TimeoutError:
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                              "Deadline exceeded before the new config's models were loaded; "
                              "they go on loading")
        except ValueError as error:
            response.status.error_code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
            response.status.error_message = str(error)
        finally:
            self._waiting.release()
        return response


def _normalised(path: str) -> str:
    """A base path compared as what it names: a local one with symlinks resolved
    (os.path.realpath), so a link inside an allowed root that points outside is outside; `..`
    and `.` resolved in any scheme's, so `root/../elsewhere` is not under `root`."""
    import posixpath
    scheme, sep, rest = path.partition("://")
    if not sep:
        return os.path.realpath(path).rstrip("/") + "/"
    return f"{scheme}://{posixpath.normpath('/' + rest).lstrip('/')}/"
