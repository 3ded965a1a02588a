"""Pack a GGUF into a runtime stub: one executable that memory-maps its own model.

The GGUF goes in uncompressed at a 64 KiB-aligned offset, followed by the
manifest and trailer of `runtime.payload`, between the stub's native image
and PyInstaller's archive. It is copied once, and hashed in the same pass.
"""

from __future__ import annotations

import errno
import hashlib
import json
import mmap
import os
import stat
import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from builder import elf, macho, pe
from builder.fileio import copy_range
from runtime import payload as fmt
from runtime.errors import FuroshikiError

COPY_CHUNK = 16 * 1024 * 1024
WINDOWS_EXE_LIMIT = 4 * 1024 ** 3   # Windows refuses to start executables of 4 GiB or more
EXE_MARGIN = 64 * 1024 * 1024


class PackError(FuroshikiError):
    pass


@dataclass(frozen=True)
class PackResult:
    executable: Path
    sidecar: Path | None
    payload_offset: int
    payload_length: int
    sha256: str
    seconds: float
    stub_format: str
    notes: tuple[str, ...] = ()


def stub_format(head: bytes) -> str:
    if elf.is_elf(head):
        return "elf"
    if head[:2] == b"MZ":
        return "pe"
    if head[:4] in (b"\xcf\xfa\xed\xfe", b"\xfe\xed\xfa\xcf", b"\xca\xfe\xba\xbe"):
        return "macho"
    raise PackError("the stub is not an executable furoshiki knows (ELF, PE or Mach-O)")


# sha256 per (device, inode, size, mtime): `--platform all` packs one GGUF four times and
# SHA-256 (one core, ~1.6 GB/s) is slower than the kernel's copy; hash it once per run.
_known_digests: dict[tuple[int, int, int, int], bytes] = {}


def _file_key(f: BinaryIO) -> tuple[int, int, int, int]:
    st = os.fstat(f.fileno())
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def copy_hashing(src: BinaryIO, dst: BinaryIO | None, length: int,
                 progress: Callable[[int], None] | None = None) -> bytes:
    """Copy `length` bytes from src's position to dst's, and return their sha256.

    The copy is done in the kernel (copy_file_range, as cp does) while a second
    thread hashes a memory map of the source; both release the GIL, so on two
    cores packing costs about what cp costs. Elsewhere (no copy_file_range),
    chunks are read once and hashed on the second thread while being written.
    """
    key = _file_key(src) if src.tell() == 0 and length == os.fstat(src.fileno()).st_size else None
    known = _known_digests.get(key) if key else None
    copied, digest = False, None
    if dst is not None and hasattr(os, "copy_file_range"):
        try:
            digest = _copy_in_kernel(src, dst, length, progress, hash_it=known is None)
            copied = True
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
    if not copied:
        digest = _copy_in_python(src, dst, length, progress)
    digest = known or digest
    if key:
        _known_digests[key] = digest
    return digest


def _hash_mapped(fd: int, offset: int, length: int) -> bytes:
    digest = hashlib.sha256()
    if length:
        with mmap.mmap(fd, offset + length, access=mmap.ACCESS_READ) as view:
            mv = memoryview(view)
            for i in range(offset, offset + length, COPY_CHUNK):
                digest.update(mv[i:min(i + COPY_CHUNK, offset + length)])
            mv.release()
    return digest.digest()


def _copy_in_kernel(src: BinaryIO, dst: BinaryIO, length: int, progress, hash_it: bool = True) -> bytes | None:
    dst.flush()
    src_off, dst_off = src.tell(), dst.tell()
    if os.fstat(src.fileno()).st_size < src_off + length:
        raise PackError("the GGUF is shorter than it was a moment ago; was it modified while packing?")
    with ThreadPoolExecutor(max_workers=1) as hasher:
        digest = hasher.submit(_hash_mapped, src.fileno(), src_off, length) if hash_it else None
        done = 0
        try:
            while done < length:
                n = os.copy_file_range(src.fileno(), dst.fileno(), min(COPY_CHUNK * 4, length - done),
                                       src_off + done, dst_off + done)
                if n == 0:
                    raise PackError(f"the GGUF ended {length - done} bytes early")
                done += n
                if progress:
                    progress(n)
        except OSError:
            if done:  # a partial kernel copy: finish the rest in Python
                src.seek(src_off + done)
                dst.seek(dst_off + done)
                _copy_in_python(src, dst, length - done, progress)
                done = length
            else:
                if digest is not None:
                    digest.cancel()
                raise
        result = digest.result() if digest is not None else None
    src.seek(src_off + length)
    dst.seek(dst_off + length)
    return result


def _copy_in_python(src: BinaryIO, dst: BinaryIO | None, length: int, progress) -> bytes:
    digest = hashlib.sha256()
    pending = None
    with ThreadPoolExecutor(max_workers=1) as hasher:
        left = length
        while left:
            chunk = src.read(min(COPY_CHUNK, left))
            if not chunk:
                raise PackError(f"the GGUF ended {left} bytes early; was it modified while packing?")
            if pending is not None:
                pending.result()
            pending = hasher.submit(digest.update, chunk)
            if dst is not None:
                dst.write(chunk)
            left -= len(chunk)
            if progress:
                progress(len(chunk))
        if pending is not None:
            pending.result()
    return digest.digest()


def _manifest_bytes(manifest: dict, sha256: bytes, size: int) -> bytes:
    full = json.loads(json.dumps(manifest))
    full.setdefault("model", {}).update(sha256=sha256.hex(), size=size)
    full["format"] = fmt.FORMAT_VERSION
    return json.dumps(full, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _payload_writer(gguf: Path, manifest: dict, sidecar: Path | None, progress, result: dict):
    def write(out: BinaryIO) -> None:
        size = gguf.stat().st_size
        with open(gguf, "rb") as src:
            if sidecar is None:
                out.write(b"\0" * ((-out.tell()) % fmt.PAYLOAD_ALIGN))
                offset = out.tell()
                digest = copy_hashing(src, out, size, progress)
                flags = 0
            else:
                offset, flags = 0, fmt.FLAG_SIDECAR
                with open(sidecar, "wb") as side:
                    digest = copy_hashing(src, side, size, progress)
        body = _manifest_bytes(manifest, digest, size)
        manifest_offset = out.tell()
        out.write(body)
        out.write(fmt.Trailer(fmt.FORMAT_VERSION, flags, offset, size, manifest_offset, len(body), digest).pack())
        result.update(offset=offset, sha256=digest.hex())
    return write


def _thin_macho(stub: Path, work: Path) -> Path:
    """The arm64 slice of a universal macOS stub, as a file of its own."""
    with open(stub, "rb") as f:
        head = f.read(4096)
        if struct.unpack(">I", head[:4])[0] != macho.FAT_MAGIC:
            return stub
        offset, size = macho.thin_arm64(head, f)
        thin = work / (stub.name + ".arm64")
        with open(thin, "wb") as out:
            copy_range(f, out, size, offset)
    return thin


def pack(stub: Path, gguf: Path, out: Path, manifest: dict, *, sidecar: bool = False,
         progress: Callable[[int], None] | None = None) -> PackResult:
    """Write `out` (and `out`'s NAME.gguf when sidecar) from a bare stub and a GGUF."""
    t0 = time.perf_counter()
    stub, gguf, out = Path(stub), Path(gguf), Path(out)
    size = stub.stat().st_size
    with open(stub, "rb") as f:
        kind = stub_format(f.read(4))
        # A universal macOS stub is thinned first; its archive is found in the arm64 slice.
        archive = None if kind == "macho" else fmt.find_archive(f, size)
    if kind == "pe" and not sidecar and size + gguf.stat().st_size + EXE_MARGIN >= WINDOWS_EXE_LIMIT:
        raise PackError("internal: the caller must choose sidecar mode for Windows builds of 4 GiB or more")

    out.parent.mkdir(parents=True, exist_ok=True)
    side = fmt.sidecar_path(out) if sidecar else None
    tmp = out.with_name(out.name + ".part")
    side_tmp = side.with_name(side.name + ".part") if side else None
    result: dict = {}
    notes: list[str] = []
    try:
        writer = _payload_writer(gguf, manifest, side_tmp, progress, result)
        source = stub
        if kind == "macho":
            source = _thin_macho(stub, out.parent)
            if source != stub:
                notes.append("took the arm64 slice of the universal macOS stub")
            with open(source, "rb") as f:
                archive = fmt.find_archive(f, source.stat().st_size)
        with open(source, "rb") as src, open(tmp, "wb") as dst:
            if kind == "elf":
                elf.insert_section(src, dst, writer, archive.start)
            elif kind == "pe":
                if pe.insert_before_archive(src, dst, writer, archive.start, size):
                    notes.append(f"the stub's Authenticode signature was removed (it covers the model too): "
                                 f"sign {out.name} again before handing it out")
            else:
                macho.insert_before_archive(src, dst, writer, archive.start, archive.end)
        if source != stub:
            source.unlink()
        if kind == "pe":
            pe.fix_checksum(tmp)
            notes.append(f"{out.name} is not Authenticode-signed: Windows SmartScreen and antivirus may warn "
                         "until it is (signtool sign ...)")
        elif kind == "macho":
            signer = macho.sign_adhoc(tmp, manifest.get("name") or out.name)
            notes.append(f"signed ad hoc with {signer}: it runs, but Gatekeeper asks users to allow it "
                         "(right-click > Open) unless it is signed with a Developer ID and notarised")
        os.chmod(tmp, os.stat(stub).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        epoch = os.environ.get("SOURCE_DATE_EPOCH")
        for path in (tmp, side_tmp):
            if path and epoch:
                os.utime(path, (int(epoch), int(epoch)))
        os.replace(tmp, out)
        if side and side_tmp:
            os.replace(side_tmp, side)
    finally:
        for path in (tmp, side_tmp):
            if path and path.exists():
                path.unlink()
    fmt.read_payload(out)  # what we wrote must read back
    return PackResult(out, side, result["offset"], gguf.stat().st_size, result["sha256"],
                      time.perf_counter() - t0, kind, tuple(notes))


def needs_sidecar_for_windows(stub_size: int, gguf_size: int) -> bool:
    return stub_size + gguf_size + EXE_MARGIN >= WINDOWS_EXE_LIMIT
