"""Byte copying shared by the executable-format packers."""

from __future__ import annotations

from typing import BinaryIO

from runtime.errors import FuroshikiError

CHUNK = 16 * 1024 * 1024


class StubTruncated(FuroshikiError):
    pass


def copy_range(src: BinaryIO, dst: BinaryIO, length: int, offset: int | None = None) -> None:
    """Copy `length` bytes from `src` (at `offset`, or where it is) to `dst`'s position."""
    if offset is not None:
        src.seek(offset)
    while length:
        chunk = src.read(min(length, CHUNK))
        if not chunk:
            raise StubTruncated("the stub ended early; is it complete?")
        dst.write(chunk)
        length -= len(chunk)
