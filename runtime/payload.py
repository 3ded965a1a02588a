"""The furoshiki payload format: a GGUF carried inside the executable. Builder and runtime share it.

A packed executable is a PyInstaller onefile stub with the model inserted
between the native image and PyInstaller's archive (never after the archive,
which the bootloader would scan at every launch):

    offset        contents
    0             native image: the PyInstaller bootloader (ELF / PE / Mach-O)
    section_off   zero padding up to a 64 KiB boundary          ┐ ELF: section "furoshiki"
    payload_off   the GGUF, byte for byte (payload_off % 64 KiB == 0)
    manifest_off  manifest: UTF-8 JSON (name, defaults, provenance)
    trailer_off   trailer, TRAILER.size bytes (layout below)     ┘
                  (up to SLACK bytes of section alignment)
    archive_off   PyInstaller CArchive ... cookie (88 bytes)
                  ELF only: .shstrtab and the section header table

Trailer, big-endian, struct TRAILER = '>8sHHIQQQQ32s8s' (88 bytes):
    8s   MAGIC          b"FUROSHKI"
    H    version        FORMAT_VERSION
    H    flags          FLAG_SIDECAR: the GGUF is NAME.gguf beside the executable
    I    reserved       0
    Q    payload_off    absolute file offset of the GGUF (0 for a sidecar)
    Q    payload_len    bytes of GGUF (the sidecar's size for a sidecar)
    Q    manifest_off   absolute file offset of the manifest
    Q    manifest_len   bytes of manifest
    32s  sha256         of the GGUF bytes
    8s   END_MAGIC      b"IKHSORUF"

The runtime finds it in O(1): read PyInstaller's cookie near the end of the
file, compute where the archive starts, and read the trailer just before it.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import FuroshikiError

MAGIC = b"FUROSHKI"
END_MAGIC = b"IKHSORUF"
FORMAT_VERSION = 1
FLAG_SIDECAR = 1
PAYLOAD_ALIGN = 64 * 1024
TRAILER = struct.Struct(">8sHHIQQQQ32s8s")
assert TRAILER.size == 88

# PyInstaller's CArchive cookie (PyInstaller/archive/writers.py), also big-endian.
COOKIE_MAGIC = b"MEI\014\013\012\013\016"
COOKIE = struct.Struct("!8sIIII64s")
assert COOKIE.size == 88
COOKIE_SEARCH = 1024 * 1024     # the cookie sits within this many bytes of the end (ELF headers, signatures)
SLACK = 64 * 1024               # alignment the container format may put between trailer and archive
MAX_MANIFEST = 1024 * 1024
HASH_CHUNK = 8 * 1024 * 1024


class PayloadError(FuroshikiError):
    """The executable's payload is missing, damaged or truncated."""


class NoPayload(PayloadError):
    pass


@dataclass(frozen=True)
class Archive:
    """Where PyInstaller's CArchive lies in a file."""

    start: int
    cookie_offset: int

    @property
    def end(self) -> int:
        return self.cookie_offset + COOKIE.size


def _search_end(f, size: int) -> int:
    """Where to look back from: the end of the file, or a signed Mach-O's code signature.

    An ad-hoc signature holds a hash per 4 KiB page (a 2 GB model adds ~16 MB
    of it after PyInstaller's archive), so the cookie is found before it.
    """
    f.seek(0)
    head = f.read(32)
    if len(head) < 32 or struct.unpack_from("<I", head)[0] != 0xFEEDFACF:
        return size
    ncmds, sizeofcmds = struct.unpack_from("<II", head, 16)
    commands = f.read(min(sizeofcmds, 1 << 20))
    pos = 0
    for _ in range(ncmds):
        if pos + 8 > len(commands):
            break
        cmd, cmdsize = struct.unpack_from("<II", commands, pos)
        if cmd == 0x1D and pos + 16 <= len(commands):   # LC_CODE_SIGNATURE: dataoff, datasize
            return min(size, struct.unpack_from("<I", commands, pos + 8)[0])
        pos += max(cmdsize, 8)
    return size


def find_archive(f, size: int) -> Archive:
    """Locate PyInstaller's archive the way its bootloader does, in a bounded window."""
    size = _search_end(f, size)
    window = min(size, COOKIE_SEARCH)
    f.seek(size - window)
    tail = f.read(window)
    pos = tail.rfind(COOKIE_MAGIC)
    if pos < 0 or pos + COOKIE.size > len(tail):
        raise NoPayload("not a furoshiki executable: no PyInstaller archive found")
    cookie_offset = size - window + pos
    _, pkg_length, *_ = COOKIE.unpack_from(tail, pos)
    start = cookie_offset + COOKIE.size - pkg_length
    if pkg_length < COOKIE.size or start < 0:
        raise PayloadError(f"PyInstaller archive cookie is damaged (archive length {pkg_length})")
    return Archive(start=start, cookie_offset=cookie_offset)


@dataclass(frozen=True)
class Trailer:
    version: int
    flags: int
    payload_offset: int
    payload_length: int
    manifest_offset: int
    manifest_length: int
    sha256: bytes

    def pack(self) -> bytes:
        return TRAILER.pack(MAGIC, self.version, self.flags, 0, self.payload_offset, self.payload_length,
                            self.manifest_offset, self.manifest_length, self.sha256, END_MAGIC)

    @classmethod
    def unpack(cls, data: bytes) -> Trailer:
        magic, version, flags, _, p_off, p_len, m_off, m_len, sha, end = TRAILER.unpack(data)
        if magic != MAGIC or end != END_MAGIC:
            raise PayloadError("payload trailer is damaged (bad magic)")
        if version != FORMAT_VERSION:
            raise PayloadError(f"payload format version {version} is not supported (this runtime reads "
                               f"{FORMAT_VERSION}); rebuild with a matching furoshiki")
        return cls(version, flags, p_off, p_len, m_off, m_len, sha)

    @property
    def sidecar(self) -> bool:
        return bool(self.flags & FLAG_SIDECAR)


@dataclass(frozen=True)
class Payload:
    """A located, structurally checked payload. `verify()` checks the bytes too."""

    executable: Path
    trailer: Trailer
    manifest: dict
    model_path: Path        # the file holding the GGUF: the executable itself, or the sidecar
    model_offset: int       # where the GGUF starts in model_path

    @property
    def length(self) -> int:
        return self.trailer.payload_length

    @property
    def sha256(self) -> str:
        return self.trailer.sha256.hex()

    def verify(self, progress: Callable[[int], None] | None = None) -> None:
        """Recompute the GGUF's sha256; raise PayloadError naming the damage."""
        digest = hash_range(self.model_path, self.model_offset, self.length, progress)
        if digest != self.trailer.sha256:
            raise PayloadError(f"model payload is damaged: sha256 is {digest.hex()}, expected {self.sha256}")

    def extract(self, out: Path, progress: Callable[[int], None] | None = None) -> None:
        """Write the GGUF back out, checking its sha256 on the way; never leaves a bad file behind."""
        tmp = out.with_name(out.name + ".part")
        digest = hashlib.sha256()
        try:
            with open(self.model_path, "rb") as src, open(tmp, "wb") as dst:
                src.seek(self.model_offset)
                left = self.length
                while left:
                    chunk = src.read(min(HASH_CHUNK, left))
                    if not chunk:
                        raise PayloadError("model payload is truncated")
                    digest.update(chunk)
                    dst.write(chunk)
                    left -= len(chunk)
                    if progress:
                        progress(len(chunk))
            if digest.digest() != self.trailer.sha256:
                raise PayloadError(f"model payload is damaged: sha256 is {digest.hexdigest()}, "
                                   f"expected {self.sha256}")
            os.replace(tmp, out)
        finally:
            if tmp.exists():
                tmp.unlink()


def hash_range(path: Path, offset: int, length: int, progress: Callable[[int], None] | None = None) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        left = length
        while left:
            chunk = f.read(min(HASH_CHUNK, left))
            if not chunk:
                raise PayloadError(f"model payload is truncated: {left} of {length} bytes missing")
            digest.update(chunk)
            left -= len(chunk)
            if progress:
                progress(len(chunk))
    return digest.digest()


def sidecar_path(executable: Path) -> Path:
    """`mymodel.gguf` beside `mymodel` or `mymodel.exe`."""
    stem = executable.name[:-4] if executable.name.lower().endswith(".exe") else executable.name
    return executable.with_name(stem + ".gguf")


def read_payload(executable: str | Path) -> Payload:
    """Locate and structurally check the payload of a packed executable (O(1) reads)."""
    executable = Path(executable)
    try:
        size = executable.stat().st_size
        with open(executable, "rb") as f:
            archive = find_archive(f, size)
            lo = max(0, archive.start - SLACK - TRAILER.size)
            f.seek(lo)
            window = f.read(archive.start - lo)
            end = window.rfind(END_MAGIC)
            if end < 0:
                if window.rfind(MAGIC) >= 0:
                    raise PayloadError("payload trailer is damaged (bad magic at its end)")
                raise NoPayload(f"{executable.name} has no embedded model (it is a bare runtime stub)")
            start = end + len(END_MAGIC) - TRAILER.size
            if start < 0:
                raise PayloadError("payload trailer is damaged (cut short)")
            trailer = Trailer.unpack(window[start:start + TRAILER.size])
            trailer_offset = lo + start
            if not (trailer.manifest_offset + trailer.manifest_length == trailer_offset
                    and trailer.manifest_length <= MAX_MANIFEST):
                raise PayloadError("payload trailer is damaged (manifest location)")
            f.seek(trailer.manifest_offset)
            manifest = json.loads(f.read(trailer.manifest_length).decode("utf-8"))
    except OSError as exc:
        raise PayloadError(f"cannot read {executable}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise PayloadError("payload manifest is damaged (not JSON)") from None

    if trailer.sidecar:
        model_path, model_offset = sidecar_path(executable), 0
        if not model_path.is_file():
            raise PayloadError(f"this build keeps its model beside it: {model_path.name} is missing "
                               f"(expected next to {executable.name})")
        actual = model_path.stat().st_size
        if actual != trailer.payload_length:
            raise PayloadError(f"{model_path.name} is {actual} bytes, expected {trailer.payload_length}: "
                               "wrong or truncated file")
    else:
        model_path, model_offset = executable, trailer.payload_offset
        if trailer.payload_offset % PAYLOAD_ALIGN or trailer.payload_offset + trailer.payload_length > \
                trailer.manifest_offset:
            raise PayloadError("payload trailer is damaged (model location)")
    return Payload(executable, trailer, manifest, model_path, model_offset)
