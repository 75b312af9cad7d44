"""`.safetensors` files: `<u64 header length><JSON header><data>`, parsed without the library."""

from __future__ import annotations

import json
import math
import operator
import struct
from typing import Any

from bufinspect import dtypes
from bufinspect.errors import InputError
from bufinspect.model import Checkpoint, Container, ContainerKind, Entry, Format, Role, TensorData

MAX_HEADER = 100_000_000  # the safetensors library's own limit


def looks_like(head: bytes) -> bool:
    """True when the first bytes are a plausible safetensors prefix."""
    if len(head) < 10:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= MAX_HEADER and head[8:9] == b"{"


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise ValueError(f"duplicate key {k!r:.80}")
            seen.add(k)
    return out


_is_dict = dict.__instancecheck__  # (json builds plain dicts: the same test as `type(v) is dict`)


def _loads(raw: bytes) -> Any:
    """The header as JSON, refusing duplicate keys at any level.

    The hook that finds duplicates costs a Python call per object (a third of the parse at
    100,000 tensors), so the usual header is parsed without it and its keys are counted
    instead: when the text holds no backslash and every colon follows a quote, each key ends
    in exactly one `":`, and a duplicate would leave the parsed dicts with fewer keys than that.
    Anything else (escapes, colons in names or values, deeper objects) takes the hook."""
    text = raw.decode("utf-8")
    colons = raw.count(b'":')
    if b"\\" not in raw and raw.count(b":") == colons:
        header = json.loads(text)
        if isinstance(header, dict):
            try:
                keys = len(header) + sum(map(len, filter(_is_dict, header.values())))
            except TypeError:
                keys = -1
            if keys == colons:  # (a key deeper down would make colons exceed keys)
                return header
    return json.loads(text, object_pairs_hook=_no_duplicates)


def _dims_ok(shape: list[Any]) -> bool:
    for d in shape:
        if type(d) is not int or not 0 <= d < 1 << 62:
            return False
    return True


def parse_header(path: str, f: Any, size: int) -> tuple[dict[str, Any], dict[str, str], int]:
    """Return (tensors, metadata, data start) after validating every field of the header."""
    header, meta, data_start, _ = header_entries(path, f, size)
    return header, meta, data_start


# safetensors dtype code -> (dtype name, bytes per element, streamable)
_CODES = {**{code: (name, dtypes.itemsize(name), True)
             for code, name in dtypes.SAFETENSORS.items()},
          **{code: (code.lower(), per, False) for code, per in dtypes.SAFETENSORS_PACKED.items()}}


def header_entries(path: str, f: Any, size: int, container: str = ""
                   ) -> tuple[dict[str, Any], dict[str, str], int, list[Entry]]:
    """Validate every field of the header and build its entries, in file order, in one pass
    (the save order is lost: safetensors sorts its keys).

    Returns (tensors, metadata, data start, entries)."""
    head = f.read(8)
    if len(head) != 8:
        raise InputError("file too short for a safetensors header", path)
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER:
        raise InputError(f"safetensors header length {n} is too large", path)
    if 8 + n > size:
        raise InputError(f"safetensors header length {n} runs past the end of the file", path)
    raw = f.read(n)
    try:
        header = _loads(raw)
    except UnicodeDecodeError:
        raise InputError("safetensors header is not UTF-8", path) from None
    except (ValueError, RecursionError) as exc:
        raise InputError(f"invalid JSON in safetensors header ({str(exc)[:120]})", path) from None
    if not isinstance(header, dict):
        raise InputError("safetensors header is not a JSON object", path)
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise InputError("safetensors __metadata__ must map strings to strings", path)
    data_start = 8 + n
    data_size = size - data_start
    codes, unknown, prod, new_entry, new_data = _CODES, Role.UNKNOWN, math.prod, Entry, TensorData
    entries: list[Entry] = []
    begins: list[int] = []
    ends: list[int] = []
    for key, info in header.items():
        if type(info) is not dict:
            raise InputError(f"tensor {key!r:.80} has no description", path)
        get = info.get
        code, shape, offs = get("dtype"), get("shape"), get("data_offsets")
        known = codes.get(code) if type(code) is str else None
        if known is None:
            shown = repr(code[:20]) if isinstance(code, str) else type(code).__name__
            raise InputError(f"tensor {key!r:.80} has unknown dtype {shown}", path)
        if type(shape) is not list or len(shape) > 64 or not _dims_ok(shape):
            raise InputError(f"tensor {key!r:.80} has an invalid shape", path)
        if not (type(offs) is list and len(offs) == 2 and type(offs[0]) is int
                and type(offs[1]) is int and 0 <= offs[0] <= offs[1] <= data_size):
            raise InputError(f"tensor {key!r:.80} has offsets outside the file", path)
        dims = tuple(shape)
        numel = prod(dims)
        if numel >= 1 << 63:  # (a float product of it would overflow)
            raise InputError(f"tensor {key!r:.80} claims more than 2**63 elements", path)
        begin, end = offs
        dtype, per, streamable = known
        nbytes = end - begin
        if (numel * per if streamable else math.ceil(numel * per)) != nbytes:
            raise InputError(f"tensor {key!r:.80}: shape and dtype need {math.ceil(numel * per)} "
                             f"bytes but offsets give {nbytes}", path)
        entries.append(new_entry(container, key, unknown, "none", dims, dtype, None, nbytes, None,
                                 None, new_data(path, data_start + begin, nbytes)
                                 if streamable else None))
        begins.append(begin)
        ends.append(end)
    # (the order and overlap checks run in C over the offsets; the loops that name the
    # overlapping pair run only when there is one)
    if all(map(operator.lt, begins, begins[1:])):  # file order already (safetensors writes so)
        if any(map(operator.lt, begins[1:], ends)):
            _overlap(path, list(zip(begins, ends, (e.key for e in entries))))
    else:
        # file order, by a stable sort (tied offsets keep header order); the overlap check
        # walks (begin, end, key) order, which differs from it only where offsets tie
        spans = sorted(zip(begins, ends, (e.key for e in entries)))
        entries = [entries[i] for i in sorted(range(len(begins)), key=begins.__getitem__)]
        _overlap(path, spans)
    return header, meta, data_start, entries


def _overlap(path: str, spans: list[tuple[int, int, str]]) -> None:
    """Refuse the first two neighbours of `spans` (sorted (begin, end, key)) that overlap."""
    for (_, e0, k0), (b1, _, k1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise InputError(f"tensors {k0!r:.60} and {k1!r:.60} overlap", path)


def read(path: str) -> Checkpoint:
    from bufinspect.formats import _files

    with _files.open_file(path) as f:
        size = _files.size_of(f)
        _, meta, data_start, entries = header_entries(path, f, size)
    return Checkpoint(path=path, format=Format.SAFETENSORS, size=size,
                      containers=(Container("", ContainerKind.STATE_DICT, tuple(entries)),),
                      metadata=meta)
