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
from typing import Any, Callable

from bufinspect import _torch
from bufinspect.errors import UsageError
from bufinspect.model import Checkpoint, Container, ContainerKind, ModelMatch, ModelState, Role

_PREFIXES = ("", "module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module.")


# ---- the user's model ----------------------------------------------------------------------


def build(spec: str) -> Any:
    """Import `MODULE:FACTORY` (or `MODULE:CLASS`) and call it with no arguments on `meta`."""
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise UsageError(f"--model wants MODULE:FACTORY, got {spec!r}", spec)
    torch = _torch.require("--model")  # before the user's module, which needs it too
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as exc:  # the user's code: report what it raised, in one line
        raise UsageError(f"cannot import {spec} ({type(exc).__name__}: {str(exc)[:120]})",
                         spec) from None

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


def expected_state(model: Any) -> ModelState:
    """What `model.load_state_dict(strict=True)` expects (keys, shapes, persistent buffers,
    tied names), and a verdict that asks the model's own load code about a file's keys.

    The verdict loads a state dict of meta tensors with the file's keys, shapes and dtypes (no
    data, no memory) with `strict=False`, so modules that rewrite keys while loading
    (FrozenBatchNorm2d drops num_batches_tracked, BatchNorm fills it in for an old-format state
    dict) are judged by their own code. It answers None where it cannot ask: lazy modules would
    materialize, and a load hook that needs values fails on meta tensors.
    """
    import torch
    from torch.nn.parameter import UninitializedTensorMixin

    shapes: dict[str, tuple[int, ...] | None] = {}
    buffers = set()
    by_tensor: dict[int, list[str]] = {}
    for prefix, m in model.named_modules(remove_duplicate=False):
        dot = prefix + "." if prefix else ""
        items = [(n, p, False) for n, p in m._parameters.items()]
        items += [(n, b, True) for n, b in m._buffers.items()
                  if n not in m._non_persistent_buffers_set]
        for n, t, is_buffer in items:
            if t is None:
                continue
            shapes[dot + n] = None if isinstance(t, UninitializedTensorMixin) else tuple(t.shape)
            if is_buffer:
                buffers.add(dot + n)
            by_tensor.setdefault(id(t), []).append(dot + n)
    aliases = {k: tuple(g) for g in by_tensor.values() if len(g) > 1 for k in g}
    lazy = any(v is None for v in shapes.values())

    def verdict(tensors: dict[str, tuple[tuple[int, ...], str]],
                versions: dict[str, int] | None) -> tuple[set[str], set[str]] | None:
        import warnings
        from collections import OrderedDict

        if lazy:
            return None
        fake: Any = OrderedDict()
        for key, (shape, dtype) in tensors.items():
            dt = getattr(torch, dtype, None)
            fake[key] = torch.empty(shape, device="meta",
                                    dtype=dt if isinstance(dt, torch.dtype) else torch.float32)
        if versions:
            fake._metadata = OrderedDict((m, {"version": v}) for m, v in versions.items()
                                         if isinstance(v, int))
        try:
            with warnings.catch_warnings():  # "copying ... to a meta parameter is a no-op"
                warnings.simplefilter("ignore")
                result = model.load_state_dict(fake, strict=False)
        except Exception:  # the user's load hooks: the caller compares keys instead
            return None
        return set(result.missing_keys), set(result.unexpected_keys)

    return ModelState(shapes, frozenset(buffers), aliases, verdict)


def build_hf(path: str) -> Any:
    """The model that `config.json` beside the weights describes, built by transformers on `meta`.

    Opt-in (`show --hf-config`): runs the installed transformers library's code, never code from
    the checkpoint's folder (`trust_remote_code=False`, local files only).
    """
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise UsageError("--hf-config: no config.json beside the weights", path)
    torch = _torch.require("--hf-config")
    try:
        import transformers
    except ImportError:
        raise UsageError("--hf-config needs the transformers package (pip install transformers)",
                         path) from None

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


def hf_key_renamer(model: Any) -> Callable[[str], str] | None:
    """A function mapping a file key to the model key transformers would load it into: the
    installed transformers library's own checkpoint-key renaming, for `show --hf-config`.

    transformers 5 loads checkpoints saved under a model's original hub names (DETR's
    `backbone.conv_encoder.model.*`, ViT's `embeddings.*` without the `vit.` prefix, ...) by
    renaming their keys on load (`conversion_mapping.get_model_conversion_mapping` +
    `core_model_loading.rename_source_key`). `--hf-config` applies the same renaming, so the model
    built from `config.json` lines up with the file's keys. Only the library's code runs (opt-in,
    like `--hf-config` itself); older transformers without these functions rename nothing.
    """
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import (WeightConverter, WeightRenaming,
                                                     rename_source_key)
    except ImportError:
        return None
    try:
        transforms = get_model_conversion_mapping(model)
    except Exception:  # a model the library cannot describe: no renaming
        return None
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    prefix = getattr(model, "base_model_prefix", None) or None
    known = {k: True for k in model.state_dict(keep_vars=True)}
    for k, _ in model.named_buffers(remove_duplicate=False):  # non-persistent ones too
        known.setdefault(k, True)

    def rename(key: str) -> str:
        try:
            return rename_source_key(key, renamings, converters, base_model_prefix=prefix,
                                     meta_state_dict=known)[0]
        except Exception:  # the library's own error on one odd key: leave it as it is
            return key

    return rename


def apply_model(checkpoint: Checkpoint, spec: str) -> tuple[Checkpoint, list[ModelMatch]]:
    """Give every state-dict key the model knows its exact role (`model:factory`)."""
    return apply_module(checkpoint, build(spec), "model:factory")


def apply_module(checkpoint: Checkpoint, model: Any, evidence: str,
                 rename: Callable[[str], str] | None = None
                 ) -> tuple[Checkpoint, list[ModelMatch]]:
    """Give every state-dict key that `model` (an nn.Module) knows its exact role.

    `rename` maps a file key the model does not know to the model key it loads into (the HF
    conversion mapping for `--hf-config`)."""
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
        entries, seen, unmatched = [], set(), []
        for e in c.entries:
            bare = e.key[len(prefix):] if e.key.startswith(prefix) else None
            if bare not in truth and rename is not None:
                bare = rename(e.key)
            if bare in truth:
                seen.add(bare)
                role, persistent = truth[bare]
                e = dataclasses.replace(e, role=role, evidence=evidence, persistent=persistent)
            else:
                unmatched.append(e.key)
            entries.append(e)
        absent = [k for k in truth if k not in seen]
        matches.append(ModelMatch(
            container=c.path, prefix=prefix, matched=len(seen),
            file_only=tuple(unmatched),
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

    Raises:
        UsageError: torch is not installed (`pip install 'bufinspect[torch]'`).
    """
    _torch.require("bufinspect.save")  # state_dict() and the file writers are torch's
    from bufinspect.formats import role_metadata

    sd = model.state_dict()
    truth = module_roles(model)
    roles = {k: truth[k][0].value for k in sd if k in truth}
    return role_metadata.save_state_dict(sd, roles, str(path), metadata)


def annotation_docs(checkpoint: Checkpoint) -> dict[str, Any]:
    """The role documents `annotate` writes: one per state dict of the checkpoint."""
    return {c.path: roles_doc(c) for c in checkpoint.containers
            if c.kind is ContainerKind.STATE_DICT}
