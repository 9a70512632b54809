"""Server-side batching across clients, the way TF Serving's batching session does it.

Requests for the same signature queue up; a batch closes when it holds `max_batch_size` rows or
`batch_timeout_micros` after its first request arrived, runs as one model call on one of
`num_batch_threads` threads, and each request gets its own rows back. A request larger than
`max_batch_size`, or a full queue, is refused with TF Serving's status codes. Unlike TF
Serving, a batch whose call fails is retried request by request, so one client's undecodable
image never fails another client's request. Every request is answered: an unexpected exception
fails its batch's requests with INTERNAL (the batch thread lives on), and a request waits at
most its deadline (DEADLINE_EXCEEDED).
"""
from __future__ import annotations

import concurrent.futures
import logging
import threading
import time

import grpc
import numpy as np

from cardio.serving.config import BatchingConfig
from cardio.serving.errors import ServingError

log = logging.getLogger("cardio.serve")
DEFAULT_DEADLINE = 600.0     # seconds a request without a deadline of its own may wait


class _Task:
    def __init__(self, signature: str, inputs: dict, rows: int):
        self.signature, self.inputs, self.rows = signature, inputs, rows
        self.key = (signature, tuple(sorted(inputs)))
        self.arrived = time.monotonic()
        self.future = concurrent.futures.Future()


class Batcher:
    def __init__(self, run, config: BatchingConfig, name: str):
        """`run(signature, inputs) -> outputs` is the model call; inputs and outputs are
        {name: np.ndarray} with the batch as the first dimension."""
        self._run, self.config, self.name = run, config, name
        self._pending: list[_Task] = []
        self._cv = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"batch-{name}-{i}", daemon=True)
                         for i in range(max(1, config.num_batch_threads))]
        for thread in self._threads:
            thread.start()

    def submit(self, signature: str, inputs: dict, rows: int, timeout: float | None = None) -> dict:
        if rows > self.config.max_batch_size:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Task size {rows} is larger than maximum input batch size "
                               f"{self.config.max_batch_size}")
        task = _Task(signature, inputs, rows)
        with self._cv:
            closed = self._closed
            if not closed:
                queued = sum(t.rows for t in self._pending)
                if queued + rows > self.config.max_enqueued_batches * self.config.max_batch_size:
                    raise ServingError(grpc.StatusCode.UNAVAILABLE,
                                       "The batch scheduling queue to which this task was "
                                       "submitted is full")
                self._pending.append(task)
                self._cv.notify_all()
        if closed:   # the version is being unloaded: a late request is still served, unbatched
            return self._run(signature, inputs)
        try:
            return task.future.result(timeout=DEFAULT_DEADLINE if timeout is None else timeout)
        except concurrent.futures.TimeoutError:
            with self._cv:
                if task in self._pending:
                    self._pending.remove(task)
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               "Deadline exceeded waiting for the batch to run") from None

    def close(self):
        """Runs what is queued, then stops the threads (the version is being unloaded)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def _next_batch(self) -> list[_Task] | None:
        timeout = self.config.batch_timeout_micros / 1e6
        with self._cv:
            while True:
                if self._pending:
                    first = self._pending[0]
                    same = [t for t in self._pending if t.key == first.key]
                    rows = sum(t.rows for t in same)
                    wait = first.arrived + timeout - time.monotonic()
                    if rows >= self.config.max_batch_size or wait <= 0 or self._closed:
                        batch, total = [], 0
                        for task in same:
                            if total + task.rows > self.config.max_batch_size:
                                break
                            batch.append(task)
                            total += task.rows
                        for task in batch:
                            self._pending.remove(task)
                        return batch
                    self._cv.wait(wait)
                elif self._closed:
                    return None
                else:
                    self._cv.wait()

    def _work(self):
        while (batch := self._next_batch()) is not None:
            try:
                results = self._answers(batch)
            except Exception as error:    # never leave a request waiting, nor the thread dead
                log.exception("batch of %d requests on %s failed", len(batch), self.name)
                results = [ServingError(grpc.StatusCode.INTERNAL,
                                        f"{type(error).__name__}: {error}")] * len(batch)
            for task, result in zip(batch, results):
                if task.future.done():
                    continue
                if isinstance(result, Exception):
                    task.future.set_exception(result)
                else:
                    task.future.set_result(result)

    def _answers(self, batch: list[_Task]) -> list:
        """One result or ServingError per request of the batch."""
        try:
            return self._run_batch(batch)
        except ServingError as error:
            if len(batch) == 1:
                return [error]
        results = []
        for task in batch:     # find the request at fault; the others still get answers
            try:
                results.append(self._run_batch([task])[0])
            except ServingError as task_error:
                results.append(task_error)
        return results

    def _padded_size(self, rows: int) -> int:
        return next((size for size in self.config.allowed_batch_sizes if size >= rows), rows)

    def _run_batch(self, batch: list[_Task]) -> list[dict]:
        total = sum(t.rows for t in batch)
        padding = self._padded_size(total) - total
        inputs = {}
        for name in batch[0].inputs:
            parts = [t.inputs[name] for t in batch]
            if padding:   # pad to an allowed batch size by repeating the first row
                parts.append(np.repeat(parts[0][:1], padding, axis=0))
            inputs[name] = np.concatenate(parts, axis=0)
        outputs = self._run(batch[0].signature, inputs)
        results, start = [], 0
        for task in batch:
            part = {}
            for name, value in outputs.items():
                if value.ndim == 0 or value.shape[0] != total + padding:
                    raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                                       f"Batched output tensor {name!r} has shape {value.shape}; "
                                       f"its 0th dimension must be the batch size "
                                       f"{total + padding}")
                part[name] = value[start:start + task.rows]
            results.append(part)
            start += task.rows
        return results
