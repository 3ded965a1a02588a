"""build.py --hf against a fake Hugging Face hub on 127.0.0.1 (HF_ENDPOINT): no real network."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from builder.hub import HubError, pick_file
from runtime.payload import read_payload
from tests.conftest import free_port
from tests.fake_hub import FakeHub, FakeRepo
from tests.stubs import make_elf_stub
from tests.tiny_gguf import TinyModelSpec, write_tiny_gguf

REPO = Path(__file__).resolve().parent.parent
SHA = "feedfacefeedfacefeedfacefeedfacefeedface"


@pytest.fixture(scope="module")
def medium_model(tmp_path_factory) -> Path:
    # Over huggingface_hub's 10 MiB download chunk, the granularity at which it resumes.
    spec = TinyModelSpec(n_embd=512, n_layers=2, n_head=8, n_head_kv=8, n_ff=2048, dtype="f16", name="medium")
    return write_tiny_gguf(tmp_path_factory.mktemp("hub") / "medium.gguf", spec)


@pytest.fixture()
def hub(medium_model, tmp_path):
    q8 = write_tiny_gguf(tmp_path / "q8.gguf", TinyModelSpec(dtype="q8_0", name="tiny-q8"))
    fake = FakeHub(repos={
        "acme/tiny-GGUF": FakeRepo(sha=SHA, files={
            "README.md": b"# tiny", "tiny-Q4_K_M.gguf": medium_model.read_bytes(), "tiny-Q8_0.gguf": q8.read_bytes(),
            "big-Q2_K-00001-of-00002.gguf": b"GGUF", "big-Q2_K-00002-of-00002.gguf": b"GGUF"}),
        "acme/gated-GGUF": FakeRepo(files={"m-Q4_0.gguf": b"GGUF"}, gated=True),
    })
    url = fake.start()
    yield fake, url
    fake.stop()


@pytest.fixture()
def build(tmp_path):
    stub = make_elf_stub(tmp_path / "stub")
    cache = tmp_path / "hf-home"

    def run(*args: str, endpoint: str, offline: bool = False) -> subprocess.CompletedProcess:
        env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(cache), "HF_HUB_DISABLE_TELEMETRY": "1",
               "HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "5"}
        env.pop("HF_TOKEN", None)
        if offline:
            env["HF_HUB_OFFLINE"] = "1"
        return subprocess.run([sys.executable, "build.py", *args, "--stub", str(stub), "--out",
                               str(tmp_path / "dist")], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    return run


def one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2, result
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_download_by_quant_resume_and_offline_rebuild(hub, build, medium_model, tmp_path):
    fake, url = hub
    assert medium_model.stat().st_size > 14_000_000
    fake.cut_next_download_at = 12_000_000   # the first transfer breaks off part way
    result = build("--hf", "acme/tiny-GGUF", "--quant", "q4_k_m", "--name", "m", endpoint=url)
    assert result.returncode == 0, result.stderr
    payload = read_payload(tmp_path / "dist" / "m")
    assert payload.manifest["model"]["source"] == f"hf:acme/tiny-GGUF/tiny-Q4_K_M.gguf@{SHA}"
    with open(payload.model_path, "rb") as f:
        f.seek(payload.model_offset)
        assert f.read(payload.length) == medium_model.read_bytes()
    ranges = [rng for method, path, rng in fake.log if method == "GET" and path.endswith(".gguf")]
    # Resumed from what had arrived (whole 10 MiB chunks), not restarted from zero.
    assert len(ranges) == 2 and ranges[0] is None and ranges[1] == f"bytes={10 * 1024 * 1024}-", ranges

    # The cache is reused: no second download.
    fake.log.clear()
    assert build("--hf", "acme/tiny-GGUF", "--quant", "Q4_K_M", "--name", "m2", endpoint=url).returncode == 0
    assert not [p for m, p, _ in fake.log if m == "GET" and p.endswith(".gguf")]

    # With the hub gone, HF_HUB_OFFLINE=1 builds from the cache.
    fake.stop()
    offline = build("--hf", "acme/tiny-GGUF", "--quant", "Q4_K_M", "--name", "m3", endpoint=url, offline=True)
    assert offline.returncode == 0, offline.stderr
    assert read_payload(tmp_path / "dist" / "m3").sha256 == payload.sha256
    fake.start()  # so the fixture can stop it


@pytest.mark.parametrize("args, fragment", [
    (("--hf", "acme/nope", "--quant", "Q4_0"), "not found on Hugging Face"),
    (("--hf", "acme/gated-GGUF", "--quant", "Q4_0"), "is gated"),
    (("--hf", "acme/tiny-GGUF", "--quant", "Q5_K_M"), "no Q5_K_M GGUF; available: Q2_K, Q4_K_M, Q8_0"),
    (("--hf", "acme/tiny-GGUF", "--quant", "Q2_K"), "split into 2 parts"),
    (("--hf", "acme/tiny-GGUF"), "choose one with --quant or --file"),
    (("--hf", "acme/tiny-GGUF", "--file", "nope.gguf"), "has no file 'nope.gguf'"),
    (("--hf", "not a repo", "--quant", "Q4_0"), "not a Hugging Face repository id"),
])
def test_hub_errors_are_one_line(hub, build, args, fragment):
    one_line_error(build(*args, "--name", "m", endpoint=hub[1]), fragment)


def test_no_network_and_empty_offline_cache(build):
    closed = f"http://127.0.0.1:{free_port()}"
    one_line_error(build("--hf", "acme/tiny-GGUF", "--quant", "Q4_0", "--name", "m", endpoint=closed),
                   "cannot download from Hugging Face")
    one_line_error(build("--hf", "acme/tiny-GGUF", "--quant", "Q4_0", "--name", "m", endpoint=closed, offline=True),
                   "not in the Hugging Face cache")


def test_pick_file_prefers_exact_quant_tokens():
    files = ["a-Q4_K_M.gguf", "a-Q4_K_S.gguf", "a-IQ4_XS.gguf", "mmproj-a-f16.gguf"]
    assert pick_file(files, "q4_k_m", None, "r") == "a-Q4_K_M.gguf"
    assert pick_file(files, "iq4_xs", None, "r") == "a-IQ4_XS.gguf"
    with pytest.raises(HubError, match="no Q4_K GGUF"):
        pick_file(files, "Q4_K", None, "r")
