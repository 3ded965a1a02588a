"""Pack into a macOS (Mach-O) stub: the payload goes inside __LINKEDIT, before PyInstaller's archive.

A PyInstaller onefile for macOS is the bootloader with its archive appended
and __LINKEDIT extended to the end of the file, then code-signed. arm64 macOS
kills unsigned binaries, so packing:

1. takes the arm64 slice of a universal binary (a furoshiki stub per platform);
2. drops LC_CODE_SIGNATURE and the signature data at the end of the file;
3. inserts the payload before the archive and grows __LINKEDIT to cover it;
4. signs the result ad hoc again (`codesign -s -` on a Mac; elsewhere
   apple-platform-py, a binding to rcodesign). Without a signer it refuses,
   rather than write a binary macOS would kill at launch.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from builder.fileio import copy_range
from runtime.errors import FuroshikiError

MH_MAGIC_64 = 0xFEEDFACF
FAT_MAGIC = 0xCAFEBABE
CPU_TYPE_ARM64 = 0x0100000C
LC_SEGMENT_64 = 0x19
LC_CODE_SIGNATURE = 0x1D
HEADER = struct.Struct("<IiiIIIII")           # mach_header_64
SEGMENT = struct.Struct("<II16sQQQQiiII")     # segment_command_64
LINKEDIT_DATA = struct.Struct("<IIII")        # linkedit_data_command
PAGE = 0x4000                                 # arm64 pages are 16 KiB


class MachOError(FuroshikiError):
    pass


def thin_arm64(data_head: bytes, f: BinaryIO) -> tuple[int, int]:
    """(offset, size) of the arm64 slice of a universal binary."""
    count = struct.unpack(">I", data_head[4:8])[0]
    for i in range(count):
        cputype, _, offset, size, _ = struct.unpack(">iiIII", data_head[8 + 20 * i:28 + 20 * i])
        if cputype == CPU_TYPE_ARM64:
            return offset, size
    raise MachOError("this universal stub has no arm64 slice")


@dataclass
class _Commands:
    raw: bytearray            # header + load commands
    linkedit_offset: int      # where __LINKEDIT's segment_command_64 starts in raw
    signature: tuple[int, int] | None   # (dataoff, datasize)


def _parse(head: bytes) -> _Commands:
    magic, _, _, _, ncmds, sizeofcmds, _, _ = HEADER.unpack_from(head)
    if magic != MH_MAGIC_64:
        raise MachOError("only 64-bit Mach-O stubs are supported")
    raw = bytearray(head[:HEADER.size + sizeofcmds])
    pos, linkedit, signature = HEADER.size, None, None
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", raw, pos)
        if cmd == LC_SEGMENT_64 and SEGMENT.unpack_from(raw, pos)[2].rstrip(b"\0") == b"__LINKEDIT":
            linkedit = pos
        elif cmd == LC_CODE_SIGNATURE:
            signature = LINKEDIT_DATA.unpack_from(raw, pos)[2:]
        pos += size
    if linkedit is None:
        raise MachOError("no __LINKEDIT segment: not a PyInstaller stub for macOS")
    return _Commands(raw, linkedit, signature)


def _drop_signature(c: _Commands) -> None:
    """Remove LC_CODE_SIGNATURE from the load commands (the signer adds a fresh one)."""
    magic, cpu, sub, ftype, ncmds, sizeofcmds, flags, res = HEADER.unpack_from(c.raw)
    pos = HEADER.size
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", c.raw, pos)
        if cmd == LC_CODE_SIGNATURE:
            end = HEADER.size + sizeofcmds
            c.raw[pos:end] = c.raw[pos + size:end] + b"\0" * size
            HEADER.pack_into(c.raw, 0, magic, cpu, sub, ftype, ncmds - 1, sizeofcmds - size, flags, res)
            if c.linkedit_offset > pos:
                c.linkedit_offset -= size
            return
        pos += size


def insert_before_archive(stub: BinaryIO, out: BinaryIO, write_payload: Callable[[BinaryIO], None],
                          archive_start: int, archive_end: int, base: int = 0) -> None:
    """`base` is where the thin binary starts in `stub` (a slice of a universal one); offsets are relative."""
    stub.seek(base)
    head = stub.read(64 * 1024)
    c = _parse(head)
    _, _, name, vmaddr, vmsize, fileoff, filesize, maxprot, initprot, nsects, flags = \
        SEGMENT.unpack_from(c.raw, c.linkedit_offset)
    end = archive_end
    if c.signature:
        dataoff, datasize = c.signature
        if dataoff < archive_end:
            raise MachOError("the stub's code signature sits before PyInstaller's archive; unexpected layout")
        _drop_signature(c)
    if archive_start < fileoff:
        raise MachOError("PyInstaller's archive is not inside __LINKEDIT")
    out.write(c.raw)
    stub.seek(base + len(c.raw))
    copy_range(stub, out, archive_start - len(c.raw))
    write_payload(out)
    inserted = out.tell() - archive_start
    copy_range(stub, out, end - archive_start, base + archive_start)
    new_size = filesize + (end - (fileoff + filesize)) + inserted
    SEGMENT.pack_into(c.raw, c.linkedit_offset, LC_SEGMENT_64, SEGMENT.size + 80 * nsects, name, vmaddr,
                      -(-new_size // PAGE) * PAGE, fileoff, new_size, maxprot, initprot, nsects, flags)
    out.seek(0)
    out.write(c.raw)
    out.seek(0, 2)


def strip_signature(path: Path) -> None:
    """Remove a thin Mach-O's code signature in place (what `codesign --remove-signature` does)."""
    with open(path, "r+b") as f:
        c = _parse(f.read(64 * 1024))
        if c.signature is None:
            return
        _drop_signature(c)
        f.seek(0)
        f.write(c.raw)
        f.truncate(c.signature[0])


def sign_adhoc(path: Path, identifier: str) -> str:
    """Ad-hoc sign in place; return which signer did it. Raises MachOError if none is available."""
    if shutil.which("codesign"):
        subprocess.run(["codesign", "-s", "-", "--force", "-i", identifier, str(path)], check=True,
                       capture_output=True)
        return "codesign"
    try:
        import apple_platform
    except ImportError:
        raise MachOError("no Mach-O signer here: macOS kills unsigned arm64 programs, so this build was not "
                         "written. Install apple-platform-py (pip install 'furoshiki[build]') or pack on a Mac"
                         ) from None
    try:
        apple_platform.sign(str(path), binary_identifier=identifier)
    except apple_platform.ApplePlatformError as exc:
        raise MachOError(f"ad-hoc signing failed: {exc}") from None
    return "apple-platform-py (rcodesign)"
