"""`check DIR`: the checkpoints inside a folder (a sharded or DCP folder counts as one)."""

from __future__ import annotations

import os
import re

from bufinspect.errors import InputError
from bufinspect.formats import _files

# files bufinspect reads, by name (a sidecar `<file>.bufinspect.json` and index files are not)
EXTENSIONS = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".pt2", ".tar")


_SHARD = re.compile(r".*-\d+-of-\d+\.safetensors$")


def is_checkpoint_folder(path: str) -> bool:
    """A folder that reads as one checkpoint: DCP (`.metadata`), a safetensors index, or only
    `*-NNNNN-of-NNNNN.safetensors` shards. A folder of separate files is not one."""
    from bufinspect.formats import dcp, safetensors_sharded

    if not os.path.isdir(path):
        return False
    try:
        if dcp.looks_like(path) or safetensors_sharded.index_of(path):
            return True
        names = [n for n in os.listdir(path) if n.endswith(EXTENSIONS)]
    except (OSError, InputError):
        return False
    return bool(names) and all(_SHARD.match(n) for n in names)


def checkpoints_in(folder: str) -> list[str]:
    """The checkpoints directly inside `folder`, sorted by name: files with a checkpoint
    extension and sub-folders that read as one checkpoint. InputError when there is none."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        raise InputError(f"cannot list folder ({exc.strerror})", folder) from None
    out = []
    for name in names:
        path = name if folder in (".", "./") else os.path.join(folder, name)
        if name.endswith(EXTENSIONS) or os.path.isdir(path):
            # the same containment as every reader: an entry that links outside the folder is
            # refused, never followed (the folder is named, as for a sharded folder)
            _files.contain(path, folder)
        if os.path.isdir(path):
            if is_checkpoint_folder(path):
                out.append(path)
        elif name.endswith(EXTENSIONS) and os.path.isfile(path):
            out.append(path)
    if not out:
        raise InputError("a folder with no checkpoint in it (looked for "
                         + " ".join(EXTENSIONS) + " files and sharded/DCP folders)", folder)
    return out


def expand(paths: list[str]) -> list[str]:
    """Each path as given, except a plain folder, which stands for the checkpoints in it."""
    out: list[str] = []
    for p in paths:
        if os.path.isdir(p) and not is_checkpoint_folder(p):
            out += checkpoints_in(p)
        else:
            out.append(p)
    return out
