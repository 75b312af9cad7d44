"""Roles from the user's own model code (`--model MODULE:FACTORY`, `--hf-config`), and the role
documents bufinspect writes (`formats.role_metadata` puts them in a sidecar JSON beside a `.pt`, or
in `bufinspect.roles` of a safetensors header).

`--model` is the one place bufinspect runs code: the user's, never the checkpoint's. The model
is built on the `meta` device, so no memory is spent on its weights.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from typing import Any

from bufinspect.errors import UsageError
from bufinspect.model import Checkpoint, Container, ContainerKind, ModelMatch, Role

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


# ---- role metadata bufinspect writes (read and written by `formats.role_metadata`) ----------


def roles_doc(container: Container) -> dict[str, Any]:
    """The annotation for one state dict: its decided roles and its key count."""
    roles = {e.key: e.role.value for e in container.entries  # exact evidence only
             if e.role in (Role.PARAMETER, Role.BUFFER)
             and e.evidence.startswith(("model:", "metadata:"))}
    return {"roles": roles, "keys": len(container.entries)}


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
    from bufinspect.formats import role_metadata

    sd = model.state_dict()
    truth = module_roles(model)
    roles = {k: truth[k][0].value for k in sd if k in truth}
    return role_metadata.save_state_dict(sd, roles, str(path), metadata)


def annotation_docs(checkpoint: Checkpoint) -> dict[str, Any]:
    """The role documents `annotate` writes: one per state dict of the checkpoint."""
    return {c.path: roles_doc(c) for c in checkpoint.containers
            if c.kind is ContainerKind.STATE_DICT}
