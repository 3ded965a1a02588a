"""Queueing, cancellation on disconnect and chat-template fallback, over real sockets."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time

import requests

from runtime.config import EngineConfig
from runtime.engine import Engine, Job
from tests.conftest import NO_EOS, live_server

LONG = {"messages": [{"role": "user", "content": "tell me everything"}], "max_tokens": 3800,
        "logit_bias": NO_EOS}


def open_request(port: int, path: str, body: dict) -> socket.socket:
    """Send a POST on a raw socket and leave the response unread, as a browser tab would."""
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return sock


def read_until(sock: socket.socket, marker: bytes, count: int) -> bytes:
    data = b""
    while data.count(marker) < count:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed early: {data[-300:]!r}"
        data += chunk
    return data


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_stream_stops_when_the_client_disconnects(idle_server):
    sock = open_request(idle_server.thread.port, "/v1/chat/completions", {**LONG, "stream": True})
    read_until(sock, b"data: ", 20)
    assert idle_server.engine.busy
    sock.close()
    delay = idle_server.wait_idle(timeout=5)
    stats = idle_server.engine.last_stats
    assert stats.finish == "cancelled", stats
    assert stats.completion_tokens < 3000
    assert delay < 0.5, f"generation ran on for {delay:.3f}s after the client left"


def test_non_streaming_request_stops_when_the_client_disconnects(idle_server):
    sock = open_request(idle_server.thread.port, "/v1/chat/completions", LONG)
    wait_for(lambda: idle_server.engine.busy)
    time.sleep(0.05)
    sock.close()
    delay = idle_server.wait_idle(timeout=5)
    assert idle_server.engine.last_stats.finish == "cancelled"
    assert delay < 0.5


def test_full_queue_answers_503_with_retry_after_and_recovers(tiny_model):
    with live_server(tiny_model, max_queue=1) as srv:
        running = open_request(srv.thread.port, "/v1/chat/completions", {**LONG, "stream": True})
        read_until(running, b"data: ", 3)
        waiting = open_request(srv.thread.port, "/v1/chat/completions", {**LONG, "stream": True})
        wait_for(lambda: srv.engine.queued == 1)
        r = srv.post("/v1/chat/completions", {"messages": LONG["messages"], "max_tokens": 2})
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "queue_full"
        assert int(r.headers["Retry-After"]) >= 1
        running.close()
        waiting.close()
        srv.wait_idle(timeout=5)
        ok = srv.post("/v1/chat/completions", {"messages": LONG["messages"], "max_tokens": 2})
        assert ok.status_code == 200


def test_jobs_run_one_at_a_time_in_arrival_order(tiny_model):
    engine = Engine(EngineConfig(model_path=str(tiny_model), max_queue=8))
    engine.load()
    try:
        finished: list[int] = []

        def run(i: int) -> None:
            job = engine.submit(Job("completion", {"prompt": f"job {i}", "max_tokens": 40, "logit_bias": NO_EOS},
                                    stream=True))
            for _ in job.events():
                pass
            finished.append(i)

        threads = []
        for i in range(5):
            threads.append(threading.Thread(target=run, args=(i,)))
            threads[-1].start()
            wait_for(lambda i=i: engine.queued + engine.busy + len(finished) >= i + 1)
        for t in threads:
            t.join(30)
        assert finished == [0, 1, 2, 3, 4]
        assert engine.jobs_done == 5
    finally:
        engine.close()


def test_shutdown_ends_an_open_stream(tiny_model):
    with live_server(tiny_model) as srv:
        sock = open_request(srv.thread.port, "/v1/chat/completions", {**LONG, "stream": True})
        read_until(sock, b"data: ", 5)
        t0 = time.perf_counter()
        srv.engine.close()
        assert time.perf_counter() - t0 < 2
        assert srv.engine.last_stats.finish == "cancelled"
        sock.close()


def test_gguf_without_template_falls_back_to_chatml_and_says_so(tiny_model_no_template, caplog):
    caplog.set_level(logging.INFO, logger="furoshiki")
    with live_server(tiny_model_no_template) as srv:
        assert srv.engine.info.chat_format == "chatml"
        assert any("no chat template" in r.message and "chatml" in r.message for r in caplog.records)
        r = srv.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert r.status_code == 200
        assert srv.get("/props").json()["chat_template"] == ""


def test_requests_wait_their_turn_instead_of_failing(idle_server):
    results: list[int] = []

    def ask() -> None:
        r = requests.post(idle_server.url + "/v1/chat/completions",
                          json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 50,
                                "logit_bias": NO_EOS}, timeout=30)
        results.append(r.status_code)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [200] * 4
