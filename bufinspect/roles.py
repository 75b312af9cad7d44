"""Evidence -> role for every entry of a checkpoint: the heart of the product.

Readers that hold the module itself (a pickled module, TorchScript, an export signature) set exact
roles. For plain state dicts the rules below decide what the file proves and leave the rest
`unknown`: a wrong definite role is a bug, `unknown` is an honest answer.

Evidence strings are `kind:detail`; the kind (before the colon) is what the summary counts.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

from bufinspect import dtypes
from bufinspect.model import Checkpoint, Container, ContainerKind, Entry, Role

# normalization layers whose running statistics are buffers; `_metadata` version 2 marks them
_NORM_BUFFERS = {"running_mean", "running_var", "num_batches_tracked"}
_NORM_PARAMS = {"weight", "bias"}


def assign(checkpoint: Checkpoint) -> Checkpoint:
    """Return `checkpoint` with a role and evidence on every state-dict entry."""
    containers = tuple(
        _infer_state_dict(c) if c.kind is ContainerKind.STATE_DICT else c
        for c in checkpoint.containers
    )
    return dataclasses.replace(checkpoint, containers=containers)


def _infer_state_dict(c: Container) -> Container:
    by_module: dict[str, list[Entry]] = defaultdict(list)
    for e in c.entries:
        by_module[e.module].append(e)
    decided: dict[str, tuple[Role, str]] = {}
    for module, own in by_module.items():
        decided.update(_norm_layer(module, own, c.module_versions))
    out = []
    for e in c.entries:
        if e.role is not Role.UNKNOWN:
            out.append(e)
            continue
        role, evidence = decided.get(e.key) or _by_dtype(e) or (Role.UNKNOWN, "none")
        persistent = True if role is Role.BUFFER else None  # a state dict holds persistent ones
        out.append(dataclasses.replace(e, role=role, evidence=evidence, persistent=persistent))
    return dataclasses.replace(c, entries=tuple(out))


def _norm_layer(module: str, own: list[Entry], versions: dict[str, int] | None
                ) -> dict[str, tuple[Role, str]]:
    """BatchNorm/InstanceNorm with running statistics: the whole key set and shapes must match."""
    names = {e.name: e for e in own}
    if len(names) != len(own) or not {"running_mean", "running_var"} <= names.keys():
        return {}
    if not names.keys() <= _NORM_BUFFERS | _NORM_PARAMS:
        return {}
    if versions is not None and versions.get(module) != 2:
        return {}  # `_metadata` says this module is not of the BatchNorm/InstanceNorm family
    channels = names["running_mean"].shape
    if len(channels) != 1:
        return {}
    for n, e in names.items():
        want = () if n == "num_batches_tracked" else channels
        if e.shape != want:
            return {}
        if n == "num_batches_tracked" and e.dtype != "int64":
            return {}
        if n != "num_batches_tracked" and not dtypes.is_floating(e.dtype):
            return {}
    evidence = "layer:BatchNorm" + ("+metadata" if versions is not None else "")
    return {e.key: (Role.BUFFER if n in _NORM_BUFFERS else Role.PARAMETER, evidence)
            for n, e in names.items()}


def _by_dtype(e: Entry) -> tuple[Role, str] | None:
    """Integer and bool tensors cannot be trainable parameters."""
    d = dtypes.DTYPES.get(e.dtype)
    if d is not None and d.kind in ("int", "uint", "bool"):
        return Role.BUFFER, f"dtype:{e.dtype}"
    return None
