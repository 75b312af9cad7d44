"""Legacy (pre-1.6, non-zip) torch.save files: magic, protocol, sys_info, object, keys, data."""

from __future__ import annotations

import pickle
import struct
from typing import Any

from bufinspect import dtypes
from bufinspect.errors import InputError
from bufinspect.formats import _files, _torch_common, _unpickle
from bufinspect.formats._unpickle import StorageRef, StorageType, Stub, brief
from bufinspect.formats._values import values_of
from bufinspect.formats._walk import containers_of
from bufinspect.model import Checkpoint, Format

MAGIC = 0x1950A86A20F9469CFC6C
MAGIC_PREFIX = b"\x80\x02\x8a\x0a" + MAGIC.to_bytes(10, "little")


def _persistent(pid: Any) -> Any:
    if not isinstance(pid, tuple) or not pid:
        raise pickle.UnpicklingError(f"unexpected persistent id {brief(pid)}")
    if pid[0] == "module":  # ('module', cls, source_file, source): source is never run
        if len(pid) == 4 and isinstance(pid[1], type) and issubclass(pid[1], Stub):
            return pid[1]
        raise pickle.UnpicklingError("bad module reference")
    if pid[0] != "storage" or len(pid) != 6:
        raise pickle.UnpicklingError(f"unexpected persistent id {brief(pid)}")
    _, stype, key, location, numel, view = pid
    if not isinstance(stype, StorageType) or not isinstance(key, str) \
            or not isinstance(location, str) or type(numel) is not int:
        raise pickle.UnpicklingError(f"unexpected persistent id {brief(pid)}")
    offset = 0
    if view is not None:
        if not (isinstance(view, tuple) and len(view) == 3 and type(view[1]) is int
                and view[1] >= 0):
            raise pickle.UnpicklingError("bad storage view")
        offset = view[1]
    return StorageRef(key=key, dtype=stype.dtype, location=location, numel=numel,
                      view_offset=offset)


def read(path: str) -> Checkpoint:
    with _files.open_file(path) as f:
        size = _files.size_of(f)
        magic = _header(path, f)
        if magic != MAGIC:
            raise InputError("not a torch.save file (bad magic number)", path)
        protocol = _header(path, f)
        if protocol != 1001:
            raise InputError(f"unsupported legacy protocol {brief(protocol)}", path)
        _header(path, f)  # sys_info
        storages: dict[str, StorageRef] = {}

        def persistent(pid: Any) -> Any:
            ref = _persistent(pid)
            if isinstance(ref, StorageRef):
                storages.setdefault(ref.key, ref)
            return ref

        obj, log = _torch_common.unpickle(path, f, persistent)
        _torch_common.refuse_calls(path, log)
        keys = _header(path, f)
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise InputError("corrupt storage key list", path)
        spans: dict[str, tuple[int, int]] = {}
        pos = f.tell()
        for key in keys:
            ref = storages.get(key)
            f.seek(pos)
            head = f.read(8)
            if len(head) != 8:
                raise InputError("file ends inside the tensor data (truncated?)", path)
            (numel,) = struct.unpack("<q", head)
            item = dtypes.itemsize(ref.dtype) if ref is not None and ref.dtype else 1
            nbytes = numel * item
            if numel < 0 or pos + 8 + nbytes > size:
                raise InputError(f"storage {brief(key)} claims {numel} elements past the end of the "
                                 "file", path)
            spans[key] = (pos + 8, nbytes)
            pos += 8 + nbytes
    locate = _torch_common.make_locator(path, path, spans.get)
    containers = containers_of(obj, path, locate)
    return Checkpoint(path=path, format=Format.TORCH_LEGACY, size=size, containers=containers,
                      foreign_globals=tuple(sorted(set(log.globals))),
                          values=values_of(obj),
                          calls=_unpickle.call_counts(log))


def _header(path: str, f: Any) -> Any:
    """One of the small pickles around the object: plain data, refused if it asks for code."""
    obj, log = _torch_common.unpickle(path, f, _no_persistent)
    _torch_common.refuse_calls(path, log)
    return obj


def _no_persistent(pid: Any) -> Any:
    raise pickle.UnpicklingError("unexpected persistent id in a header pickle")
