"""Cross-packing on Linux into real stubs of every format, made from PyInstaller's own bootloaders.

Windows and macOS stubs cannot run here, so each packed file is checked for
structure: its headers parse, PyInstaller still reads its archive, the PE
checksum is valid, the Mach-O signature covers every byte, and our payload
locator finds the GGUF.
"""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
from pathlib import Path

import pefile
import pytest
from macholib.MachO import MachO
from PyInstaller.archive.readers import CArchiveReader

from builder.pack import pack
from builder.pe import pe_checksum
from runtime.payload import read_payload
from tests.stubs import MARKER, make_arm64_linux_stub, make_elf_stub, make_macho_stub, make_pe_stub

REPO = Path(__file__).resolve().parent.parent
MANIFEST = {"name": "mymodel", "defaults": {"temperature": 0.5}}


def payload_bytes(path: Path) -> bytes:
    p = read_payload(path)
    with open(p.model_path, "rb") as f:
        f.seek(p.model_offset)
        return f.read(p.length)


def assert_common(out: Path, gguf: Path) -> None:
    assert CArchiveReader(str(out)).extract("entry.txt") == MARKER
    p = read_payload(out)
    assert p.model_offset % 65536 == 0 and p.manifest["name"] == "mymodel"
    assert payload_bytes(out) == gguf.read_bytes()
    p.verify()


@pytest.mark.parametrize("signed", [False, True])
def test_windows_pe(tiny_model, tmp_path, signed):
    stub = make_pe_stub(tmp_path / "stub", signed=signed)
    assert (pefile.PE(str(stub)).OPTIONAL_HEADER.DATA_DIRECTORY[4].Size > 0) == signed
    result = pack(stub, tiny_model, tmp_path / "dist" / "mymodel.exe", MANIFEST)
    out = result.executable
    pe = pefile.PE(str(out))
    assert pe.FILE_HEADER.Machine == 0x8664 and pe.is_exe()
    assert pe.verify_checksum() and pe.OPTIONAL_HEADER.CheckSum != 0
    assert pe.OPTIONAL_HEADER.DATA_DIRECTORY[4].VirtualAddress == 0   # no signature left pointing anywhere
    assert pe.get_overlay_data_start_offset() <= read_payload(out).model_offset
    assert_common(out, tiny_model)
    assert any("not Authenticode-signed" in n for n in result.notes)
    assert any("signature was removed" in n for n in result.notes) == signed


def test_pe_checksum_matches_pefile(tmp_path):
    stub = make_pe_stub(tmp_path / "stub")
    data = stub.read_bytes() + b"odd length!"
    stub.write_bytes(data)
    pe = pefile.PE(str(stub))
    offset = pe.OPTIONAL_HEADER.get_field_absolute_offset("CheckSum")
    with open(stub, "rb") as f:
        assert pe_checksum(f, offset, len(data)) == pe.generate_checksum()


def code_signature_covers_file(path: Path) -> int:
    """Check an ad-hoc signature independently: every 4 KiB page hash matches. Returns the page count."""
    data = path.read_bytes()
    ncmds, = struct.unpack_from("<I", data, 16)
    pos, sig = 32, None
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", data, pos)
        if cmd == 0x1D:
            sig = struct.unpack_from("<II", data, pos + 8)
        pos += size
    assert sig is not None, "no LC_CODE_SIGNATURE"
    dataoff, datasize = sig
    assert dataoff + datasize <= len(data)
    blob = data[dataoff:dataoff + datasize]
    magic, _, count = struct.unpack_from(">III", blob)
    assert magic == 0xFADE0CC0  # embedded signature SuperBlob
    for i in range(count):
        _, off = struct.unpack_from(">II", blob, 12 + 8 * i)
        if struct.unpack_from(">I", blob, off)[0] != 0xFADE0C02:   # CodeDirectory
            continue
        cd = blob[off:]
        _, _, _, flags, hash_off, _, _, n_code, code_limit, hash_size, hash_type, _, page_shift = \
            struct.unpack_from(">IIIIIIIIIBBBB", cd)
        assert flags & 0x2 and hash_type == 2 and code_limit == dataoff   # ad hoc, SHA-256, whole file
        page = 1 << page_shift
        assert n_code == -(-code_limit // page)
        for n in range(n_code):
            want = hashlib.sha256(data[n * page:min((n + 1) * page, code_limit)]).digest()
            assert cd[hash_off + n * hash_size:hash_off + (n + 1) * hash_size] == want, f"page {n}"
        return n_code
    raise AssertionError("no CodeDirectory")


def test_macos_macho(tiny_model, tmp_path):
    stub = make_macho_stub(tmp_path / "stub")
    result = pack(stub, tiny_model, tmp_path / "dist" / "mymodel", MANIFEST)
    out = result.executable
    header = MachO(str(out)).headers[0]
    assert header.header.cputype == 0x0100000C                           # arm64
    linkedit = next(c for _, c, _ in header.commands if getattr(c, "segname", b"").rstrip(b"\0") == b"__LINKEDIT")
    signature = next(c for lc, c, _ in header.commands if lc.cmd == 0x1D)
    assert linkedit.fileoff + linkedit.filesize == out.stat().st_size     # __LINKEDIT runs to the end
    assert linkedit.fileoff < read_payload(out).model_offset < signature.dataoff
    pages = code_signature_covers_file(out)
    assert pages * 4096 >= read_payload(out).model_offset + tiny_model.stat().st_size
    assert_common(out, tiny_model)
    assert any("signed ad hoc" in n for n in result.notes)


def test_a_universal_bootloader_without_an_archive_is_refused(tiny_model, tmp_path):
    from tests.stubs import BOOTLOADERS

    # The bare universal bootloader: packing thins it to arm64, then finds no PyInstaller archive.
    universal = BOOTLOADERS / "Darwin-64bit" / "run"
    with pytest.raises(Exception, match="archive"):
        pack(universal, tiny_model, tmp_path / "m", MANIFEST)


def test_linux_arm64(tiny_model, tmp_path):
    stub = make_arm64_linux_stub(tmp_path / "stub")
    out = pack(stub, tiny_model, tmp_path / "dist" / "mymodel", MANIFEST).executable
    elf = subprocess.run(["readelf", "-h", "-S", "-W", str(out)], capture_output=True, text=True, check=True)
    assert elf.stderr == "" and "AArch64" in elf.stdout and "furoshiki" in elf.stdout
    assert_common(out, tiny_model)


def test_one_command_builds_every_platform(tiny_model, tmp_path):
    stubs = tmp_path / "stubs"
    make_elf_stub(stubs, "furoshiki-runtime-linux-x86_64")
    for make, name in ((make_arm64_linux_stub, "furoshiki-runtime-linux-arm64"),
                       (make_pe_stub, "furoshiki-runtime-windows-x86_64.exe"),
                       (make_macho_stub, "furoshiki-runtime-macos-arm64")):
        make(stubs / name.split("-")[2], name).rename(stubs / name)
    dist = tmp_path / "dist"
    result = subprocess.run([sys.executable, "build.py", "--model", str(tiny_model), "--name", "mymodel",
                             "--platform", "all", "--stubs-dir", str(stubs), "--out", str(dist)],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    built = sorted(str(p.relative_to(dist)) for p in dist.rglob("*") if p.is_file())
    assert built == ["linux-arm64/mymodel", "linux-x86_64/mymodel", "macos-arm64/mymodel",
                     "windows-x86_64/mymodel.exe"]
    for rel in built:
        assert payload_bytes(dist / rel) == tiny_model.read_bytes()
        info = json.loads(subprocess.run([sys.executable, "build.py", "inspect", str(dist / rel), "--json"],
                                         capture_output=True, text=True, cwd=REPO, check=True).stdout)
        assert info["model"]["source"] == "file:tiny.gguf"
    assert pefile.PE(str(dist / "windows-x86_64" / "mymodel.exe")).verify_checksum()
    code_signature_covers_file(dist / "macos-arm64" / "mymodel")


def test_missing_stub_is_a_clear_error(tiny_model, tmp_path):
    result = subprocess.run([sys.executable, "build.py", "--model", str(tiny_model), "--name", "m", "--platform",
                             "windows-x86_64", "--stubs-dir", str(tmp_path)], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert result.returncode == 2
    assert "no stub for windows-x86_64" in result.stderr and "furoshiki-runtime-windows-x86_64.exe" in result.stderr


@pytest.mark.slow
def test_windows_build_past_4_gib_switches_to_a_sidecar(tmp_path):
    """A real 4.1 GiB GGUF (sparse on disk): the .exe stays small and the model sits beside it."""
    import gguf
    import numpy as np

    big = tmp_path / "big.gguf"
    n = (4 << 30) // 4 + (64 << 20)
    w = gguf.GGUFWriter(str(big), "llama")
    w.add_tensor_info("blob", (n,), np.dtype(np.float32), n * 4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    with open(big, "r+b") as f:   # the tensor data, as a hole
        f.truncate((f.seek(0, 2) + 31) // 32 * 32 + n * 4)
    stubs = tmp_path / "stubs"
    make_pe_stub(stubs, "furoshiki-runtime-windows-x86_64.exe")
    result = subprocess.run([sys.executable, "build.py", "--model", str(big), "--name", "huge", "--platform",
                             "windows-x86_64", "--stubs-dir", str(stubs), "--out", str(tmp_path / "dist")],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "Windows refuses executables of 4 GiB or more" in result.stderr
    exe, side = tmp_path / "dist" / "huge.exe", tmp_path / "dist" / "huge.gguf"
    assert exe.stat().st_size < 1 << 20 and side.stat().st_size == big.stat().st_size
    p = read_payload(exe)
    assert p.trailer.sidecar and p.model_path == side
    assert pefile.PE(str(exe)).verify_checksum()


WINE = Path("/usr/lib/wine/wine64")


@pytest.mark.slow
@pytest.mark.skipif(not WINE.exists(), reason="wine64 is not installed (scripts/bootstrap.sh installs it)")
def test_windows_bootloader_under_wine_still_finds_its_archive(tiny_model, tmp_path):
    """PyInstaller's real Windows bootloader, run by wine on the packed .exe.

    The minimal stub holds no Python, so the bootloader stops at loading the
    Python DLL; where it looks for it shows whether it found and unpacked its
    archive (into _MEI...) or gave up on it (beside the .exe).
    """
    packed = pack(make_pe_stub(tmp_path / "stub", signed=True), tiny_model, tmp_path / "m.exe", MANIFEST).executable
    broken = tmp_path / "broken.exe"
    data = bytearray(packed.read_bytes())
    cookie = data.rfind(b"MEI\x0c\x0b\x0a\x0b\x0e")
    data[cookie + 8:cookie + 12] = b"\x7f\xff\xff\xff"   # an archive length that points nowhere
    broken.write_bytes(bytes(data))
    env = {"WINEPREFIX": str(tmp_path / "wine"), "WINEDEBUG": "-all", "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}

    def bootloader_says(exe: Path) -> str:
        run = subprocess.run([str(WINE), str(exe)], capture_output=True, text=True, env=env, timeout=300)
        return run.stdout + run.stderr

    good = bootloader_says(packed)
    assert "Failed to load Python DLL" in good and "_MEI" in good, good
    bad = bootloader_says(broken)
    assert "_MEI" not in bad, bad
