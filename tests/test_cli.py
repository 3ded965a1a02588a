"""`python -m runtime` as a user runs it: real process, real port, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import requests

from tests.conftest import free_port, wait_healthy

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result
    lines = [line for line in result.stderr.splitlines() if not line.startswith("furoshiki: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_help_lists_every_runtime_flag():
    result = run_cli("--help")
    assert result.returncode == 0
    for flag in ("--model", "--host", "--port", "--ctx-size", "--threads", "--no-browser", "--api-key",
                 "--max-queue", "--cors-origin", "--public-without-key", "FUROSHIKI_API_KEY"):
        assert flag in result.stdout, flag


def test_missing_model_file():
    assert_one_line_error(run_cli("--model", "/no/such/model.gguf"), "not found")


def test_not_a_gguf(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(os.urandom(4096))
    assert_one_line_error(run_cli("--model", str(junk), "--no-browser", "--port", str(free_port())),
                          "junk.gguf is not a GGUF file")


def test_public_bind_without_key_is_refused(tiny_model):
    assert_one_line_error(run_cli("--model", str(tiny_model), "--host", "0.0.0.0"), "--api-key")


def test_port_in_use(tiny_model, server):
    assert_one_line_error(run_cli("--model", str(tiny_model), "--port", str(server.thread.port), "--no-browser"),
                          "already in use")


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what `cmd &` in a non-interactive shell does


@pytest.mark.parametrize("sig, started_ignoring_sigint", [(signal.SIGINT, False), (signal.SIGTERM, False),
                                                          (signal.SIGINT, True)])
def test_serves_then_stops_cleanly_on_signal(tiny_model, sig, started_ignoring_sigint):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "runtime", "--model", str(tiny_model), "--port", str(port),
                             "--no-browser"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            preexec_fn=_ignore_sigint if started_ignoring_sigint else None)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(proc, url, timeout=30)
        reply = requests.post(url + "/v1/chat/completions", timeout=30,
                              json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert reply.status_code == 200
        # Stop in the middle of a generation: shutdown must not wait for it to finish.
        stream = requests.post(url + "/v1/chat/completions", stream=True, timeout=30, json={
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3800, "stream": True,
            "logit_bias": {"4": -100}})
        next(stream.iter_lines())
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert f"http://127.0.0.1:{port}/" in err
    assert "stopping" in err
    assert "Traceback" not in err and "NoneType" not in err and "Exception ignored" not in err
