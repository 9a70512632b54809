"""The REST server under hostile clients: stalled and oversized bodies, slow headers and too
many connections hold connections, never workers, and are cut off by the server's limits."""
from __future__ import annotations

import base64
import socket
import threading
import time

import psutil
import pytest
from serving_helpers import export_version, http, png, start_cardio

MODEL = "cardio-tiny"
MAX_BODY = 1 << 20
MAX_CONNECTIONS = 48


@pytest.fixture(scope="module")
def rest(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    export_version(str(tmp_path_factory.mktemp("exports")), str(root), MODEL, 1, seed=0)
    running = start_cardio([f"--model_base_path={root}/{MODEL}", f"--model_name={MODEL}",
                            "--rest_api_port=-1", "--rest_api_num_threads=4",
                            f"--rest_api_max_body_bytes={MAX_BODY}",
                            "--rest_api_header_timeout_in_ms=1000",
                            "--rest_api_body_timeout_in_ms=3000",
                            f"--rest_api_max_connections={MAX_CONNECTIONS}"])
    yield running
    running.stop()


def _connect(running) -> socket.socket:
    host, port = running.rest.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _stalled(running, declared: int = 1000, sent: int = 10) -> socket.socket:
    """A predict whose header announces `declared` body bytes, of which `sent` arrive."""
    s = _connect(running)
    s.sendall(f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\nContent-Type: "
              f"application/json\r\nContent-Length: {declared}\r\n\r\n".encode() + b"{" * sent)
    return s


def _answer(s: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection."""
    s.settimeout(timeout)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def _assert_serving(running, within: float):
    predict = {"instances": [{"b64": base64.b64encode(png(0)).decode()}]}
    for method, path, body in (("GET", f"/v1/models/{MODEL}", None),
                               ("GET", f"/v1/models/{MODEL}/versions/1", None),   # readiness
                               ("POST", f"/v1/models/{MODEL}:predict", predict)):
        started = time.monotonic()
        status, answer = http(method, running.rest + path, body, timeout=10)
        assert status == 200, answer
        assert time.monotonic() - started < within, (path, time.monotonic() - started)


def test_stalled_bodies_hold_connections_not_workers_and_time_out(rest):
    stalled = [_stalled(rest) for _ in range(32)]      # 8 of these took Werkzeug's API down
    try:
        time.sleep(0.2)
        _assert_serving(rest, within=2)
        started = time.monotonic()
        answers = [_answer(s, timeout=10) for s in stalled]
        assert all(a.startswith(b"HTTP/1.1 408") for a in answers), answers[0]
        assert time.monotonic() - started < 6       # --rest_api_body_timeout_in_ms=3000
    finally:
        for s in stalled:
            s.close()


def test_a_slow_header_is_cut_off_by_the_header_timeout(rest):
    with _connect(rest) as s:
        s.sendall(b"POST /v1/models/x:predict HTTP/1.1\r\nHost: x\r\n")   # never finished
        started = time.monotonic()
        assert _answer(s, timeout=10) == b""
        assert time.monotonic() - started < 4       # --rest_api_header_timeout_in_ms=1000


def test_a_body_over_the_cap_is_refused_before_it_is_read(rest):
    process = psutil.Process()
    before = process.memory_info().rss
    # Declared: answered 413 from the header, none of the 256 MiB is sent or read.
    with _stalled(rest, declared=256 << 20, sent=0) as s:
        answer = _answer(s, timeout=10)
    assert answer.startswith(b"HTTP/1.1 413") and b"--rest_api_max_body_bytes" in answer
    # Chunked (no length to judge by): reading stops at the cap while the client sends 64 MiB.
    with _connect(rest) as s:
        s.sendall(f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\n"
                  f"Transfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"%x\r\n%s\r\n" % (1 << 20, b"[" * (1 << 20))
        peak = [before]

        def send():
            try:
                for _ in range(64):
                    s.sendall(chunk)
                    peak[0] = max(peak[0], process.memory_info().rss)
            except OSError:
                pass    # the server answered and closed

        sender = threading.Thread(target=send)
        sender.start()
        answer = _answer(s, timeout=10)
        sender.join(10)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    grown = (max(peak[0], process.memory_info().rss) - before) / 2**20
    assert grown < 24, f"server grew by {grown:.1f} MiB"
    _assert_serving(rest, within=2)


def test_connections_past_the_limit_are_answered_503_until_some_close(rest):
    idle = [_connect(rest) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)
        with _connect(rest) as extra:
            answer = _answer(extra, timeout=5)
        assert answer.startswith(b"HTTP/1.1 503") and b"--rest_api_max_connections" in answer
    finally:
        for s in idle:
            s.close()
    time.sleep(0.2)
    _assert_serving(rest, within=2)


def test_routes_and_error_mapping_are_kept(rest):
    assert http("GET", f"{rest.rest}/v1/nothing")[0] == 400
    assert http("GET", f"{rest.rest}/elsewhere")[0] == 404
    assert http("POST", f"{rest.rest}/v1/models/{MODEL}")[1] == {
        "error": f"Malformed request: POST /v1/models/{MODEL}"}
    status, body = http("POST", f"{rest.rest}/v1/models/{MODEL}:predict", {"nothing": 1})
    assert status == 400 and "instances" in body["error"]
    status, body = http("GET", f"{rest.rest}/v1/models/absent")
    assert status == 404 and "absent" in body["error"]
    with _connect(rest) as s:      # nested past Python's recursion limit: a parse error
        body = b"[" * 100_000
        s.sendall(f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\nConnection: close"
                  f"\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        answer = _answer(s, timeout=10)
    assert answer.startswith(b"HTTP/1.1 400") and b"JSON Parse error" in answer, answer[:300]
