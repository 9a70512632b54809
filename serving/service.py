"""TF Serving's gRPC services, implemented on the servicer classes of tensorflow-serving-api.

PredictionService: Predict, Classify, GetModelMetadata (Regress and MultiInference answer
UNIMPLEMENTED). ModelService: GetModelStatus, HandleReloadConfigRequest. Each failure is a
`ServingError` carrying the status code TF Serving answers with; the server keeps serving.
"""
from __future__ import annotations

import logging

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import any_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from cardio.serving.errors import ServingError

log = logging.getLogger("cardio.serve")
CLASSIFY_METHOD = "tensorflow/serving/classify"
CLASSES, SCORES = "classes", "scores"


def _model_spec(target, servable, signature_name: str):
    target.name = servable.name
    target.version.value = servable.version
    target.signature_name = signature_name or "serving_default"


def predict(servable, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
    signature_name = request.model_spec.signature_name or "serving_default"
    signature = servable.signature(signature_name)
    for alias in request.output_filter:
        if alias not in signature.outputs:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"output tensor alias not found in signature: {alias} Outputs "
                               f"expected to be in the set {{{','.join(sorted(signature.outputs))}}}.")
    inputs, rows = servable.validate(signature_name, request.inputs)
    outputs = servable.infer(signature_name, inputs, rows)
    response = predict_pb2.PredictResponse()
    _model_spec(response.model_spec, servable, signature_name)
    for alias in request.output_filter or outputs:
        response.outputs[alias].CopyFrom(tf.make_tensor_proto(outputs[alias]))
    return response


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


def classify(servable, request: classification_pb2.ClassificationRequest,
             method_check: bool) -> classification_pb2.ClassificationResponse:
    """Classify on a signature with one string input (serialized Examples) and `classes` and/or
    `scores` outputs; with the method-name check on, it must also be a classify signature."""
    signature_name = request.model_spec.signature_name or "serving_default"
    signature = servable.signature(signature_name)
    if method_check and signature.method_name != CLASSIFY_METHOD:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"Expected classification signature method_name to be "
                           f"{CLASSIFY_METHOD}. Was: {signature.method_name}")
    if len(signature.inputs) != 1:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Expected one input Tensor.")
    if len(signature.outputs) not in (1, 2) or not {CLASSES, SCORES} & set(signature.outputs):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"Expected classification signature outputs to contain at least one "
                           f"of {CLASSES} and {SCORES}; found {sorted(signature.outputs)}")
    (alias,) = signature.inputs
    examples = _serialized_examples(request.input)
    proto = tf.make_tensor_proto(np.array(examples, dtype=object))
    inputs, rows = servable.validate(signature_name, {alias: proto})
    outputs = servable.infer(signature_name, inputs, rows)
    classes, scores = outputs.get(CLASSES), outputs.get(SCORES)
    for name, value in ((CLASSES, classes), (SCORES, scores)):
        if value is not None and (value.ndim != 2 or value.shape[0] != rows):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Expected Tensor shape: [{rows} num_classes] but got "
                               f"{list(value.shape)} for output {name!r}")
    response = classification_pb2.ClassificationResponse()
    _model_spec(response.model_spec, servable, signature_name)
    width = (classes if classes is not None else scores).shape[1]
    for i in range(rows):
        row = response.result.classifications.add()
        for j in range(width):
            entry = row.classes.add()
            if classes is not None:
                entry.label = classes[i, j].decode() if isinstance(classes[i, j], bytes) \
                    else str(classes[i, j])
            if scores is not None:
                entry.score = float(scores[i, j])
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


def _answer(context, call):
    """Runs one request; a ServingError becomes its gRPC status (the server keeps serving)."""
    try:
        return call()
    except ServingError as error:
        context.abort(error.code, error.message)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager, method_check: bool = False):
        self.manager, self.method_check = manager, method_check

    def Predict(self, request, context):
        return _answer(context, lambda: predict(self.manager.resolve(request.model_spec), request))

    def Classify(self, request, context):
        return _answer(context, lambda: classify(self.manager.resolve(request.model_spec),
                                                 request, self.method_check))

    def GetModelMetadata(self, request, context):
        return _answer(context, lambda: model_metadata(self.manager.resolve(request.model_spec),
                                                       request))


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager):
        self.manager = manager

    def GetModelStatus(self, request, context):
        def call():
            response = get_model_status_pb2.GetModelStatusResponse()
            for version, status in self.manager.statuses(request.model_spec):
                entry = response.model_version_status.add(version=version, state=status.state)
                if status.error is not None:
                    entry.status.error_code = status.error.code.value[0]
                    entry.status.error_message = status.error.message
            return response
        return _answer(context, call)

    def HandleReloadConfigRequest(self, request, context):
        response = model_management_pb2.ReloadConfigResponse()
        try:
            self.manager.set_config(request.config)
            self.manager.reconcile()
        except ValueError as error:
            response.status.error_code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
            response.status.error_message = str(error)
        return response
