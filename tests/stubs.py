"""Minimal real PyInstaller onefile stubs, made in milliseconds for format tests.

PyInstaller's own bootloader plus an archive written by its own CArchiveWriter,
put in the `pydata` section the way PyInstaller does it (objcopy). It holds a
data file instead of Python, so it does not run, but every byte of structure
is PyInstaller's.
"""

from __future__ import annotations

import os
import shutil
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
