"""Role metadata that bufinspect writes and reads back: a sidecar `<file>.bufinspect.json`
beside a torch.save file (with a fingerprint, so a stale sidecar is ignored), or
`bufinspect.roles` in a safetensors header's `__metadata__` (rewritten by streaming)."""

from __future__ import annotations

import json
import os
import struct
from typing import Any

from bufinspect.errors import BufinspectError, UsageError
from bufinspect.model import Checkpoint, ContainerKind, Format, Role

SIDECAR_SUFFIX = ".bufinspect.json"
META_KEY = "bufinspect.roles"
ROLES_SCHEMA = "bufinspect-roles/1"


def fingerprint(path: str) -> str:
    """Size plus sha256 of the first and last MiB: detects a replaced file, cheaply."""
    size = os.path.getsize(path)
    import hashlib  # here: ~6 ms of import that only annotation files need

    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(size - (1 << 20))
            h.update(f.read())
    return f"{size}:{h.hexdigest()[:32]}"


def read_annotations(checkpoint: Checkpoint) -> dict[str, dict[str, Role]]:
    """container path -> {key: role} from metadata bufinspect wrote, where it still fits."""
    docs: dict[str, Any] = {}
    raw = checkpoint.metadata.get(META_KEY)
    if raw is not None:
        docs = _parse(raw)
    elif checkpoint.format in (Format.TORCH_ZIP, Format.TORCH_LEGACY):
        from bufinspect.formats import _files

        side = checkpoint.path + SIDECAR_SUFFIX
        if _files.is_regular(side) and not os.path.islink(side):  # never a FIFO or a link
            try:
                with _files.open_file(side) as f:
                    doc = json.loads(f.read(64 << 20))
            except (OSError, ValueError, RecursionError, BufinspectError):
                return {}
            if (isinstance(doc, dict) and doc.get("schema") == ROLES_SCHEMA
                    and doc.get("fingerprint") == fingerprint(checkpoint.path)):
                docs = doc.get("containers") or {}
    out: dict[str, dict[str, Role]] = {}
    for c in checkpoint.containers:
        doc = docs.get(c.path) if isinstance(docs, dict) else None
        if not isinstance(doc, dict) or not isinstance(doc.get("roles"), dict):
            continue
        keys = {e.key for e in c.entries}
        roles = doc["roles"]
        # verified against the file: same number of keys, every annotated key present
        if doc.get("keys") != len(keys) or not all(k in keys for k in roles):
            continue
        if not all(v in ("parameter", "buffer") for v in roles.values()):
            continue
        out[c.path] = {k: Role(v) for k, v in roles.items()}
    return out


def _parse(raw: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(doc, dict) or doc.get("schema") != ROLES_SCHEMA:
        return {}
    return doc.get("containers") or {}


def annotatable(checkpoint: Checkpoint) -> None:
    """UsageError unless `annotate` can record roles for this checkpoint: one torch.save or
    safetensors file holding a state dict (a module holds its exact roles already; a folder
    has no one file to hold them)."""
    fmt = checkpoint.format
    if fmt in (Format.TORCHSCRIPT, Format.TORCH_EXPORT) or (
            checkpoint.containers
            and all(c.kind is ContainerKind.MODULE for c in checkpoint.containers
                    if c.kind in (ContainerKind.MODULE, ContainerKind.STATE_DICT))
            and any(c.kind is ContainerKind.MODULE for c in checkpoint.containers)):
        raise UsageError(f"nothing to annotate: a {fmt.value} file that holds the module "
                         "itself (its roles are already exact)", checkpoint.path)
    if fmt not in (Format.SAFETENSORS, Format.TORCH_ZIP, Format.TORCH_LEGACY):
        raise UsageError(f"cannot annotate a {fmt.value} folder: roles are recorded in one "
                         "file (a safetensors header or a sidecar); give show or check "
                         "--model instead", checkpoint.path)


def write_annotations(checkpoint: Checkpoint, containers: dict[str, Any]) -> str:
    """Write role documents (container path -> `annotate.roles_doc`): into a safetensors header,
    else a sidecar JSON beside the file. Returns the path written."""
    if checkpoint.format is Format.SAFETENSORS:
        doc = {"schema": ROLES_SCHEMA, "containers": containers}
        rewrite_safetensors_metadata(checkpoint.path, {META_KEY: json.dumps(doc)})
        return checkpoint.path
    annotatable(checkpoint)
    return _write_sidecar(checkpoint.path, {"schema": ROLES_SCHEMA, "containers": containers})


def _write_sidecar(path: str, doc: dict[str, Any]) -> str:
    from bufinspect.formats.write import write_atomic

    side = path + SIDECAR_SUFFIX
    doc = {"schema": doc["schema"], "file": os.path.basename(path),
           "fingerprint": fingerprint(path), "containers": doc["containers"]}
    write_atomic(side, json.dumps(doc, indent=1) + "\n", inputs=[path])  # never through a link
    return side


def rewrite_safetensors_metadata(path: str, extra: dict[str, str]) -> None:
    """Add string entries to a safetensors `__metadata__`, streaming the data into a new file."""
    from bufinspect.formats import _files, safetensors_fmt, write

    with _files.open_file(path) as f:
        size = _files.size_of(f)
        # the whole header validated, once; the file is left at the first data byte
        tensors, meta, _ = safetensors_fmt.parse_header(path, f, size)
        header = {"__metadata__": {**meta, **extra}, **tensors}
        body = json.dumps(header, separators=(",", ":")).encode()
        body += b" " * (-len(body) % 8)

        def copy(out: Any) -> None:
            out.write(struct.pack("<Q", len(body)) + body)
            while True:
                chunk = f.read(4 << 20)
                if not chunk:
                    break
                out.write(chunk)

        # an exclusive temp file beside it, then one rename (never a fixed, plantable name)
        write.write_atomic(path, copy, inputs=[path], replace_input=path)


def save_state_dict(state_dict: Any, roles: dict[str, str], path: str,
                    metadata: dict[str, str] | None = None) -> str:
    """Save a torch state dict with its roles (`bufinspect.save`): a safetensors file with the
    roles in its header, or a `torch.save` file plus a sidecar. Returns the file holding roles."""
    import torch

    doc = {"schema": ROLES_SCHEMA,
           "containers": {"": {"roles": roles, "keys": len(state_dict)}}}
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file

        tensors, seen = {}, {}
        for k, v in state_dict.items():  # safetensors refuses shared memory: copy tied tensors
            ptr = v.untyped_storage().data_ptr()
            tensors[k] = v.detach().clone().contiguous() if ptr in seen else v.contiguous()
            seen[ptr] = k
        save_file(tensors, path, metadata={**(metadata or {}), META_KEY: json.dumps(doc)})
        return path
    torch.save(state_dict, path)
    return _write_sidecar(path, doc)
