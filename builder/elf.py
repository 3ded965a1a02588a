"""Insert a section into a PyInstaller ELF stub, just before its `pydata` archive section.

PyInstaller keeps its archive in a non-loadable section named `pydata`, with
only `.shstrtab` and the section header table after it. We rewrite that tail:

    stub:    [ image ............ ][ pydata ][ .shstrtab ][ section headers ]
    packed:  [ image ............ ][ furoshiki ][ pydata ][ .shstrtab + name ][ section headers + 1 ]

The image bytes (program headers, code, data) are untouched, the kernel never
looks at non-loadable sections, and `readelf -S` lists "furoshiki" with the
right offset and size. `objcopy --remove-section/--add-section` gives the same
result, but needs two full copies of a multi-gigabyte model; this does one,
hashing as it copies.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from typing import BinaryIO

from builder.fileio import copy_range
from runtime.errors import FuroshikiError

SECTION_NAME = b"furoshiki"
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")       # Elf64_Ehdr, little-endian
SHDR = struct.Struct("<IIQQQQIIQQ")             # Elf64_Shdr
SHT_NOBITS = 8
SHF_ALLOC = 2


class ElfError(FuroshikiError):
    pass


@dataclass(frozen=True)
class Section:
    name: bytes
    name_off: int
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int

    def pack(self) -> bytes:
        return SHDR.pack(self.name_off, self.type, self.flags, self.addr, self.offset, self.size, self.link,
                         self.info, self.addralign, self.entsize)


@dataclass(frozen=True)
class ElfLayout:
    header: tuple
    sections: list[Section]
    shstrndx: int
    pydata_index: int

    @property
    def pydata(self) -> Section:
        return self.sections[self.pydata_index]


def is_elf(head: bytes) -> bool:
    return head[:4] == b"\x7fELF"


def read_layout(f: BinaryIO) -> ElfLayout:
    f.seek(0)
    raw = f.read(EHDR.size)
    if not is_elf(raw):
        raise ElfError("not an ELF file")
    if raw[4] != 2 or raw[5] != 1:
        raise ElfError("only 64-bit little-endian ELF stubs are supported")
    header = EHDR.unpack(raw)
    shoff, shentsize, shnum, shstrndx = header[6], header[11], header[12], header[13]
    if shentsize != SHDR.size or shnum == 0 or shstrndx >= shnum:
        raise ElfError("the stub's ELF section header table is missing or unusual")
    f.seek(shoff)
    table = f.read(shnum * SHDR.size)
    rows = [SHDR.unpack_from(table, i * SHDR.size) for i in range(shnum)]
    strtab_row = rows[shstrndx]
    f.seek(strtab_row[4])
    strtab = f.read(strtab_row[5])
    sections = []
    for row in rows:
        end = strtab.find(b"\0", row[0])
        sections.append(Section(strtab[row[0]:end], *row))
    names = [s.name for s in sections]
    if SECTION_NAME in names:
        raise ElfError("this stub already carries a furoshiki payload; pack a bare stub")
    if b"pydata" not in names:
        raise ElfError("no 'pydata' section: not a PyInstaller onefile stub for Linux")
    return ElfLayout(header, sections, shstrndx, names.index(b"pydata"))


def insert_section(stub: BinaryIO, out: BinaryIO, write_payload, archive_start: int) -> int:
    """Write `stub` to `out` with a new section before pydata, filled by `write_payload(out)`.

    `write_payload(out)` is called with `out` positioned where the section
    starts and must write the whole section body. Returns that start offset.
    """
    layout = read_layout(stub)
    pydata = layout.pydata
    if pydata.offset != archive_start:
        raise ElfError("the PyInstaller archive is not where the 'pydata' section says it is")
    after = [s for s in layout.sections if s.offset > pydata.offset and s.type != SHT_NOBITS and s.size]
    if any(s.flags & SHF_ALLOC for s in after):
        raise ElfError("loadable sections follow 'pydata'; this stub layout is not supported")

    copy_range(stub, out, pydata.offset, 0)
    section_start = out.tell()
    write_payload(out)
    section_size = out.tell() - section_start

    sections = list(layout.sections)
    strtab = layout.sections[layout.shstrndx]
    # Rewrite everything from pydata on, in file order, shifted past the new section.
    for index, sec in sorted(enumerate(sections), key=lambda item: item[1].offset):
        if sec.offset < pydata.offset or sec.type == SHT_NOBITS or (sec.size == 0 and index != layout.pydata_index):
            continue
        if index == layout.shstrndx:
            continue  # written last, with the new name appended
        new_offset = out.tell()
        copy_range(stub, out, sec.size, sec.offset)
        sections[index] = replace(sec, offset=new_offset)
    stub.seek(strtab.offset)
    names = stub.read(strtab.size)
    name_off = len(names)
    new_strtab_offset = out.tell()
    out.write(names + SECTION_NAME + b"\0")
    sections[layout.shstrndx] = replace(strtab, offset=new_strtab_offset, size=len(names) + len(SECTION_NAME) + 1)
    sections.append(Section(SECTION_NAME, name_off, 1, 0, 0, section_start, section_size, 0, 0, 1, 0))

    pad = (-out.tell()) % 8
    out.write(b"\0" * pad)
    shoff = out.tell()
    for sec in sections:
        out.write(sec.pack())
    header = list(layout.header)
    header[6] = shoff
    header[12] = len(sections)
    out.seek(0)
    out.write(EHDR.pack(*header))
    out.seek(0, 2)
    return section_start
