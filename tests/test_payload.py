"""The payload format and the ELF packer, on a minimal real PyInstaller stub."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PyInstaller.archive.readers import CArchiveReader

from builder import elf
from builder.pack import needs_sidecar_for_windows, pack
from runtime import payload as fmt
from tests.stubs import MARKER, make_elf_stub

MANIFEST = {"name": "mymodel", "title": "My model", "defaults": {"ctx_size": 2048, "temperature": 0.3}}


@pytest.fixture()
def stub(tmp_path) -> Path:
    return make_elf_stub(tmp_path / "stub")


@pytest.fixture()
def packed(stub, tiny_model, tmp_path) -> Path:
    out = tmp_path / "dist" / "mymodel"
    pack(stub, tiny_model, out, MANIFEST)
    return out


def sections(path: Path) -> dict[str, tuple[int, int]]:
    proc = subprocess.run(["readelf", "-S", "-W", str(path)], capture_output=True, text=True, check=True)
    assert proc.stderr == "", proc.stderr  # readelf complains about stale headers on stderr
    found = {}
    for m in re.finditer(r"\]\s+(\S+)\s+\S+\s+[0-9a-f]+\s+([0-9a-f]+)\s+([0-9a-f]+)", proc.stdout):
        found[m.group(1)] = (int(m.group(2), 16), int(m.group(3), 16))
    return found


def test_layout_is_aligned_valid_elf_and_pyinstaller_still_reads_its_archive(packed, tiny_model, stub):
    p = fmt.read_payload(packed)
    data = tiny_model.read_bytes()
    assert p.model_offset % fmt.PAYLOAD_ALIGN == 0 and p.length == len(data)
    assert p.sha256 == hashlib.sha256(data).hexdigest() == p.manifest["model"]["sha256"]
    with open(packed, "rb") as f:
        f.seek(p.model_offset)
        assert f.read(len(data)) == data  # uncompressed, byte for byte
    secs = sections(packed)
    furo, pydata = secs["furoshiki"], secs["pydata"]
    assert furo[0] < p.model_offset < pydata[0] and furo[0] + furo[1] == pydata[0]
    assert CArchiveReader(str(packed)).extract("entry.txt") == MARKER
    # The bootloader's own image is untouched, but for the section table's place and count.
    image = secs["pydata"][0] - secs["furoshiki"][1]
    new, old = packed.read_bytes()[:image], stub.read_bytes()[:image]
    assert new[:40] == old[:40] and new[48:60] == old[48:60] and new[62:] == old[62:]


def test_same_inputs_give_identical_bytes(stub, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    a, b = tmp_path / "a" / "m", tmp_path / "b" / "m"
    pack(stub, tiny_model, a, MANIFEST)
    pack(stub, tiny_model, b, MANIFEST)
    assert a.read_bytes() == b.read_bytes()
    assert a.stat().st_mtime == b.stat().st_mtime == 1700000000
    assert os.access(a, os.X_OK)


def test_flipped_payload_byte_is_caught_by_verify(packed):
    p = fmt.read_payload(packed)
    with open(packed, "r+b") as f:
        f.seek(p.model_offset + p.length // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(fmt.PayloadError, match=f"damaged: sha256 is [0-9a-f]{{64}}, expected {p.sha256}"):
        fmt.read_payload(packed).verify()


@pytest.mark.parametrize("where, match", [
    (0, "bad magic"), (8, "version 3"), (fmt.TRAILER.size - 1, "bad magic")])
def test_damaged_trailer_is_refused(packed, where, match):
    p = fmt.read_payload(packed)
    trailer_at = p.trailer.manifest_offset + p.trailer.manifest_length
    with open(packed, "r+b") as f:
        f.seek(trailer_at + where)
        f.write(b"\x00\x03" if where == 8 else b"X")
    with pytest.raises(fmt.PayloadError, match=match):
        fmt.read_payload(packed)


def test_bare_stub_and_plain_files_have_no_payload(stub, tiny_model):
    with pytest.raises(fmt.NoPayload, match="bare runtime stub"):
        fmt.read_payload(stub)
    with pytest.raises(fmt.NoPayload, match="no PyInstaller archive"):
        fmt.read_payload(tiny_model)


def test_packing_twice_is_refused(packed, tiny_model, tmp_path):
    with pytest.raises(elf.ElfError, match="already carries"):
        pack(packed, tiny_model, tmp_path / "again", MANIFEST)
    assert not (tmp_path / "again").exists()


def test_sidecar_build_keeps_the_model_beside_the_executable(stub, tiny_model, tmp_path):
    out = tmp_path / "side" / "mymodel"
    result = pack(stub, tiny_model, out, MANIFEST, sidecar=True)
    side = tmp_path / "side" / "mymodel.gguf"
    assert result.sidecar == side and side.read_bytes() == tiny_model.read_bytes()
    assert out.stat().st_size < stub.stat().st_size + 64 * 1024
    p = fmt.read_payload(out)
    assert p.trailer.sidecar and p.model_path == side and p.model_offset == 0
    p.verify()
    side.write_bytes(side.read_bytes()[:-10])
    with pytest.raises(fmt.PayloadError, match="wrong or truncated"):
        fmt.read_payload(out)
    side.unlink()
    with pytest.raises(fmt.PayloadError, match="mymodel.gguf is missing"):
        fmt.read_payload(out)


def test_windows_switches_to_sidecar_before_4_gib():
    assert not needs_sidecar_for_windows(40 << 20, 3 << 30)
    assert needs_sidecar_for_windows(40 << 20, (4 << 30) - (60 << 20))


def run_runtime(exe: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FUROSHIKI_EXECUTABLE": str(exe)}
    return subprocess.run([sys.executable, "-m", "runtime", *args], capture_output=True, text=True, env=env,
                          timeout=60)


def test_info_verify_and_extract_from_the_command_line(packed, tiny_model, tmp_path):
    info = json.loads(run_runtime(packed, "--info", "--json").stdout)
    assert info["name"] == "mymodel" and info["payload"]["mode"] == "embedded"
    assert info["payload"]["offset"] % fmt.PAYLOAD_ALIGN == 0
    assert info["defaults"] == {"ctx_size": 2048, "temperature": 0.3}
    assert info["runtime"]["llama_cpp_python"] == "0.3.36"
    ok = run_runtime(packed, "--verify")
    assert ok.returncode == 0 and ok.stdout.startswith("OK: model payload matches sha256")
    out = tmp_path / "back.gguf"
    assert run_runtime(packed, "--extract-model", str(out)).returncode == 0
    assert out.read_bytes() == tiny_model.read_bytes()
    again = run_runtime(packed, "--extract-model", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr

    p = fmt.read_payload(packed)
    with open(packed, "r+b") as f:
        f.seek(p.model_offset + 1000)
        f.write(b"\xff\xfe")
    bad = run_runtime(packed, "--verify")
    assert bad.returncode == 2 and "error: model payload is damaged: sha256 is" in bad.stderr
    assert "Traceback" not in bad.stderr
