"""Format readers: path -> Checkpoint, and every other file bufinspect reads or writes
(`config`: pyproject policy, `metrics`: saved diff metrics, `role_metadata`: role sidecars and
safetensors metadata, `write`: every file the user asked for, written safely). The only code
that opens files.

To add a format: a reader module here (path -> Checkpoint, depending only on `model`, `errors`
and `dtypes`), a branch in `sniff`/`read`, and a `Format` member in `model.checkpoint`.
"""

from __future__ import annotations

import os

from bufinspect.errors import BufinspectError, InputError
from bufinspect.model import Checkpoint


def sniff(path: str) -> str:
    """Name the reader for `path` from its first bytes (the extension only breaks ties)."""
    if not os.path.exists(path):
        raise InputError("no such file or folder", path)
    if os.path.isdir(path):
        return _sniff_folder(path)
    if path.endswith(".safetensors.index.json") and os.path.isfile(path):
        return "safetensors-sharded"
    from bufinspect.formats import _files

    try:
        with _files.open_file(path) as f:  # a regular file: a FIFO would block here forever
            head = f.read(64)
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror})", path) from None
    if not head:
        raise InputError("empty file", path)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head.startswith(b"\x80\x02\x8a\x0a"):  # a 10-byte long first: the legacy magic number?
        from bufinspect.formats import torch_legacy  # (the unpickler's modules: only then)

        if head.startswith(torch_legacy.MAGIC_PREFIX):
            return "legacy"
    from bufinspect.formats import safetensors_fmt

    if safetensors_fmt.looks_like(head) or path.endswith(".safetensors"):
        return "safetensors"
    raise InputError("not a checkpoint (unrecognized format)", path)


def _sniff_folder(path: str) -> str:
    """A DCP folder (`.metadata`) or a sharded safetensors folder (index or `*.safetensors`)."""
    from bufinspect.formats import dcp, safetensors_sharded

    try:
        if dcp.looks_like(path):
            return "dcp"
        if safetensors_sharded.index_of(path) or safetensors_sharded.shards_of(path):
            return "safetensors-sharded"
    except OSError as exc:
        raise InputError(f"cannot read folder ({exc.strerror})", path) from None
    raise InputError("a folder that is not a checkpoint bufinspect can read", path)


def read(path: str) -> Checkpoint:
    """Read the metadata of the checkpoint at `path` (no tensor data, no torch import).

    Raises:
        InputError: missing, unreadable, corrupt, not a checkpoint, or asks to run code. A
            reader that trips over a malformed file in a way it did not foresee still reports
            it as this file's problem (`unreadable (...)`), never as a crash.
    """
    try:
        return _read(path)
    except (BufinspectError, OSError, MemoryError, RecursionError):
        raise
    except Exception as exc:
        raise InputError(f"unreadable ({type(exc).__name__}: {str(exc)[:160]}); "
                         "BUFINSPECT_DEBUG=1 shows details", path) from exc


def _read(path: str) -> Checkpoint:
    kind = sniff(path)
    if kind == "dcp":
        from bufinspect.formats import dcp

        return dcp.read(path)
    if kind == "safetensors-sharded":
        from bufinspect.formats import safetensors_sharded

        return safetensors_sharded.read(path)
    if kind == "zip":
        from bufinspect.formats import torch_zip

        arc = torch_zip.ZipArchive(path)  # the zip directory is parsed once, here
        sub = zip_kind(arc)
        if sub == "torchscript":
            from bufinspect.formats import torchscript

            return torchscript.read(path, arc)
        if sub == "export":
            from bufinspect.formats import torch_export

            return torch_export.read(path, arc)
        return torch_zip.read(path, arc)
    if kind == "legacy":
        from bufinspect.formats import torch_legacy

        return torch_legacy.read(path)
    from bufinspect.formats import safetensors_fmt

    return safetensors_fmt.read(path)


def zip_kind(arc) -> str:
    """`torchscript` (a `code/` folder), `export` (`archive_format` says pt2) or `torch-save`."""
    from bufinspect.formats import torchscript

    names = list(arc.infos)
    fmt = next((n for n in names if n == "archive_format" or n.endswith("/archive_format")), None)
    if fmt is not None:
        try:
            if arc.read(fmt, limit=64).strip() == b"pt2":
                return "export"
        except Exception:  # unreadable marker: let the torch.save reader say what is wrong
            pass
    return "torchscript" if torchscript.is_torchscript(names) else "torch-save"
