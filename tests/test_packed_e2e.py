"""The real thing: build.py → one executable → copied anywhere → serves, mmaps its own model, never extracts it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from runtime.payload import read_payload
from tests.conftest import start_server, stop_server

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def built(tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run([sys.executable, "build.py", "--model", str(tiny_model), "--name", "mymodel",
                             "--out", str(out), "--title", "テストモデル", "--temperature", "0.4",
                             "--system-prompt", "You are kind."],
                            capture_output=True, text=True, cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stderr
    assert "built " in result.stderr and "run it:" in result.stderr
    return out / "mymodel"


@pytest.fixture()
def place(built, tmp_path) -> dict:
    """An empty folder, HOME and TMPDIR, with only the executable copied in."""
    dirs = {name: tmp_path / name for name in ("run", "home", "tmp")}
    for d in dirs.values():
        d.mkdir()
    exe = dirs["run"] / "mymodel"
    shutil.copy2(built, exe)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FUROSHIKI_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(HOME=str(dirs["home"]), TMPDIR=str(dirs["tmp"]), PATH="/usr/bin:/bin")
    return {"exe": exe, "env": env, **dirs}


def run(place: dict, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(place["exe"]), *args], capture_output=True, text=True, env=place["env"],
                          cwd=place["run"], timeout=timeout)


def python_child(pid: int) -> int:
    """The onefile bootloader forks; Python (and the model) live in its child."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise AssertionError("no child process")


def start(place: dict, *args: str) -> tuple[subprocess.Popen, str]:
    return start_server([str(place["exe"]), *args], env=place["env"], cwd=place["run"])


def stop(proc: subprocess.Popen) -> str:
    return stop_server(proc, timeout=20)


def test_runs_anywhere_and_maps_its_own_model(place, tiny_model):
    proc, url = start(place)
    try:
        reply = requests.post(url + "/v1/chat/completions", timeout=30, json={
            "messages": [{"role": "user", "content": "こんにちは"}], "max_tokens": 5})
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1
        props = requests.get(url + "/props", timeout=5).json()
        assert props["model"] == "tiny-test-llama"
        assert props["default_generation_settings"]["params"] == {"system_prompt": "You are kind.",
                                                                 "temperature": 0.4}
        page = requests.get(url + "/", timeout=5).text
        assert "<title>テストモデル</title>" in page

        # The tensors are mapped from the executable itself, shared and read-only.
        payload = read_payload(place["exe"])
        maps = Path(f"/proc/{python_child(proc.pid)}/maps").read_text().splitlines()
        mapped = 0
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and fields[5] == str(place["exe"]) and fields[1].startswith("r--s"):
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                offset = int(fields[2], 16)
                # (PyInstaller also maps a page of its own archive at the end of the file.)
                if payload.model_offset <= offset < payload.model_offset + payload.length:
                    mapped += hi - lo
        assert mapped >= 0.9 * payload.length, maps
    finally:
        err = stop(proc)
    assert f"embedded in mymodel at byte {payload.model_offset:,}" in err
    # No copy of the model anywhere we gave it; PyInstaller's temp folder cleaned up.
    size = tiny_model.stat().st_size
    for folder in (place["run"], place["home"], place["tmp"]):
        for path in folder.rglob("*"):
            assert not path.name.endswith(".gguf"), path
            assert not (path.is_file() and path.stat().st_size == size), path
    assert list(place["tmp"].iterdir()) == []


def test_info_verify_and_damage(place):
    info = json.loads(run(place, "--info", "--json").stdout)
    assert info["title"] == "テストモデル" and info["model"]["source"] == "file:tiny.gguf"
    assert info["model"]["architecture"] == "llama" and info["built_with"]["llama_cpp_python"] == "0.3.36"
    assert info["runtime"]["furoshiki"] == info["built_with"]["furoshiki"]
    assert "payload    embedded" in run(place, "--info").stdout
    assert run(place, "--verify").returncode == 0

    payload = read_payload(place["exe"])
    with open(place["exe"], "r+b") as f:
        f.seek(payload.model_offset + payload.length // 3)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x80]))
    bad = run(place, "--verify")
    assert bad.returncode == 2 and bad.stderr.startswith("error: model payload is damaged: sha256 is ")
    assert bad.stderr.count("\n") == 1

    trailer = payload.trailer.manifest_offset + payload.trailer.manifest_length
    with open(place["exe"], "r+b") as f:
        f.seek(trailer)
        f.write(b"XXXXXXXX")
    refused = run(place, "--no-browser")
    assert refused.returncode == 2
    assert refused.stderr.strip() == "error: payload trailer is damaged (bad magic)"


def test_sidecar_and_model_flag_override_the_embedded_model(place, tiny_model_no_template):
    other = place["run"] / "other.gguf"
    shutil.copy(tiny_model_no_template, other)
    proc, url = start(place, "--model", str(other))
    try:
        assert requests.get(url + "/props", timeout=5).json()["model"] == "tiny-no-template"
    finally:
        stop(proc)
    other.rename(place["run"] / "mymodel.gguf")
    proc, url = start(place)
    try:
        assert requests.get(url + "/props", timeout=5).json()["model"] == "tiny-no-template"
    finally:
        assert "sidecar" in stop(proc)
