"""`torch.export` archives (`.pt2`), read without `torch.export.load` (which can unpickle with
`weights_only=False`).

Roles and persistence come from the graph signature's `input_specs` in `models/<name>.json`;
dtypes, shapes and devices from `data/weights/<name>_weights_config.json` and
`data/constants/<name>_constants_config.json`; the bytes are the raw files they name.
Non-persistent buffers and tensor constants live with the constants. Tensors stored as pickles
(`use_pickle`) and sample inputs are listed without data; their pickles are only scanned by the
restricted unpickler, and an archive whose pickles would run code is refused.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from typing import Any

from bufinspect import dtypes
from bufinspect.errors import InputError
from bufinspect.formats import _torch_common
from bufinspect.formats._torch_common import contiguous_strides
from bufinspect.formats._unpickle import brief, storage_from_pid
from bufinspect.formats.torch_zip import ZipArchive
from bufinspect.model import Checkpoint, Container, ContainerKind, Entry, Format, Role, TensorData

# torch._export.serde.schema.ScalarType
SCALAR_TYPES = {
    1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float16", 7: "float32",
    8: "float64", 9: "complex32", 10: "complex64", 11: "complex128", 12: "bool", 13: "bfloat16",
    28: "uint16", 29: "float8_e4m3fn", 30: "float8_e5m2", 31: "float8_e4m3fnuz",
    32: "float8_e5m2fnuz", 33: "float8_e8m0fnu", 34: "uint32", 35: "uint64",
}
_LIMIT = 256 << 20  # JSON members larger than this are refused


def _json(arc: ZipArchive, name: str) -> Any:
    try:
        return json.loads(arc.read(name, limit=_LIMIT))
    except (ValueError, RecursionError) as exc:
        raise InputError(f"invalid JSON in {name} ({str(exc)[:100]})", arc.path) from None


def _ints(v: Any, what: str, path: str) -> tuple[int, ...]:
    if not isinstance(v, list) or len(v) > 64:
        raise InputError(f"bad {what} in the weights config", path)
    out = []
    for x in v:
        n = x.get("as_int") if isinstance(x, dict) else None
        # an int, never a float: `as_int: Infinity` (JSON allows it) or 1e308 are refused
        if type(n) is not int or not 0 <= n < 1 << 63:
            raise InputError(f"bad {what} in the weights config (expected integers in "
                             f"[0, 2**63), got {brief(n)})", path)
        out.append(n)
    if what == "sizes" and math.prod(d for d in out if d) >= 1 << 63:
        raise InputError(f"bad {what} in the weights config (more than 2**63 elements)", path)
    return tuple(out)


def _device(d: Any) -> str | None:
    if not isinstance(d, dict) or not isinstance(d.get("type"), str):
        return None
    idx = d.get("index")
    return f"{d['type']}:{idx}" if type(idx) is int else d["type"]


def read(path: str, arc: ZipArchive | None = None) -> Checkpoint:
    """Read the archive's metadata (`arc`: the already opened zip, closed here)."""
    arc = arc or ZipArchive(path)
    arc.view_budget = _torch_common.ViewBudget(path)  # type: ignore[attr-defined]
    try:
        fmt = next(n for n in arc.infos if n.endswith("archive_format"))
        arc.prefix = fmt[: -len("archive_format")]
        models = sorted(n for n in arc.infos if n.startswith(arc.prefix + "models/")
                        and n.endswith(".json"))
        if not models:
            raise InputError("torch.export archive without models/*.json", path)
        containers = []
        for m in models:
            name = m[len(arc.prefix + "models/"):-len(".json")]
            here = "" if len(models) == 1 else name
            containers.append(_model(arc, name, here))
            for folder, kind in (("weights", "weights"), ("constants", "constants")):
                for _, (_, info) in _config(arc, folder, name, kind).items():
                    if info.get("use_pickle") and isinstance(info.get("path_name"), str):
                        _scan_pickle(arc, f"{arc.prefix}data/{folder}/{info['path_name']}")
        for member in arc.infos:
            if member.startswith(arc.prefix + "data/sample_inputs/"):
                _scan_pickle(arc, member)
        return Checkpoint(path=path, format=Format.TORCH_EXPORT, size=arc.size,
                          containers=tuple(containers))
    finally:
        arc.close()


def _scan_pickle(arc: ZipArchive, member: str) -> None:
    """Refuse the archive if a pickled part (sample inputs, `use_pickle` tensors) would run code.

    The part is never loaded: the restricted unpickler only records what it names and calls.
    """
    if not arc.has(member):
        return
    try:
        _scan(arc, member, arc.read(member, limit=_LIMIT))
    except InputError as exc:  # name the part, keep the archive as the path
        raise type(exc)(f"{member}: {exc.message}", arc.path) from None


def _scan(arc: ZipArchive, member: str, raw: bytes) -> None:
    where = arc.path
    if raw.startswith(b"PK"):  # a torch.save zip inside the archive
        try:
            with zipfile.ZipFile(io.BytesIO(raw)) as inner:
                pkls = [n for n in inner.namelist() if n.endswith("data.pkl")]
                if len(pkls) != 1 or inner.getinfo(pkls[0]).file_size > _LIMIT:
                    raise InputError("embedded torch.save file without one data.pkl", where)
                raw = inner.read(pkls[0])
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError,
                RuntimeError) as exc:
            raise InputError(f"unreadable embedded zip ({str(exc)[:80]})", where) from None
    _, log = _torch_common.unpickle(where, io.BytesIO(raw), storage_from_pid)
    _torch_common.refuse_calls(where, log)


def _config(arc: ZipArchive, folder: str, name: str, kind: str) -> dict[str, Any]:
    member = f"{arc.prefix}data/{folder}/{name}_{kind}_config.json"
    if not arc.has(member):
        return {}
    doc = _json(arc, member)
    cfg = doc.get("config") if isinstance(doc, dict) else None
    if not isinstance(cfg, dict):
        raise InputError(f"{member} has no config mapping", arc.path)
    return {k: (folder, v) for k, v in cfg.items() if isinstance(v, dict)}


def _model(arc: ZipArchive, name: str, here: str) -> Container:
    path = arc.path
    doc = _json(arc, f"{arc.prefix}models/{name}.json")
    try:
        specs = doc["graph_module"]["signature"]["input_specs"]
    except (TypeError, KeyError):
        raise InputError(f"models/{name}.json has no graph signature", path) from None
    if not isinstance(specs, list):
        raise InputError(f"models/{name}.json: input_specs is not a list", path)
    tensors = {**_config(arc, "constants", name, "constants"),
               **_config(arc, "weights", name, "weights")}
    entries = []
    for spec in specs:
        if not isinstance(spec, dict) or len(spec) != 1:
            continue
        (kind, body), = spec.items()
        if not isinstance(body, dict):
            continue
        if kind == "parameter":
            key, role, persistent = body.get("parameter_name"), Role.PARAMETER, None
        elif kind == "buffer":
            key, role = body.get("buffer_name"), Role.BUFFER
            persistent = bool(body.get("persistent", True))
        elif kind == "tensor_constant":
            key, role, persistent = body.get("tensor_constant_name"), Role.OTHER, None
        else:
            continue
        if not isinstance(key, str) or key not in tensors:
            continue
        folder, info = tensors[key]
        evidence = "module:export" if role is not Role.OTHER else "module:export-constant"
        entries.append(_entry(arc, here, key, role, evidence, persistent, folder, info))
    return Container(here, ContainerKind.MODULE, tuple(entries))


def _entry(arc: ZipArchive, here: str, key: str, role: Role, evidence: str,
           persistent: bool | None, folder: str, info: dict[str, Any]) -> Entry:
    path = arc.path
    meta = info.get("tensor_meta")
    if not isinstance(meta, dict):
        raise InputError(f"{brief(key)} has no tensor_meta", path)
    dtype = SCALAR_TYPES.get(meta.get("dtype"))
    if dtype is None:
        raise InputError(f"{key!r} has an unknown dtype code {meta.get('dtype')!r:.20}", path)
    shape = _ints(meta.get("sizes"), "sizes", path)
    stride = _ints(meta.get("strides", []), "strides", path) or contiguous_strides(shape)
    offset = meta.get("storage_offset", {"as_int": 0})
    offset = _ints([offset], "storage_offset", path)[0]
    size = dtypes.itemsize(dtype)
    data = None
    file = info.get("path_name")
    if not info.get("use_pickle") and isinstance(file, str) and "/" not in file:
        span = arc.data_span(f"{arc.prefix}data/{folder}/{file}")
        if span is None:
            raise InputError(f"{folder}/{file} is missing from the archive", path)
        start, nbytes = span
        if math.prod(shape) and size:
            last = offset + sum((n - 1) * s for n, s in zip(shape, stride))
            if (last + 1) * size > nbytes:
                raise InputError(f"{key!r} does not fit in {folder}/{file}", path)
        arc.view_budget.charge(f"{folder}/{file}", nbytes, math.prod(shape) * size)
        strided = None if stride == contiguous_strides(shape) else stride
        data = TensorData(path, start, nbytes, offset, strided)
    return Entry(container=here, key=key, role=role, evidence=evidence, shape=shape, dtype=dtype,
                 device=_device(meta.get("device")), nbytes=math.prod(shape) * size,
                 persistent=persistent, requires_grad=bool(meta.get("requires_grad")), data=data)
