"""Hardware detection for real: CPU variant modules, Vulkan on lavapipe, and a broken GPU driver.

These need llama.cpp built with backend modules (scripts/bootstrap.sh does it);
the Vulkan ones also need the Vulkan module and Mesa's lavapipe.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from runtime.hardware import cpu_variant_files, lib_dir, probe_in_child
from tests.conftest import free_port, start_server, stop_server

pytestmark = pytest.mark.slow
LIB = lib_dir()
DL_BUILD = len(cpu_variant_files(LIB)) > 1
HAS_VULKAN = (LIB / "libggml-vulkan.so").exists()
needs_dl = pytest.mark.skipif(not DL_BUILD, reason="llama.cpp was not built with CPU variant modules")
needs_vulkan = pytest.mark.skipif(not HAS_VULKAN or not list(Path("/usr/lib").glob("*/libvulkan_lvp.so")),
                                  reason="no Vulkan module or no lavapipe")


def serve(model: Path, *args: str, env: dict | None = None, timeout: float = 120) -> tuple[subprocess.Popen, str]:
    return start_server([sys.executable, "-m", "runtime", "--model", str(model), *args],
                        env={**os.environ, **(env or {})}, timeout=timeout)


def chat(url: str) -> dict:
    r = requests.post(url + "/v1/chat/completions", timeout=120,
                      json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert r.status_code == 200, r.text
    return r.json()


@needs_dl
def test_probe_scores_every_cpu_variant_and_picks_the_best():
    hw = probe_in_child()
    assert {"x64", "sse42", "haswell"} <= set(hw.cpu_variants)
    assert hw.cpu_variants["x64"] > 0
    assert hw.cpu_variant == max((v for v in hw.cpu_variants if hw.cpu_variants[v] > 0), key=hw.cpu_variants.get)
    assert any(d.kind == "cpu" for d in hw.devices)


@needs_dl
def test_a_machine_with_only_the_oldest_variant_still_answers(tiny_model, tmp_path):
    """Portability: with only the baseline x86-64 module on offer, the same build loads it and serves."""
    only_x64 = tmp_path / "modules"
    only_x64.mkdir()
    shutil.copy2(cpu_variant_files(LIB)["x64"], only_x64)
    proc, url = serve(tiny_model, "--gpu", "cpu", env={"FUROSHIKI_BACKEND_DIR": str(only_x64)})
    try:
        chat(url)
        hw = requests.get(url + "/props", timeout=5).json()["furoshiki"]["hardware"]
        assert hw["cpu_variant"] == "x64" and list(hw["cpu_variants"]) == ["x64"]
    finally:
        err = stop_server(proc)
    assert "CPU: x64" in err


@needs_vulkan
def test_vulkan_on_lavapipe_offloads_every_layer(tiny_model):
    env = {"GGML_VK_VISIBLE_DEVICES": "0"}  # ggml-vulkan hides CPU-type devices unless asked
    proc, url = serve(tiny_model, "--gpu", "vulkan", "--verbose", env=env, timeout=240)
    try:
        answer = chat(url)
        assert answer["usage"]["completion_tokens"] >= 1
        hw = requests.get(url + "/props", timeout=5).json()["furoshiki"]["hardware"]
        assert hw["plan"]["devices"] == ["Vulkan0"] and hw["plan"]["n_gpu_layers"] == 3
        assert any(d["name"] == "Vulkan0" and "llvmpipe" in d["description"] for d in hw["devices"])
    finally:
        err = stop_server(proc)
    assert 'GPU: Vulkan0 "llvmpipe' in err and "2/2 layers" in err
    assert "offloaded 3/3 layers to GPU" in err  # llama.cpp's own word that the layers went to Vulkan0


def broken_driver(tmp_path: Path) -> dict:
    lib = tmp_path / "libbroken_icd.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib), str(Path(__file__).parent / "data" / "broken_icd.c")],
                   check=True)
    manifest = tmp_path / "broken_icd.json"
    manifest.write_text(json.dumps({"file_format_version": "1.0.0",
                                    "ICD": {"library_path": str(lib), "api_version": "1.3.0"}}))
    return {"VK_ICD_FILENAMES": str(manifest), "VK_DRIVER_FILES": str(manifest)}


@needs_vulkan
@pytest.mark.parametrize("failure, extra", [("crashed", {}), ("hung", {"BROKEN_ICD_HANG": "1",
                                                                      "FUROSHIKI_PROBE_TIMEOUT": "5"})])
def test_a_broken_gpu_driver_cannot_stop_the_chat(tiny_model, tmp_path, failure, extra):
    env = {**broken_driver(tmp_path), **extra}
    proc, url = serve(tiny_model, env=env)
    try:
        chat(url)
        hw = requests.get(url + "/props", timeout=5).json()["furoshiki"]["hardware"]
        assert failure in hw["probe_error"] and hw["plan"]["n_gpu_layers"] == 0
    finally:
        err = stop_server(proc)
    warnings = [line for line in err.splitlines() if "GPU probe" in line]
    assert len(warnings) == 1 and "using the CPU only" in warnings[0], err
    assert "Traceback" not in err


@needs_dl
def test_asking_for_a_missing_backend_is_a_one_line_error(tiny_model, tmp_path):
    env = {**os.environ, "VK_ICD_FILENAMES": str(tmp_path / "none.json"), "VK_DRIVER_FILES": str(tmp_path / "n.json")}
    result = subprocess.run([sys.executable, "-m", "runtime", "--model", str(tiny_model), "--gpu", "cuda",
                             "--no-browser", "--port", str(free_port())], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "--gpu cuda: no cuda device found" in errors[0], result.stderr
