"""torch.distributed.checkpoint (DCP) folders: `.metadata` plus `__<rank>_<n>.distcp` files.

`.metadata` is a protocol-4 pickle of `Metadata`; DCP's own reader runs plain `pickle.load` on it.
Here a restricted unpickler that allows only the handful of classes DCP writes (each replaced by
an inert record, torch is never imported) lists every tensor's dtype, shape and chunks.

Each item of a `.distcp` file is its own torch.save zip at `storage_data[...].offset/length`.
The zip's directory is parsed from that byte range and its `data.pkl` read by bufinspect's
restricted torch unpickler, which gives the raw storage's place, dtype and saved device: entries
then point straight at the tensor bytes, and `stream.pieces` reads them like any other file.
A tensor saved in several chunks (FSDP, one per rank) gets one `TensorData` part per chunk.
Byte items (pickled Python objects) are counted in the metadata, never unpickled.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import struct
import zipfile
import zlib
from typing import Any

from bufinspect import dtypes
from bufinspect.errors import InputError, UnsafeInputError
from bufinspect.formats import _files, _prescan, _torch_common
from bufinspect.formats._unpickle import (DTypeRef, TensorRef, _Safe, brief, storage_from_pid,
                                          torch_dtype)
from bufinspect.model import (Checkpoint, Container, ContainerKind, Entry, Format, Role,
                              TensorData)

METADATA = ".metadata"
_MAX_METADATA = 1 << 30
_DCP_CLASSES = {"Metadata", "TensorStorageMetadata", "BytesStorageMetadata",
                "ChunkStorageMetadata", "TensorProperties", "MetadataIndex",
                "_MEM_FORMAT_ENCODING", "StorageMeta"}
_OPTIMIZER_PARTS = {"state", "param_groups"}
_SMALL_ITEM = 256 << 10


def looks_like(folder: str) -> bool:
    """True when `folder` holds a DCP `.metadata` file (a FIFO or a link there counts: it is
    refused by `read`, with a reason, rather than skipped)."""
    md = os.path.join(folder, METADATA)
    return os.path.lexists(md) and not os.path.isdir(md)


# ---- .metadata ------------------------------------------------------------------------------


class _Record:
    """An inert stand-in for one DCP class: keeps its state, runs nothing."""

    kind = "?"

    def __init__(self, *args: Any) -> None:  # only enum lookups such as _MEM_FORMAT_ENCODING(0)
        self.args = args
        self.state: Any = {}

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Record":
        self = object.__new__(cls)
        self.args = ()
        self.state = {}
        return self

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict) \
                and (state[0] is None or isinstance(state[0], dict)):
            state = {**(state[0] or {}), **state[1]}  # (dict, slots)
        self.state = state

    def get(self, name: str, default: Any = None) -> Any:
        return self.state.get(name, default) if isinstance(self.state, dict) else default


def _size(v: Any = ()) -> tuple[int, ...]:
    if not isinstance(v, (tuple, list)) or len(v) > 64 or not all(
            type(x) is int and 0 <= x < 1 << 62 for x in v):
        raise pickle.UnpicklingError(f"bad torch.Size {brief(v)}")  # never a repr: see brief
    if math.prod(x for x in v if x) >= 1 << 63:
        raise pickle.UnpicklingError(f"torch.Size {brief(v)} holds more than 2**63 elements")
    return tuple(v)


def _path(*parts: Any) -> str:
    if not all(isinstance(p, str) for p in parts):
        raise pickle.UnpicklingError("bad path")
    return "/".join(parts)


class _MetadataUnpickler(pickle.Unpickler):
    """Allows only DCP's metadata classes, torch.Size, dtypes, layouts and paths."""

    def __init__(self, file: Any):
        super().__init__(file)
        self._records: dict[str, type] = {}
        self._allowed = {
            ("torch", "Size"): _Safe("torch.Size", _size),
            ("torch.serialization", "_get_layout"): _Safe("_get_layout", lambda n="": str(n)),
            ("pathlib", "PosixPath"): _Safe("PosixPath", _path),
            ("pathlib", "PurePosixPath"): _Safe("PurePosixPath", _path),
            ("pathlib._local", "PosixPath"): _Safe("PosixPath", _path),
        }

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get((module, name))
        if found is not None:
            return found
        dt = torch_dtype(module, name)
        if dt is not None:
            return dt
        if (module == "torch.distributed.checkpoint.metadata" and name in _DCP_CLASSES) or (
                module == "torch.distributed.checkpoint.filesystem" and name == "_StorageInfo"):
            cls = self._records.get(name)
            if cls is None:
                cls = self._records[name] = type(name, (_Record,), {"kind": name})
            return cls
        raise _Refused(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("unexpected persistent id in DCP metadata")


class _Refused(pickle.UnpicklingError):
    pass


def read_metadata(path: str) -> _Record:
    """The `Metadata` record of a `.metadata` file, read without running anything."""
    with _files.open_file(path, within=os.path.dirname(path) or ".") as f:
        if _files.size_of(f) > _MAX_METADATA:
            raise InputError("DCP metadata is too large", path)
        raw = f.read()
    try:
        _prescan.scan(raw)  # before anything is hashed: deep keys, tuple towers, collisions
        md = _MetadataUnpickler(io.BufferedReader(io.BytesIO(raw))).load()  # (peek: prefetch)
    except _Refused as exc:
        raise UnsafeInputError(f"DCP metadata names {str(exc)[:100]}, which a DCP checkpoint "
                               "never needs; refusing it (nothing was run)", path) from None
    except _prescan.Refused as exc:
        raise InputError(f"refusing DCP metadata built to exhaust time or memory: {exc}",
                         path) from None
    except RecursionError:
        raise InputError("the pickle is nested too deeply", path) from None
    except MemoryError:
        raise InputError("the pickle needs more memory than a checkpoint should", path) \
            from None
    except Exception as exc:  # the pickle machine raises many types on corrupt input
        msg = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise InputError(f"corrupt DCP metadata ({msg})", path) from None
    if not isinstance(md, _Record) or md.kind != "Metadata" \
            or not isinstance(md.get("state_dict_metadata"), dict):
        raise InputError("not DCP metadata (no state_dict_metadata)", path)
    return md


# ---- items inside .distcp files ----------------------------------------------------------


class _Span(io.RawIOBase):
    """A read-only file view of bytes [start, start + length) of an open file descriptor."""

    def __init__(self, fd: int, start: int, length: int):
        self.fd, self.start, self.length, self.pos = fd, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.length}[whence]
        self.pos = max(0, base + pos)
        return self.pos

    def readinto(self, b: Any) -> int:
        n = max(0, min(len(b), self.length - self.pos))
        data = os.pread(self.fd, n, self.start + self.pos) if n else b""
        b[: len(data)] = data
        self.pos += len(data)
        return len(data)


class _Files:
    def __init__(self, folder: str):
        self.folder = folder
        self.fds: dict[str, tuple[int, int]] = {}

    def open(self, name: Any, where: str) -> tuple[str, int, int]:
        """(path, fd, size) of a `.distcp` file named by the metadata, kept inside the folder."""
        if not isinstance(name, str) or not name or os.path.isabs(name) \
                or ".." in name.replace("\\", "/").split("/") or "\x00" in name:
            raise InputError(f"DCP metadata names a data file outside the folder: "
                             f"{brief(name)}", where)
        path = os.path.join(self.folder, name)
        if path not in self.fds:
            if not os.path.lexists(path):
                raise InputError(f"DCP data file {brief(name)} is missing", self.folder)
            # resolved inside the folder (a symlinked file or sub-folder is refused), and a
            # regular file (a FIFO would block)
            fd = _files.open_fd(path, within=self.folder, where=self.folder)
            self.fds[path] = (fd, os.fstat(fd).st_size)
        fd, size = self.fds[path]
        return path, fd, size

    def close(self) -> None:
        for fd, _ in self.fds.values():
            os.close(fd)


def _item_tensor(path: str, fd: int, start: int, length: int, key: str) -> tuple[TensorRef, TensorData]:
    """Find the tensor of one embedded torch.save zip: its placeholder and where its bytes are."""
    where = f"{path} (item {key!r:.60})"
    # small items (most of them) in one read; large ones through a window on the file
    src: Any = io.BytesIO(os.pread(fd, length, start)) if length <= _SMALL_ITEM \
        else io.BufferedReader(_Span(fd, start, length), 1 << 16)
    try:
        with zipfile.ZipFile(src) as z:
            infos = {i.filename: i for i in z.infolist()}
            pkl = next((n for n in infos if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if pkl is None or infos[pkl].file_size > 1 << 20:
                raise InputError("item is not a torch.save archive", where)
            raw = z.read(pkl)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError,
            RuntimeError, zlib.error, struct.error) as exc:  # encrypted, broken deflate, ...
        raise InputError(f"item is not a readable zip ({str(exc)[:120]})", where) from None
    obj, log = _torch_common.unpickle(where, io.BytesIO(raw), storage_from_pid)
    _torch_common.refuse_calls(where, log)
    if not isinstance(obj, TensorRef) or obj.storage is None or obj.layout != "strided":
        raise InputError("item does not hold a plain tensor", where)
    member = infos.get(pkl[: -len("data.pkl")] + "data/" + obj.storage.key)
    if member is None:
        raise InputError(f"storage {obj.storage.key!r} is missing from the item", where)
    if member.compress_type != zipfile.ZIP_STORED:
        raise InputError("tensor data is compressed", where)
    head = os.pread(fd, 30, start + member.header_offset)
    if len(head) != 30 or head[:4] != b"PK\x03\x04":
        raise InputError("corrupt zip header in item", where)
    data_at = member.header_offset + 30 + int.from_bytes(head[26:28], "little") \
        + int.from_bytes(head[28:30], "little")
    if data_at + member.file_size > length:
        raise InputError("tensor bytes run past the item", where)
    locate = _torch_common.make_locator(
        where, path, lambda _key: (start + data_at, member.file_size))
    data = locate(obj)
    assert data is not None
    return obj, data


# ---- the checkpoint -----------------------------------------------------------------------


def _dims(v: Any) -> tuple[int, ...] | None:
    """`v` as a tuple of at most 64 dimensions (ints in [0, 2**62)), else None."""
    if type(v) is not tuple or len(v) > 64:
        return None
    for x in v:
        if type(x) is not int or not 0 <= x < 1 << 62:
            return None
    return v


def _place(key: str, planner: Any) -> tuple[str, str, bool]:
    """(container, key inside it, is optimizer state) from DCP's flattened key."""
    path = planner.get(key) if isinstance(planner, dict) else None
    if not (isinstance(path, tuple) and path and all(isinstance(p, (str, int)) for p in path)):
        return "", key, False
    parts = [str(p) for p in path]
    if len(parts) == 1:
        return "", parts[0], False
    return parts[0], ".".join(parts[1:]), parts[1] in _OPTIMIZER_PARTS


def _dtype_of(props: Any) -> str | None:
    state = props.state if isinstance(props, _Record) else None
    values = state.values() if isinstance(state, dict) else state if isinstance(state, tuple) \
        else ()
    for v in values:
        if isinstance(v, DTypeRef):
            return v.name
    return None


def read(folder: str) -> Checkpoint:
    """Read a DCP folder's metadata and item headers as one checkpoint (no tensor data)."""
    with _files.reported_as(folder):  # the user named the folder: report it, the file in the text
        return _read(folder)


def _read(folder: str) -> Checkpoint:
    md_path = os.path.join(folder, METADATA)
    md = read_metadata(md_path)
    storage: dict[tuple[str, tuple[int, ...]], Any] = {}
    items = md.get("storage_data")
    for idx, info in (items.items() if isinstance(items, dict) else ()):
        if isinstance(idx, _Record) and isinstance(info, _Record):
            off, fqn = idx.get("offset"), idx.get("fqn")
            # only plain keys are hashed: an offset tuple tower would cost 2**n per lookup
            if isinstance(fqn, str) and _dims(off) is not None:
                storage[(fqn, off)] = info
    files = _Files(folder)
    by_container: dict[str, list[Entry]] = {}
    optimizers: set[str] = set()
    skipped = 0
    try:
        for key, tmd in md.get("state_dict_metadata").items():
            if not isinstance(key, str) or not isinstance(tmd, _Record):
                raise InputError("unexpected entry in state_dict_metadata", md_path)
            if tmd.kind == "BytesStorageMetadata":
                skipped += 1
                continue
            if tmd.kind != "TensorStorageMetadata":
                raise InputError(f"unexpected {tmd.kind} for {key!r:.80}", md_path)
            entry = _entry(key, tmd, storage, files, md_path, md.get("planner_data"))
            by_container.setdefault(entry.container, []).append(entry)
            if entry.role is Role.OTHER:
                optimizers.add(entry.container)
    finally:
        files.close()
    containers = tuple(
        Container(path, ContainerKind.OPTIMIZER if path in optimizers else ContainerKind.STATE_DICT,
                  tuple(entries))
        for path, entries in by_container.items())
    size = sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder)
               if n == METADATA or n.endswith(".distcp"))
    metadata = {"dcp.bytes_items": str(skipped)} if skipped else {}
    return Checkpoint(path=folder, format=Format.DCP, size=size, containers=containers,
                      metadata=metadata)


def _in_c_order(boxes: list[tuple[tuple[int, ...], tuple[int, ...]]], shape: tuple[int, ...]
                ) -> bool:
    """True when chunks sorted by offsets are consecutive runs of the tensor's C-order elements:
    each chunk spans whole trailing dimensions after at most one partial dimension, with size 1
    before it (row chunks of a matrix; not column chunks)."""
    def run(sizes: tuple[int, ...]) -> bool:
        return not sizes or any(all(s == 1 for s in sizes[:k]) and sizes[k + 1:] == shape[k + 1:]
                                for k in range(len(sizes)))

    return all(run(sizes) for _, sizes in boxes)


def _entry(key: str, tmd: _Record, storage: dict, files: _Files, md_path: str,
           planner: Any) -> Entry:
    dtype = _dtype_of(tmd.get("properties"))
    shape = tmd.get("size")
    chunks = tmd.get("chunks")
    if dtype is None or not isinstance(shape, tuple) or not isinstance(chunks, list):
        raise InputError(f"tensor {key!r:.80} has incomplete metadata", md_path)
    shape = _dims(shape)
    if shape is None:
        raise InputError(f"tensor {key!r:.80} has a size that is not a list of dimensions "
                         f"({brief(tmd.get('size'))})", md_path)
    if math.prod(n for n in shape if n) >= 1 << 63:
        raise InputError(f"tensor {key!r:.80} claims more than 2**63 elements", md_path)
    # every chunk's offsets and sizes are checked BEFORE they are sorted or compared: equal
    # but distinct list towers would take 2**32 comparisons to sort
    checked = []
    for chunk in chunks:
        if not isinstance(chunk, _Record):
            raise InputError(f"tensor {key!r:.80} has a chunk that is not chunk metadata",
                             md_path)
        offsets, sizes = _dims(chunk.get("offsets")), _dims(chunk.get("sizes"))
        if offsets is None or sizes is None:
            raise InputError(f"tensor {key!r:.80} has chunk offsets or sizes that are not "
                             f"lists of dimensions ({brief(chunk.get('offsets'))}, "
                             f"{brief(chunk.get('sizes'))})", md_path)
        checked.append((offsets, sizes))
    checked.sort()
    parts: list[TensorData] = []
    numels: list[int] = []
    boxes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    device = None
    for offsets, sizes in checked:
        if not (len(offsets) == len(sizes) == len(shape)
                and all(o + s <= n for o, s, n in zip(offsets, sizes, shape))):
            raise InputError(f"tensor {key!r:.80} has a chunk outside its shape", md_path)
        info = storage.get((key, offsets))
        if info is None:
            raise InputError(f"tensor {key!r:.80} has a chunk with no stored data", md_path)
        path, fd, size = files.open(info.get("relative_path"), md_path)
        start, length = info.get("offset"), info.get("length")
        if not (type(start) is int and type(length) is int and 0 <= start and 0 <= length
                and start + length <= size):
            raise InputError(f"tensor {key!r:.80} points past the end of its data file", path)
        ref, data = _item_tensor(path, fd, start, length, key)
        if ref.shape != sizes or ref.dtype != dtype:
            raise InputError(f"tensor {key!r:.80}: the stored chunk is {ref.dtype} "
                             f"{list(ref.shape)}, the metadata says {dtype} {list(sizes)}", path)
        device = device or ref.storage.location
        parts.append(data)
        numels.append(math.prod(sizes))
        boxes.append((offsets, sizes))
    numel = math.prod(shape)
    if sum(numels) != numel:
        raise InputError(f"tensor {key!r:.80}: chunks hold {sum(numels)} of {numel} elements",
                         md_path)
    data: TensorData | None
    if len(parts) == 1:
        data = parts[0]
    elif parts and all(p.stride is None for p in parts):
        first = parts[0]
        data = TensorData(first.file, first.offset, first.storage_nbytes, first.storage_offset,
                          None, tuple(parts), tuple(numels),
                          () if _in_c_order(boxes, shape) else tuple(boxes))
    else:
        data = None  # non-contiguous chunks: listed, not streamed
    container, inner, optim = _place(key, planner)
    return Entry(container=container, key=inner, role=Role.OTHER if optim else Role.UNKNOWN,
                 evidence="container:optimizer" if optim else "none", shape=shape, dtype=dtype,
                 device=device, nbytes=numel * dtypes.itemsize(dtype), data=data)
