"""torch.save zip archives (the default since torch 1.6): `<stem>/data.pkl` plus `data/<key>`."""

from __future__ import annotations

import io
import mmap
import os
import struct
import zipfile
import zlib
from typing import Any, Callable, Collection, NamedTuple

from bufinspect.errors import InputError
from bufinspect.formats import _files, _torch_common, _unpickle
from bufinspect.formats._unpickle import brief, storage_from_pid
from bufinspect.formats._values import values_of
from bufinspect.formats._walk import containers_of
from bufinspect.model import Checkpoint, Format

_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
_LOCAL_SPAN = struct.Struct("<4s22xHH")  # a local header's signature, name and extra lengths
_END = struct.Struct("<4s4H2LH")  # end of central directory record
_END64_LOCATOR = struct.Struct("<4sLQL")
_END64 = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")  # one central directory record
# the fields of one that bufinspect uses: signature, version needed, flags, method, CRC,
# sizes, name/extra/comment lengths, local header offset
_CENTRAL_USED = struct.Struct("<4s2xBxHH4x3L3H8xL")
_EXTRACT_VERSION = 63  # the newest zip version zipfile reads (zipfile.MAX_EXTRACT_VERSION)
# what zipfile raises on a corrupt archive (a new version, encryption, a broken deflate stream)
_ZIP_ERRORS = (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError,
               RuntimeError, zlib.error, struct.error)
_MAX_RATIO = 64  # a compressed pickle that inflates more than this is a zip bomb
# a central directory read in one pass at most this large (a million tensors' is ~60 MB):
# beyond it zipfile reads it, never a second copy of a file-sized directory in memory
_MAX_FAST_DIRECTORY = 256 << 20


class Member(NamedTuple):
    """The fields of a zip directory record bufinspect uses (the names zipfile.ZipInfo uses)."""

    filename: str
    header_offset: int
    compress_size: int
    file_size: int
    compress_type: int
    CRC: int
    flag_bits: int


_new_member = tuple.__new__  # builds a Member without a Python-level __new__ per record


def _directory(fd: int, size: int) -> dict[str, Member] | None:
    """The central directory of a plain archive as torch.save writes it (no comment, nothing
    before the first member, one disk), read in one pass: zipfile builds a ZipInfo per member,
    a third of a 50,000-tensor load. None for anything else: zipfile then reads (or refuses) it."""
    if size < _END.size:
        return None
    end = os.pread(fd, _END.size, size - _END.size)
    sig, disk, cd_disk, _, count, cd_size, cd_offset, comment = _END.unpack(end)
    if sig != b"PK\x05\x06" or comment or disk or cd_disk:
        return None
    end_at = size - _END.size
    at = end_at - _END64_LOCATOR.size  # torch.save always writes zip64 records; zipfile
    if at >= _END64.size:              # reads them whenever the locator is there
        sig, disk, end64_at, disks = _END64_LOCATOR.unpack(os.pread(fd, _END64_LOCATOR.size, at))
        if sig == b"PK\x06\x07":
            if disk or disks != 1 or end64_at != at - _END64.size:
                return None
            sig, _, _, _, disk, cd_disk, _, count, cd_size, cd_offset = _END64.unpack(
                os.pread(fd, _END64.size, end64_at))
            if sig != b"PK\x06\x06" or disk or cd_disk:
                return None
            end_at = end64_at
    if cd_offset + cd_size != end_at:  # data before the archive or between its parts
        return None
    if cd_size > _MAX_FAST_DIRECTORY:  # (its names are sliced from a decoded copy)
        return None
    cd = os.pread(fd, cd_size, cd_offset)
    if len(cd) != cd_size:
        return None
    infos: dict[str, Member] = {}
    unpack, record, pos, n, records = _CENTRAL_USED.unpack_from, _CENTRAL.size, 0, len(cd), 0
    text = cd.decode("latin-1")  # one character per byte: ASCII names are sliced from it
    while pos < n:
        if pos + record > n:
            return None
        (sig, version, flags, method, crc, csize, fsize, name_len, extra_len, comment_len,
         offset) = unpack(cd, pos)
        start = pos + record
        pos = start + name_len + extra_len + comment_len
        if sig != b"PK\x01\x02" or version > _EXTRACT_VERSION or pos > n:
            return None
        name = text[start: start + name_len]
        if not name.isascii():  # (ASCII reads the same in utf-8 and cp437)
            try:
                name = cd[start: start + name_len].decode("utf-8" if flags & 0x800 else "cp437")
            except UnicodeDecodeError:
                return None
        if extra_len:
            sizes = _zip64(cd[start + name_len: start + name_len + extra_len], fsize, csize,
                           offset)
            if sizes is None:
                return None
            fsize, csize, offset = sizes
        infos[name] = _new_member(Member, (name, offset, csize, fsize, method, crc, flags))
        records += 1
    # a name twice (zipfile lists both; the archive check names the problem) or with a NUL
    if len(infos) != records or "\x00" in "".join(infos):
        return None
    return infos if records == count else None


def _zip64(extra: bytes, fsize: int, csize: int, offset: int) -> tuple[int, int, int] | None:
    """Sizes and offset after the zip64 extra field, as zipfile decodes it; None if corrupt."""
    while len(extra) >= 4:
        tp, ln = struct.unpack_from("<HH", extra)
        if ln + 4 > len(extra):
            return None
        if tp == 1:
            data = extra[4: ln + 4]
            try:
                if fsize in (0xFFFFFFFFFFFFFFFF, 0xFFFFFFFF):
                    (fsize,), data = struct.unpack_from("<Q", data), data[8:]
                if csize == 0xFFFFFFFF:
                    (csize,), data = struct.unpack_from("<Q", data), data[8:]
                if offset == 0xFFFFFFFF:
                    (offset,), data = struct.unpack_from("<Q", data), data[8:]
            except struct.error:
                return None
        extra = extra[ln + 4:]
    return fsize, csize, offset


def _unsafe_names(names: Collection[str]) -> list[str]:
    """Member names that point outside the archive (absolute, backslashes, a `..` part)."""
    joined = "\x00".join(names)  # one search over all names first: they are rarely unsafe
    if not (joined.startswith("/") or "\x00/" in joined or "\\" in joined or ".." in joined):
        return []
    return [n for n in names if n.startswith("/") or "\\" in n
            or (".." in n and ".." in n.split("/"))]


class ZipArchive:
    """The parts of a zip directory bufinspect needs: member sizes and raw data offsets."""

    def __init__(self, path: str):
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        self._zip_file: Any = None
        self._map: mmap.mmap | None = None
        self.fd = _files.open_fd(path)  # a regular file only (never a FIFO or a device)
        try:
            self.size = os.fstat(self.fd).st_size
            infos: dict[str, Any] | None = _directory(self.fd, self.size)
            if infos is None:  # anything unusual: zipfile reads it, or says what is wrong
                self.zip = self._open_zipfile()
                listed = self.zip.infolist()
                infos = {i.filename: i for i in listed}
                if len(infos) != len(listed):
                    raise InputError("zip archive has two members with the same name", path)
        except _ZIP_ERRORS as exc:
            self.close()
            raise InputError(f"not a readable zip archive ({exc})", path) from None
        except InputError:
            self.close()
            raise
        self.infos = infos
        unsafe = _unsafe_names(infos)
        if unsafe:
            self.close()
            raise InputError(f"zip member name {brief(unsafe[0])} points outside the archive",
                             path)
        names = list(self.infos)
        self.prefix = names[0].split("/", 1)[0] + "/" if names and "/" in names[0] else ""

    def _open_zipfile(self) -> zipfile.ZipFile:
        """zipfile over the already opened descriptor (the name is not opened twice)."""
        self._zip_file = os.fdopen(os.dup(self.fd), "rb")
        return zipfile.ZipFile(self._zip_file)

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()
        if self._zip_file is not None:
            self._zip_file.close()
        if self._map is not None:
            self._map.close()
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
            if isinstance(info, Member) and info.compress_type == zipfile.ZIP_STORED \
                    and info.compress_size == info.file_size:
                return self._read_stored(info)
            if self.zip is None:  # deflated (never from torch.save): zipfile inflates it
                self.zip = self._open_zipfile()
            return self.zip.read(name)
        except _ZIP_ERRORS as exc:
            raise InputError(f"cannot read {name} ({exc})", self.path) from None

    def _read_stored(self, info: Member) -> bytes:
        """A stored member's bytes, with the checks zipfile makes (header, name, flags, CRC)."""
        raw = os.pread(self.fd, _LOCAL_HEADER.size, info.header_offset)
        if len(raw) != _LOCAL_HEADER.size:
            raise zipfile.BadZipFile("Truncated file header")
        fields = _LOCAL_HEADER.unpack(raw)
        if fields[0] != b"PK\x03\x04":
            raise zipfile.BadZipFile("Bad magic number for file header")
        start = info.header_offset + _LOCAL_HEADER.size
        fname = os.pread(self.fd, fields[10], start)
        if info.flag_bits & 0x60:
            raise NotImplementedError("compressed patched data or strong encryption")
        if fname.decode("utf-8" if fields[3] & 0x800 else "cp437") != info.filename:
            raise zipfile.BadZipFile(f"File name in directory {info.filename!r} and header "
                                     f"{fname!r} differ.")
        if info.flag_bits & 0x1:
            raise RuntimeError(f"File {info.filename!r} is encrypted, password required for "
                               "extraction")
        data = os.pread(self.fd, info.file_size, start + fields[10] + fields[11])
        if len(data) != info.file_size:
            raise EOFError("the member is cut short")
        if zlib.crc32(data) != info.CRC:
            raise zipfile.BadZipFile(f"Bad CRC-32 for file {info.filename!r}")
        return data

    def storage_span(self, key: str) -> tuple[int, int] | None:
        """`data_span` of the storage named `key` (`<prefix>data/<key>`)."""
        return self.data_span(self.prefix + "data/" + key)

    def storage_spans(self) -> Callable[[str], tuple[int, int] | None]:
        """`storage_span` as a closure over locals, for the locator's once-per-storage call
        (100,000 in a large checkpoint): the same checks and messages as `data_span`."""
        infos_get, folder, size, path = self.infos.get, self.prefix + "data/", self.size, self.path
        unpack, headers, header_size = _LOCAL_SPAN.unpack_from, self._map, _LOCAL_HEADER.size

        def span(key: str) -> tuple[int, int] | None:
            nonlocal headers
            name = folder + key
            info = infos_get(name)
            if info is None:
                return None
            if info.compress_type != zipfile.ZIP_STORED:
                raise InputError(f"{name} is compressed; torch.save never compresses tensor "
                                 "data", path)
            at = info.header_offset
            if at + header_size > size:
                raise InputError(f"corrupt zip header for {name}", path)
            if headers is None:  # (mapped on the first storage, as `data_span` does)
                if self._map is None:
                    self._map = mmap.mmap(self.fd, 0, access=mmap.ACCESS_READ)
                headers = self._map
            sig, name_len, extra_len = unpack(headers, at)
            if sig != b"PK\x03\x04":
                raise InputError(f"corrupt zip header for {name}", path)
            start = at + header_size + name_len + extra_len
            if start + info.file_size > size:
                raise InputError(f"{name} claims {info.file_size} bytes past the end of the "
                                 "file", path)
            return start, info.file_size

        return span

    def data_span(self, name: str) -> tuple[int, int] | None:
        """(offset, length) of a stored (uncompressed) member's bytes in the file."""
        info = self.infos.get(name)
        if info is None:
            return None
        if info.compress_type != zipfile.ZIP_STORED:
            raise InputError(f"{name} is compressed; torch.save never compresses tensor data",
                             self.path)
        at = info.header_offset
        if at + _LOCAL_HEADER.size > self.size:
            raise InputError(f"corrupt zip header for {name}", self.path)
        if self._map is None:  # headers read from a map: a pread each cost 2.5 us (100k tensors)
            self._map = mmap.mmap(self.fd, 0, access=mmap.ACCESS_READ)
        sig, name_len, extra_len = _LOCAL_SPAN.unpack_from(self._map, at)
        if sig != b"PK\x03\x04":
            raise InputError(f"corrupt zip header for {name}", self.path)
        start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
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
        locate = _torch_common.make_locator(path, path, arc.storage_spans())
        containers = containers_of(obj, path, locate)
        return Checkpoint(path=path, format=Format.TORCH_ZIP, size=arc.size,
                          containers=containers, foreign_globals=tuple(sorted(set(log.globals))),
                          values=values_of(obj),
                          calls=_unpickle.call_counts(log))
    finally:
        arc.close()
