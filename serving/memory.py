"""The memory `cardio serve` may use, the caps derived from it, and the budget requests share.

    M         --memory_limit_bytes; 0: the CARDIO_SERVE_MEMORY_LIMIT_BYTES environment variable
              (kubernetes/base/deployment.yaml sets it from the pod's limits.memory), else the
              cgroup's memory limit, else the machine's physical memory
    budget    M / 2: what all requests in flight may hold at once once expanded (the other half
              is for the loaded models, TensorFlow's runtime and the model runs' activations)
    per request (--max_tensor_bytes, a REST body's expansion): budget / 4
    gRPC message (grpc.max_receive_message_length): M / (8 x --grpc_max_concurrent_rpcs), so that
              messages received before any check (and their parsed copies) hold at most M / 4
    REST body (--rest_api_max_body_bytes): budget / 16

Before a request is expanded (tensors built from their protos, a REST body read and parsed)
it reserves its estimated size from the budget and gives it back when answered; a request
that does not fit in what is left is refused with RESOURCE_EXHAUSTED (HTTP 429) before it
allocates anything. A caller sees only a server that is busy, never one killed for memory.
"""
from __future__ import annotations

import contextlib
import os
import threading

import grpc
import psutil

from cardio.serving.errors import ServingError

ENV = "CARDIO_SERVE_MEMORY_LIMIT_BYTES"
_CGROUP_FILES = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
# A cgroup v1 "no limit" reads as a huge number (near 2^63): anything past this is none.
_NO_LIMIT = 1 << 60


def _cgroup_limit() -> int | None:
    for path in _CGROUP_FILES:
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < _NO_LIMIT:
            return int(text)
    return None


def memory_limit(flag: int = 0) -> tuple[int, str]:
    """(bytes the server may use, where that figure came from)."""
    if flag > 0:
        return flag, "--memory_limit_bytes"
    if os.environ.get(ENV, "").strip().isdigit() and int(os.environ[ENV]) > 0:
        return int(os.environ[ENV]), ENV
    physical = psutil.virtual_memory().total
    cgroup = _cgroup_limit()
    if cgroup is not None and cgroup < physical:
        return cgroup, "the cgroup memory limit"
    return physical, "physical memory"


class Budget:
    """Bytes shared by the requests in flight: each holds its estimate while it runs."""

    def __init__(self, total: int):
        self.total, self.used = total, 0
        self._lock = threading.Lock()

    def reserve(self, nbytes: int, what: str):
        with self._lock:
            if self.used + nbytes > self.total:
                left = self.total - self.used
                raise ServingError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{what} needs about {nbytes} bytes of memory; {max(left, 0)} of the "
                    f"{self.total} bytes for requests in flight are free (--memory_limit_bytes)")
            self.used += nbytes

    def release(self, nbytes: int):
        with self._lock:
            self.used -= nbytes

    @contextlib.contextmanager
    def held(self, nbytes: int, what: str):
        self.reserve(nbytes, what)
        try:
            yield
        finally:
            self.release(nbytes)


def derived(limit: int, concurrent_rpcs: int) -> dict[str, int]:
    """The caps the module docstring's formula gives for a memory limit of `limit` bytes."""
    budget = limit // 2
    return {"budget": budget, "max_tensor_bytes": budget // 4,
            "max_message_bytes": limit // (8 * max(concurrent_rpcs, 1)),
            "rest_api_max_body_bytes": budget // 16}
