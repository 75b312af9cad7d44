"""Sharded safetensors folders read as one checkpoint.

Two layouts: a Hugging Face folder with `model.safetensors.index.json` (`weight_map`: key ->
shard file), and a plain folder of `*.safetensors` shards without an index. Every shard's header
is validated by `safetensors_fmt.header_entries`; entries point into their own shard, so
`stream.pieces` reads across files unchanged.
"""

from __future__ import annotations

import json
import operator
import os
from itertools import repeat
from typing import Any

from bufinspect.errors import InputError
from bufinspect.formats import _files, safetensors_fmt
from bufinspect.formats._unpickle import brief
from bufinspect.model import Checkpoint, Container, ContainerKind, Entry, Format

INDEX_SUFFIX = ".safetensors.index.json"
_MAX_INDEX = 256 << 20


def index_of(folder: str) -> str | None:
    """The folder's `*.safetensors.index.json`, preferring `model.safetensors.index.json`."""
    names = sorted(n for n in os.listdir(folder) if n.endswith(INDEX_SUFFIX))
    if "model" + INDEX_SUFFIX in names:
        return os.path.join(folder, "model" + INDEX_SUFFIX)
    if len(names) > 1:
        raise InputError(f"several safetensors indexes ({', '.join(names[:3])}); pass one of "
                         "them", folder)
    return os.path.join(folder, names[0]) if names else None


def shards_of(folder: str) -> list[str]:
    """The `*.safetensors` files directly inside `folder`, sorted by name."""
    return sorted(os.path.join(folder, n) for n in os.listdir(folder)
                  if n.endswith(".safetensors") and os.path.lexists(os.path.join(folder, n))
                  and not os.path.isdir(os.path.join(folder, n)))


def _inside(folder: str, name: Any, index: str) -> str:
    """The shard path for an index entry, refused unless it is a plain file name in the folder."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise InputError(f"weight_map names a shard that is not a file name: {brief(name)}",
                         index)
    if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/") or "\\" in name:
        raise InputError(f"weight_map points outside the folder: {brief(name)}", index)
    path = os.path.join(folder, name)
    if not _files.inside(path, folder):
        raise InputError(f"weight_map points outside the folder: {brief(name)}", index)
    if not os.path.lexists(path):
        raise InputError(f"weight_map names a missing shard {brief(name)}", index)
    return path


def _read_index(index: str, folder: str, found: bool
                ) -> tuple[dict[str, str], dict[str, Any]]:
    """(key -> shard path, index metadata) from a validated index file (`found`: named by the
    folder's listing, not by the user: then it must resolve inside the folder too)."""
    try:
        with _files.open_file(index, within=folder if found else None) as f:
            if _files.size_of(f) > _MAX_INDEX:
                raise InputError("index file is too large", index)
            doc = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputError(f"invalid JSON in the index ({str(exc)[:120]})", index) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("weight_map"), dict):
        raise InputError("index has no weight_map object", index)
    meta = doc.get("metadata") or {}
    if not isinstance(meta, dict):
        raise InputError("index metadata is not an object", index)
    names = doc["weight_map"]
    shards = names.values()
    if not set(map(type, shards)) <= {str}:  # (a list, say: refused before anything hashes it)
        _inside(folder, next(n for n in shards if type(n) is not str), index)
    # each shard name checked once, in the order the index first names it; the key map is then
    # built in C (100,000 keys in a large index)
    shard_paths = {name: _inside(folder, name, index) for name in dict.fromkeys(shards)}
    return dict(zip(names, map(shard_paths.__getitem__, shards))), meta


def _shard(path: str, folder: str) -> tuple[dict[str, Any], dict[str, str], list[Entry], int]:
    # a shard is named by the folder's listing or its index: it must resolve inside the folder
    # (`b.safetensors -> ../outside/secret.safetensors` is refused) and be a regular file
    with _files.open_file(path, within=folder, where=folder) as f:
        size = _files.size_of(f)
        header, meta, _, entries = safetensors_fmt.header_entries(path, f, size)
    return header, meta, entries, size


def read(path: str) -> Checkpoint:
    """Read a sharded safetensors folder's headers as one checkpoint (no tensor data).

    `path` is the folder, or one `*.safetensors.index.json` inside it.
    """
    if not os.path.isdir(path) and path.endswith(INDEX_SUFFIX):
        return _read(path, os.path.dirname(path) or ".", path, False)
    with _files.reported_as(path):  # the user named the folder: report it
        return _read(path, path, index_of(path), True)


def _read(path: str, folder: str, index: str | None, found: bool) -> Checkpoint:
    given = path  # the Checkpoint's path: what the user named (the loop below reuses `path`)
    metadata: dict[str, str] = {}
    if index is not None:
        weight_map, index_meta = _read_index(index, folder, found)
        if not weight_map:
            raise InputError("index weight_map is empty", index)
        shards = list(dict.fromkeys(weight_map.values()))  # first-mention order
        shards.sort(key=os.path.basename)
        for k, v in index_meta.items():
            metadata[f"index.{k}"] = str(v)
    else:
        shards = shards_of(folder)
        if not shards:
            raise InputError("a folder that is not a checkpoint bufinspect can read", folder)
    entries: list[Entry] = []
    owner: dict[str, str] = {}
    size = 0
    for path in shards:
        header, meta, shard_entries, shard_size = _shard(path, folder)
        size += shard_size
        for k, v in meta.items():
            metadata.setdefault(k, v)
        # (each check runs in C over 100,000 keys; the loops that name the culprit run only
        # when it fails)
        if not owner.keys().isdisjoint(header):
            for key in header:
                if key in owner:
                    raise InputError(f"tensor {key!r:.80} is in two shards "
                                     f"({os.path.basename(owner[key])} and "
                                     f"{os.path.basename(path)})", folder)
        owner.update(dict.fromkeys(header, path))
        if index is not None and not all(map(operator.eq, repeat(path),
                                             map(weight_map.get, header))):
            for key in header:
                if weight_map.get(key) != path:
                    raise InputError(f"tensor {key!r:.80} is in {os.path.basename(path)} but "
                                     "the index does not map it there", index)
        entries.extend(shard_entries)
    # every key a shard holds maps to that shard (checked above): the index is whole when it
    # names no key beyond them
    if index is not None and not weight_map.keys() <= owner.keys():
        for key, path in weight_map.items():
            if owner.get(key) != path:
                raise InputError(f"the index maps {key!r:.80} to {os.path.basename(path)}, "
                                 "which does not hold it", index)
    return Checkpoint(path=given, format=Format.SAFETENSORS_SHARDED, size=size,
                      containers=(Container("", ContainerKind.STATE_DICT, tuple(entries)),),
                      metadata=metadata)
