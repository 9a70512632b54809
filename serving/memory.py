"""The memory `cardio serve` may use, the caps derived from it, and the budget requests share.

    M         --memory_limit_bytes; 0: the CARDIO_SERVE_MEMORY_LIMIT_BYTES environment variable
              (kubernetes/base/deployment.yaml sets it from the pod's limits.memory), else the
              cgroup's memory limit, else the machine's physical memory
    idle      the server's resident memory once its initial models are loaded
    budget    M - idle - M / 4: what all requests in flight may hold at once once expanded
              (M / 4 is headroom: received gRPC messages, allocator slack, later loads);
              at least M / 16
    per tensor (--max_tensor_bytes): budget / (2 x COPIES), so one request holds at most half
    gRPC message (grpc.max_receive_message_length): budget / (2 x --grpc_max_concurrent_rpcs),
              at most 2 GiB - 1 (gRPC's own maximum)
    REST body (--rest_api_max_body_bytes): budget / 16

Before a request is expanded (tensors built from their protos, a REST body read and parsed)
it reserves its estimated size from the budget and gives it back when answered; a request
that does not fit in what is left is refused with RESOURCE_EXHAUSTED (HTTP 429) before it
allocates anything. COPIES is measured (`python -m benchmarks serving-memory`): an input
tensor is held about six times over while it runs (its ndarray, the tensor fed to the model,
the output, the output's ndarray, TensorProto and serialized response).
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


COPIES = 6
GRPC_MAX = (1 << 31) - 1      # gRPC's message limits are C ints


def derived(limit: int, idle: int, concurrent_rpcs: int) -> dict[str, int]:
    """The caps the module docstring's formula gives for a memory limit of `limit` bytes and
    an idle resident size of `idle` bytes."""
    budget = max(limit - idle - limit // 4, limit // 16)
    return {"budget": budget, "max_tensor_bytes": budget // (2 * COPIES),
            "max_message_bytes": min(budget // (2 * max(concurrent_rpcs, 1)), GRPC_MAX),
            "rest_api_max_body_bytes": budget // 16}


def resident() -> int:
    """This process's resident memory, in bytes."""
    return psutil.Process().memory_info().rss
