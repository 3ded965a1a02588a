"""Shared fixtures: a tiny real GGUF, a real engine, and live servers on loopback."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from runtime.app import create_app
from runtime.config import EngineConfig, ServerConfig
from runtime.engine import Engine
from runtime.server import ServerThread
from tests.tiny_gguf import TinyModelSpec, write_tiny_gguf

# The ChatML end-of-turn token of the tiny model. Tests that need a long
# generation bias it away, since random weights end whenever they like.
NO_EOS = {"4": -100}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("models") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_model_no_template(tmp_path_factory) -> Path:
    spec = TinyModelSpec(chat_template=None, name="tiny-no-template")
    return write_tiny_gguf(tmp_path_factory.mktemp("models") / "tiny-no-template.gguf", spec)


class LiveServer:
    """A real waitress server on 127.0.0.1 with a real engine behind it."""

    def __init__(self, engine: Engine, config: ServerConfig, max_queue: int):
        self.engine = engine
        self.thread = ServerThread(create_app(config, engine), config, max_queue)
        # Port 0 picked a free port; the app must know it for same-origin checks.
        self.config = ServerConfig(**{**config.__dict__, "port": self.thread.port})
        self.thread.server.application = create_app(self.config, engine)
        self.url = f"http://127.0.0.1:{self.thread.port}"
        self.thread.start()

    def post(self, path: str, body: dict, **kwargs) -> requests.Response:
        return requests.post(self.url + path, json=body, timeout=kwargs.pop("timeout", 30), **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, timeout=kwargs.pop("timeout", 30), **kwargs)

    def wait_idle(self, timeout: float = 10.0) -> float:
        """Seconds until the engine has no running or queued job."""
        start = time.perf_counter()
        while self.engine.busy or self.engine.queued:
            if time.perf_counter() - start > timeout:
                raise AssertionError("the engine is still generating")
            time.sleep(0.002)
        return time.perf_counter() - start

    def stop(self) -> None:
        self.engine.close()
        self.thread.stop()


@contextlib.contextmanager
def live_server(model: Path, max_queue: int = 4, ctx_size: int = 4096, embeddings: bool = False,
                **server_kw) -> Iterator[LiveServer]:
    engine = Engine(EngineConfig(model_path=str(model), ctx_size=ctx_size, max_queue=max_queue,
                                 embeddings=embeddings))
    engine.load()
    server = LiveServer(engine, ServerConfig(host="127.0.0.1", port=0, **server_kw), max_queue)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def server(tiny_model) -> Iterator[LiveServer]:
    with live_server(tiny_model) as srv:
        yield srv


@pytest.fixture()
def idle_server(server) -> LiveServer:
    server.wait_idle()
    return server


def wait_healthy(proc, url: str, timeout: float = 60) -> None:
    """Poll {url}/health until 200; fail with the server's stderr if it exits or times out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(url + "/health", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"server did not become healthy: {proc.communicate()[1]}")
        time.sleep(0.1)


def start_server(cmd: list[str], env: dict | None = None, cwd: Path | None = None,
                 timeout: float = 60) -> tuple[subprocess.Popen, str]:
    """Run `cmd --no-browser --port N` on a free loopback port; return it once /health is 200."""
    port = free_port()
    proc = subprocess.Popen([*cmd, "--no-browser", "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(proc, url, timeout)
    return proc, url


def stop_server(proc: subprocess.Popen, timeout: float = 60) -> str:
    """Ctrl-C the server; it must exit cleanly. Returns what it logged."""
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
