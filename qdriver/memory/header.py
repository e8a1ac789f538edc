"""libvirt's save-image layout for external memory files (``virsh save`` files).

A 92-byte header (magic, version 2, data length, was-running, format 0 = raw,
cookie offset, zeros), then the domain XML and the cookie, each
NUL-terminated, then 64 KiB of zero padding (room for later XML edits), then
the QEMU migration stream.  The magic reads ``LibvirtQemudPart`` while the
stream is written and becomes ``LibvirtQemudSave`` once it is complete, so
an interrupted save is recognisable as incomplete.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

MAGIC_PARTIAL = b"LibvirtQemudPart"
MAGIC_COMPLETE = b"LibvirtQemudSave"
VERSION = 2
HEADER = struct.Struct("=16s5I56x")
PADDING = 64 * 1024
FORMAT_RAW = 0


@dataclass(frozen=True)
class SaveHeader:
    """The parsed header of a save image."""

    complete: bool
    data_len: int
    was_running: bool
    format: int
    domain_xml: str
    cookie: str

    @property
    def stream_offset(self) -> int:
        """Where the QEMU migration stream starts."""
        return HEADER.size + self.data_len


def write_header(fd: int, domain_xml: str, cookie: str, was_running: bool) -> int:
    """Write the partial header and data region at the start of ``fd``.

    Returns the offset where the migration stream must begin; ``fd`` is left
    positioned there, ready to be handed to QEMU.
    """
    xml = domain_xml.encode() + b"\0"
    ck = cookie.encode() + b"\0"
    data = xml + ck + b"\0" * PADDING
    header = HEADER.pack(MAGIC_PARTIAL, VERSION, len(data), int(was_running), FORMAT_RAW,
                         len(xml))
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, header + data)
    return HEADER.size + len(data)


def mark_complete(fd: int) -> None:
    """Rewrite the magic: the stream is complete.  Flushes the file first."""
    os.fsync(fd)
    os.pwrite(fd, MAGIC_COMPLETE, 0)
    os.fsync(fd)


def read_header(path: str | os.PathLike[str]) -> SaveHeader:
    """Parse a save image's header; ValueError if it is not one."""
    with open(path, "rb") as f:
        raw = f.read(HEADER.size)
        if len(raw) < HEADER.size:
            raise ValueError("file too short for a save image header")
        magic, version, data_len, was_running, fmt, cookie_off = HEADER.unpack(raw)
        if magic not in (MAGIC_PARTIAL, MAGIC_COMPLETE):
            raise ValueError("image magic is incorrect")
        if version != VERSION:
            raise ValueError(f"image version is not supported ({version} > {VERSION})")
        data = f.read(data_len)
    xml = data[:cookie_off].rstrip(b"\0").decode()
    cookie = data[cookie_off:].split(b"\0", 1)[0].decode()
    return SaveHeader(magic == MAGIC_COMPLETE, data_len, bool(was_running), fmt, xml, cookie)


def rewrite_xml(path: str | os.PathLike[str], domain_xml: str,
                was_running: bool | None = None) -> None:
    """Replace the domain XML (and optionally the was-running flag) of a complete save
    image in place; the new XML must fit the room the header reserved."""
    header = read_header(path)
    xml = domain_xml.encode() + b"\0"
    ck = header.cookie.encode() + b"\0"
    if len(xml) + len(ck) > header.data_len:
        raise ValueError(f"the new XML needs {len(xml) + len(ck)} bytes; the image has room "
                         f"for {header.data_len}")
    data = (xml + ck).ljust(header.data_len, b"\0")
    running = header.was_running if was_running is None else was_running
    raw = HEADER.pack(MAGIC_COMPLETE if header.complete else MAGIC_PARTIAL, VERSION,
                      header.data_len, int(running), header.format, len(xml))
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, raw + data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
