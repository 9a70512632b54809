"""A request's failure, as the gRPC status TF Serving would answer with."""
from __future__ import annotations

import grpc

# TensorFlow's error codes are gRPC's, number for number.
_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class ServingError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def from_tensorflow(error) -> ServingError:
    """A tf.errors.OpError raised inside a model call, without its graph trace."""
    lines = [line for line in error.message.split("\n\t [[")[0].splitlines() if line.strip()
             and not line.startswith(("Graph execution error", "Detected at node",
                                      "<stack traces unavailable>"))]
    message = " ".join(line.strip() for line in lines) or error.message
    return ServingError(_BY_NUMBER.get(error.error_code, grpc.StatusCode.INTERNAL), message)


def code_from_number(number: int) -> grpc.StatusCode:
    return _BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)
