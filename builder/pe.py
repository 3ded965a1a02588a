"""Pack into a Windows (PE) stub: the payload goes into the overlay, before PyInstaller's archive.

PyInstaller appends its archive to the bootloader as a PE overlay (bytes past
the last section), so bytes inserted between the image and the archive need
no header change. Two things do:

* An Authenticode signature (the Security data directory, a *file offset*
  to a certificate table at the very end) covers the overlay, so it cannot
  survive packing: it is removed, and the result must be signed again.
* The optional header's CheckSum is recomputed over the new file.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from builder.fileio import copy_range
from runtime.errors import FuroshikiError

SECURITY_DIRECTORY = 4   # IMAGE_DIRECTORY_ENTRY_SECURITY
CHUNK = 16 * 1024 * 1024


class PEError(FuroshikiError):
    pass


@dataclass(frozen=True)
class PELayout:
    checksum_offset: int          # file offset of OptionalHeader.CheckSum
    security_entry_offset: int    # file offset of the Security data directory entry (0 if absent)
    cert_offset: int              # file offset of the certificate table (0 if unsigned)
    cert_size: int
    overlay_start: int


def read_layout(f: BinaryIO, size: int) -> PELayout:
    """Parse just what packing needs, with pefile (header only: it maps the file, reads no sections)."""
    import pefile

    f.seek(0)
    head = f.read(min(size, 64 * 1024))
    try:
        pe = pefile.PE(data=head, fast_load=True)
    except pefile.PEFormatError as exc:
        raise PEError(f"not a valid Windows executable: {exc}") from None
    opt = pe.OPTIONAL_HEADER
    checksum_offset = opt.get_field_absolute_offset("CheckSum")
    security_entry_offset = cert_offset = cert_size = 0
    if len(opt.DATA_DIRECTORY) > SECURITY_DIRECTORY:
        entry = opt.DATA_DIRECTORY[SECURITY_DIRECTORY]
        security_entry_offset = entry.get_file_offset()
        cert_offset, cert_size = entry.VirtualAddress, entry.Size   # a file offset, for this directory
    last = max((s.PointerToRawData + s.SizeOfRawData for s in pe.sections), default=0)
    if cert_size and cert_offset + cert_size != size:
        raise PEError("the stub's Authenticode signature is not at the end of the file; cannot remove it safely")
    return PELayout(checksum_offset, security_entry_offset, cert_offset, cert_size, last)


def insert_before_archive(stub: BinaryIO, out: BinaryIO, write_payload: Callable[[BinaryIO], None],
                          archive_start: int, size: int) -> bool:
    """Write `stub` to `out` with the payload before the archive; return True if a signature was removed."""
    layout = read_layout(stub, size)
    if archive_start < layout.overlay_start:
        raise PEError("PyInstaller's archive is not in the overlay; not a PyInstaller onefile stub")
    end = layout.cert_offset if layout.cert_size else size
    copy_range(stub, out, archive_start, 0)
    write_payload(out)
    copy_range(stub, out, end - archive_start, archive_start)
    if layout.cert_size:
        out.seek(layout.security_entry_offset)
        out.write(b"\0" * 8)   # no certificate table any more
    out.seek(0, 2)
    return bool(layout.cert_size)


def pe_checksum(f: BinaryIO, checksum_offset: int, size: int) -> int:
    """The PE optional-header checksum: a 16-bit one's-complement sum of the file, plus its length.

    Equivalent to pefile's generate_checksum(), which loops in Python over
    every 32-bit word and takes minutes on a multi-gigabyte file.
    """
    total = 0
    f.seek(0)
    position = 0
    while position < size:
        chunk = bytearray(f.read(min(CHUNK, size - position)))
        lo, hi = checksum_offset - position, checksum_offset + 4 - position
        if hi > 0 and lo < len(chunk):     # the CheckSum field itself counts as zero
            chunk[max(lo, 0):min(hi, len(chunk))] = bytes(min(hi, len(chunk)) - max(lo, 0))
        if len(chunk) % 2:
            chunk.append(0)
        total += int(np.frombuffer(bytes(chunk), dtype="<u2").sum(dtype=np.uint64))
        position += CHUNK
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (total + size) & 0xFFFFFFFF


def fix_checksum(path) -> int:
    with open(path, "r+b") as f:
        f.seek(0, 2)
        size = f.tell()
        layout = read_layout(f, size)
        value = pe_checksum(f, layout.checksum_offset, size)
        f.seek(layout.checksum_offset)
        f.write(struct.pack("<I", value))
    return value
