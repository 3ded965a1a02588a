"""Minimal real PyInstaller onefile stubs, made in milliseconds for format tests.

PyInstaller's own bootloader plus an archive written by its own CArchiveWriter,
put in the `pydata` section the way PyInstaller does it (objcopy). It holds a
data file instead of Python, so it does not run, but every byte of structure
is PyInstaller's.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import PyInstaller
from PyInstaller.archive.writers import CArchiveWriter

BOOTLOADER = Path(PyInstaller.__file__).parent / "bootloader" / "Linux-64bit-intel" / "run"
MARKER = b"furoshiki archive test entry\n" * 100


def make_elf_stub(folder: Path, name: str = "stub") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "entry.txt"
    data.write_bytes(MARKER)
    archive = folder / "archive.pkg"
    CArchiveWriter(str(archive), [("entry.txt", str(data), True, "x")], "libpython3.11.so.1.0")
    stub = folder / name
    shutil.copyfile(BOOTLOADER, stub)
    os.chmod(stub, 0o755)
    subprocess.run(["objcopy", "--add-section", f"pydata={archive}", str(stub)], check=True)
    return stub


BOOTLOADERS = Path(os.environ.get("FUROSHIKI_CACHE") or Path.home() / ".cache" / "furoshiki") / "bootloaders" / \
    f"pyinstaller-{PyInstaller.__version__}"


def _archive(folder: Path) -> Path:
    data = folder / "entry.txt"
    data.write_bytes(MARKER)
    archive = folder / "archive.pkg"
    CArchiveWriter(str(archive), [("entry.txt", str(data), True, "x")], "python311.dll")
    return archive


def make_arm64_linux_stub(folder: Path, name: str = "stub") -> Path:
    """The linux-arm64 bootloader with its archive in 'pydata', as PyInstaller builds it."""
    folder.mkdir(parents=True, exist_ok=True)
    stub = folder / name
    shutil.copyfile(BOOTLOADERS / "Linux-64bit-arm" / "run", stub)
    os.chmod(stub, 0o755)
    subprocess.run(["aarch64-linux-gnu-objcopy", "--add-section", f"pydata={_archive(folder)}", str(stub)],
                   check=True)
    return stub


def make_pe_stub(folder: Path, name: str = "stub.exe", signed: bool = False) -> Path:
    """PyInstaller's Windows bootloader with its archive appended as the overlay.

    signed=True appends a (dummy) Authenticode certificate table and points the
    Security data directory at it, as signtool would.
    """
    import pefile

    folder.mkdir(parents=True, exist_ok=True)
    stub = folder / name
    data = (BOOTLOADERS / "Windows-64bit-intel" / "run.exe").read_bytes() + _archive(folder).read_bytes()
    if signed:
        data += b"\0" * (-len(data) % 8)
        body = b"\x30\x82" + os.urandom(1200)  # stands in for the PKCS#7 SignedData
        cert = struct.pack("<IHH", 8 + len(body), 0x0200, 0x0002) + body
        cert += b"\0" * (-len(cert) % 8)
        offset = len(data)
        data += cert
        pe = pefile.PE(data=data, fast_load=True)
        entry = pe.OPTIONAL_HEADER.DATA_DIRECTORY[4]
        data = bytearray(data)
        struct.pack_into("<II", data, entry.get_file_offset(), offset, len(cert))
        data = bytes(data)
    stub.write_bytes(data)
    return stub


def make_macho_stub(folder: Path, name: str = "stub") -> Path:
    """PyInstaller's macOS bootloader (arm64 slice), archive appended, __LINKEDIT fixed, signed ad hoc.

    The same steps PyInstaller takes on a Mac, with its own macholib-based
    fix_exe_for_code_signing and rcodesign (apple-platform-py) for `codesign`.
    """
    from PyInstaller.utils.osx import fix_exe_for_code_signing

    from builder.macho import sign_adhoc, strip_signature, thin_arm64

    folder.mkdir(parents=True, exist_ok=True)
    stub = folder / name
    with open(BOOTLOADERS / "Darwin-64bit" / "run", "rb") as f:
        head = f.read(4096)
        offset, size = thin_arm64(head, f)
        f.seek(offset)
        stub.write_bytes(f.read(size))
    strip_signature(stub)
    with open(stub, "ab") as f:
        f.write(_archive(folder).read_bytes())
    fix_exe_for_code_signing(str(stub))
    sign_adhoc(stub, "stub")
    os.chmod(stub, 0o755)
    return stub
