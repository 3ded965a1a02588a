"""Helpers the benchmarks share: a free loopback port, and starting a server until /health is 200."""

from __future__ import annotations

import socket
import subprocess
import time

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(proc: subprocess.Popen, port: int, timeout: float = 120) -> float:
    """Seconds until http://127.0.0.1:{port}/health answers 200; raises with stderr if it never does."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return time.perf_counter() - t0
        except requests.ConnectionError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read() if proc.stderr else f"exit {proc.returncode}")
        time.sleep(0.01)
    proc.kill()
    raise RuntimeError("server did not become healthy")
