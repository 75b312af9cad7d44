"""torch.save zip archives (the default since torch 1.6): `<stem>/data.pkl` plus `data/<key>`."""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib

from bufinspect.errors import InputError
from bufinspect.formats import _torch_common
from bufinspect.formats._unpickle import brief, storage_from_pid
from bufinspect.formats._walk import containers_of
from bufinspect.model import Checkpoint, Format

_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
# what zipfile raises on a corrupt archive (a new version, encryption, a broken deflate stream)
_ZIP_ERRORS = (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError,
               RuntimeError, zlib.error, struct.error)
_MAX_RATIO = 64  # a compressed pickle that inflates more than this is a zip bomb


class ZipArchive:
    """The parts of a zip directory bufinspect needs: member sizes and raw data offsets."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
        except _ZIP_ERRORS as exc:
            raise InputError(f"not a readable zip archive ({exc})", path) from None
        self.size = os.path.getsize(path)
        self.fd = os.open(path, os.O_RDONLY)
        self.infos = {i.filename: i for i in self.zip.infolist()}
        if len(self.infos) != len(self.zip.infolist()):
            self.close()
            raise InputError("zip archive has two members with the same name", path)
        unsafe = [n for n in self.infos if n.startswith(("/", "\\")) or "\\" in n
                  or ".." in n.split("/")]
        if unsafe:
            self.close()
            raise InputError(f"zip member name {brief(unsafe[0])} points outside the archive",
                             path)
        names = list(self.infos)
        self.prefix = names[0].split("/", 1)[0] + "/" if names and "/" in names[0] else ""

    def close(self) -> None:
        self.zip.close()
        os.close(self.fd)

    def has(self, name: str) -> bool:
        return name in self.infos

    def read(self, name: str, limit: int = 1 << 30) -> bytes:
        info = self.infos.get(name)
        if info is None:
            raise InputError(f"archive has no {name}", self.path)
        if info.file_size > limit or info.file_size > max(self.size, 1) * 1100 or (
                info.compress_type != zipfile.ZIP_STORED
                and info.file_size > max(info.compress_size, 1) * _MAX_RATIO):
            raise InputError(f"{name} declares {info.file_size} bytes; refusing to inflate it",
                             self.path)
        try:
            return self.zip.read(info)
        except _ZIP_ERRORS as exc:
            raise InputError(f"cannot read {name} ({exc})", self.path) from None

    def data_span(self, name: str) -> tuple[int, int] | None:
        """(offset, length) of a stored (uncompressed) member's bytes in the file."""
        info = self.infos.get(name)
        if info is None:
            return None
        if info.compress_type != zipfile.ZIP_STORED:
            raise InputError(f"{name} is compressed; torch.save never compresses tensor data",
                             self.path)
        raw = os.pread(self.fd, _LOCAL_HEADER.size, info.header_offset)
        if len(raw) != _LOCAL_HEADER.size or raw[:4] != b"PK\x03\x04":
            raise InputError(f"corrupt zip header for {name}", self.path)
        fields = _LOCAL_HEADER.unpack(raw)
        start = info.header_offset + _LOCAL_HEADER.size + fields[10] + fields[11]
        if start + info.file_size > self.size:
            raise InputError(f"{name} claims {info.file_size} bytes past the end of the file",
                             self.path)
        return start, info.file_size


def read(path: str, arc: ZipArchive | None = None) -> Checkpoint:
    arc = arc or ZipArchive(path)
    try:
        pkl = arc.prefix + "data.pkl"
        if not arc.has(pkl):
            found = [n for n in arc.infos if n.endswith("/data.pkl")]
            if not found:
                raise InputError("zip archive without data.pkl: not a torch.save file", path)
            pkl = found[0]
            arc.prefix = pkl[: -len("data.pkl")]
        raw = arc.read(pkl)
        obj, log = _torch_common.unpickle(path, io.BytesIO(raw), storage_from_pid)
        _torch_common.refuse_calls(path, log)
        locate = _torch_common.make_locator(
            path, path, lambda key: arc.data_span(f"{arc.prefix}data/{key}"))
        containers = containers_of(obj, path, locate)
        return Checkpoint(path=path, format=Format.TORCH_ZIP, size=arc.size,
                          containers=containers, foreign_globals=tuple(sorted(set(log.globals))))
    finally:
        arc.close()
