"""Roles from the user's own model code (`--model MODULE:FACTORY`) and role metadata that
bufinspect writes (a sidecar JSON beside a `.pt`, or `bufinspect.roles` in a safetensors header).

`--model` is the one place bufinspect runs code: the user's, never the checkpoint's. The model
is built on the `meta` device, so no memory is spent on its weights.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import struct
import sys
from dataclasses import dataclass, field
from typing import Any

from bufinspect.errors import BufinspectError, UsageError
from bufinspect.model import Checkpoint, Container, ContainerKind, Format, Role

SIDECAR_SUFFIX = ".bufinspect.json"
META_KEY = "bufinspect.roles"
ROLES_SCHEMA = "bufinspect-roles/1"
_PREFIXES = ("", "module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module.")


# ---- the user's model ----------------------------------------------------------------------


def build(spec: str) -> Any:
    """Import `MODULE:FACTORY` (or `MODULE:CLASS`) and call it with no arguments on `meta`."""
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise UsageError(f"--model wants MODULE:FACTORY, got {spec!r}", spec)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as exc:  # the user's code: report what it raised, in one line
        raise UsageError(f"cannot import {spec} ({type(exc).__name__}: {str(exc)[:120]})",
                         spec) from None
    import torch

    try:
        with torch.device("meta"):
            model = obj()
    except Exception as exc:
        raise UsageError(f"{spec}() failed ({type(exc).__name__}: {str(exc)[:120]})",
                         spec) from None
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"{spec}() returned {type(model).__name__}, not an nn.Module", spec)
    return model


def module_roles(model: Any) -> dict[str, tuple[Role, bool | None]]:
    """key -> (role, persistent) for every parameter and buffer, tied and shared ones included."""
    out: dict[str, tuple[Role, bool | None]] = {}
    for prefix, m in model.named_modules(remove_duplicate=False):
        dot = prefix + "." if prefix else ""
        for n, p in m._parameters.items():
            if p is not None:
                out[dot + n] = (Role.PARAMETER, None)
        for n, b in m._buffers.items():
            if b is not None:
                out[dot + n] = (Role.BUFFER, n not in m._non_persistent_buffers_set)
    return out


@dataclass(frozen=True)
class ModelMatch:
    """How a model's state lines up with one state dict of the file."""

    container: str
    prefix: str  # wrapper prefix stripped from the file's keys ("module.", "_orig_mod.")
    matched: int
    file_only: tuple[str, ...]  # keys the model lacks
    nonpersistent: tuple[str, ...]  # non-persistent buffers: absent from a state dict, expected
    missing: tuple[str, ...] = field(default=())  # parameters / persistent buffers the file lacks

    def to_dict(self) -> dict[str, Any]:
        return {"container": self.container, "prefix": self.prefix, "matched": self.matched,
                "file_only": list(self.file_only), "nonpersistent_absent": list(self.nonpersistent),
                "missing": list(self.missing)}


def build_hf(path: str) -> Any:
    """The model that `config.json` beside the weights describes, built by transformers on `meta`.

    Opt-in (`show --hf-config`): runs the installed transformers library's code, never code from
    the checkpoint's folder (`trust_remote_code=False`, local files only).
    """
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise UsageError("--hf-config: no config.json beside the weights", path)
    try:
        import transformers
    except ImportError:
        raise UsageError("--hf-config needs the transformers package (pip install transformers)",
                         path) from None
    import torch

    try:
        config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=False,
                                                         local_files_only=True)
        archs = getattr(config, "architectures", None) or []
        cls = getattr(transformers, archs[0], None) if archs else None
        with torch.device("meta"):
            model = cls(config) if cls is not None else transformers.AutoModel.from_config(config)
    except Exception as exc:  # the library's own error, in one line
        raise UsageError(f"--hf-config: transformers could not build the model "
                         f"({type(exc).__name__}: {str(exc)[:120]})", path) from None
    return model


def apply_model(checkpoint: Checkpoint, spec: str) -> tuple[Checkpoint, list[ModelMatch]]:
    """Give every state-dict key the model knows its exact role (`model:factory`)."""
    return apply_module(checkpoint, build(spec), "model:factory")


def apply_module(checkpoint: Checkpoint, model: Any, evidence: str
                 ) -> tuple[Checkpoint, list[ModelMatch]]:
    """Give every state-dict key that `model` (an nn.Module) knows its exact role."""
    truth = module_roles(model)
    # tied tensors (one object under several names): the file holding one name holds them all
    names_of: dict[int, list[str]] = {}
    for k, t in [*model.named_parameters(remove_duplicate=False),
                 *model.named_buffers(remove_duplicate=False)]:
        names_of.setdefault(id(t), []).append(k)
    aliases = {k: group for group in names_of.values() for k in group}
    containers, matches = [], []
    for c in checkpoint.containers:
        if c.kind is not ContainerKind.STATE_DICT:
            containers.append(c)
            continue
        keys = [e.key for e in c.entries]
        prefix = max(_PREFIXES, key=lambda p: sum(
            k.startswith(p) and k[len(p):] in truth for k in keys))
        entries, seen = [], set()
        for e in c.entries:
            bare = e.key[len(prefix):] if e.key.startswith(prefix) else None
            if bare in truth:
                seen.add(bare)
                role, persistent = truth[bare]
                e = dataclasses.replace(e, role=role, evidence=evidence, persistent=persistent)
            entries.append(e)
        absent = [k for k in truth if k not in seen]
        matches.append(ModelMatch(
            container=c.path, prefix=prefix, matched=len(seen),
            file_only=tuple(e.key for e in c.entries
                            if not (e.key.startswith(prefix) and e.key[len(prefix):] in seen)),
            nonpersistent=tuple(k for k in absent if truth[k] == (Role.BUFFER, False)),
            missing=tuple(k for k in absent if truth[k] != (Role.BUFFER, False)
                          and not any(a in seen for a in aliases.get(k, ())))))
        containers.append(dataclasses.replace(c, entries=tuple(entries)))
    return dataclasses.replace(checkpoint, containers=tuple(containers)), matches


# ---- role metadata bufinspect writes -------------------------------------------------------


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


def roles_doc(container: Container) -> dict[str, Any]:
    """The annotation for one state dict: its decided roles and its key count."""
    roles = {e.key: e.role.value for e in container.entries  # exact evidence only
             if e.role in (Role.PARAMETER, Role.BUFFER)
             and e.evidence.startswith(("model:", "metadata:"))}
    return {"roles": roles, "keys": len(container.entries)}


def read_annotations(checkpoint: Checkpoint) -> dict[str, dict[str, Role]]:
    """container path -> {key: role} from metadata bufinspect wrote, where it still fits."""
    docs: dict[str, Any] = {}
    raw = checkpoint.metadata.get(META_KEY)
    if raw is not None:
        docs = _parse(raw)
    elif checkpoint.format in (Format.TORCH_ZIP, Format.TORCH_LEGACY):
        side = checkpoint.path + SIDECAR_SUFFIX
        from bufinspect.formats import _files

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


def write_annotations(checkpoint: Checkpoint) -> str:
    """Write the checkpoint's decided roles: into a safetensors header, else a sidecar JSON.

    Returns the path written.
    """
    containers = {c.path: roles_doc(c) for c in checkpoint.containers
                  if c.kind is ContainerKind.STATE_DICT}
    if checkpoint.format is Format.SAFETENSORS:
        doc = {"schema": ROLES_SCHEMA, "containers": containers}
        rewrite_safetensors_metadata(checkpoint.path, {META_KEY: json.dumps(doc)})
        return checkpoint.path
    if checkpoint.format not in (Format.TORCH_ZIP, Format.TORCH_LEGACY):
        raise UsageError(f"cannot annotate a {checkpoint.format.value} file (its roles are "
                         "already exact)", checkpoint.path)
    side = checkpoint.path + SIDECAR_SUFFIX
    doc = {"schema": ROLES_SCHEMA, "file": os.path.basename(checkpoint.path),
           "fingerprint": fingerprint(checkpoint.path), "containers": containers}
    from bufinspect.formats import write

    write.write_atomic(side, json.dumps(doc, indent=1) + "\n", inputs=[checkpoint.path])
    return side


def rewrite_safetensors_metadata(path: str, extra: dict[str, str]) -> None:
    """Add string entries to a safetensors `__metadata__`, streaming the data into a new file."""
    from bufinspect.formats import safetensors_fmt

    from bufinspect.formats import _files, write

    with _files.open_file(path) as f:
        size = _files.size_of(f)
        safetensors_fmt.parse_header(path, f, size)  # validates the whole header
        f.seek(0)
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        meta = dict(header.get("__metadata__") or {})
        meta.update(extra)
        header = {"__metadata__": meta, **{k: v for k, v in header.items()
                                           if k != "__metadata__"}}
        body = json.dumps(header, separators=(",", ":")).encode()
        body += b" " * (-len(body) % 8)

        def copy(out) -> None:
            out.write(struct.pack("<Q", len(body)) + body)
            while True:
                chunk = f.read(4 << 20)
                if not chunk:
                    break
                out.write(chunk)

        # an exclusive temp file beside it, then one rename (never a fixed, plantable name)
        write.write_atomic(path, copy, inputs=[path], replace_input=path)


def save(model: Any, path: str, metadata: dict[str, str] | None = None) -> str:
    """Save `model`'s state dict with its roles, so that bufinspect reads them back exactly.

    Args:
        model: an `nn.Module`.
        path: `*.safetensors` (roles go into the header's `__metadata__`) or any other name
            (a `torch.save` file plus a `<path>.bufinspect.json` sidecar).
        metadata: extra string metadata for safetensors files.

    Returns:
        The path of the file holding the roles (the safetensors file, or the sidecar).
    """
    import torch

    sd = model.state_dict()
    truth = module_roles(model)
    roles = {k: truth[k][0].value for k in sd if k in truth}
    doc = {"schema": ROLES_SCHEMA, "containers": {"": {"roles": roles, "keys": len(sd)}}}
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file

        tensors, seen = {}, {}
        for k, v in sd.items():  # safetensors refuses shared memory: give tied copies their own
            ptr = v.untyped_storage().data_ptr()
            tensors[k] = v.detach().clone().contiguous() if ptr in seen else v.contiguous()
            seen[ptr] = k
        save_file(tensors, path, metadata={**(metadata or {}), META_KEY: json.dumps(doc)})
        return path
    torch.save(sd, path)
    side = path + SIDECAR_SUFFIX
    doc.update({"file": os.path.basename(path), "fingerprint": fingerprint(path)})
    from bufinspect.formats import write

    write.write_atomic(side, json.dumps(doc, indent=1) + "\n", inputs=[path])
    return side
