"""The non-tensor values of a training checkpoint: epoch, step, loss, learning rates, scheduler.

A training dict (`{"model": sd, "optimizer": ..., "epoch": 3}`, Lightning's `.ckpt`) holds
numbers people look for first. They are taken from the already unpickled object (nothing is
read again, nothing runs): scalars and short lists of scalars near the top of the object, each
optimizer param group's hyperparameters (never its `params` ids) and the scheduler's state.
State dicts, optimizer `state` and tensors are skipped: they are listed as entries.
"""

from __future__ import annotations

from typing import Any

from bufinspect.formats._unpickle import PickledDict, Stub, TensorRef, stub_state

MAX_VALUES = 64  # a short section, not a dump
MAX_DEPTH = 4
MAX_LIST = 8  # lists of up to this many scalars are shown (base_lrs, betas)
MAX_TEXT = 120
_SCALARS = (bool, int, float, str, type(None))
# bookkeeping subtrees that would drown the section (Lightning's loop progress counters and
# callback states): listed in JSON by no one, looked at by no one first
_SKIP = frozenset({"loops", "callbacks"})
# optimizer param-group fields worth showing (params and flags like foreach are not)
_GROUP_FIELDS = ("lr", "initial_lr", "momentum", "betas", "weight_decay", "eps", "dampening",
                 "nesterov", "alpha", "rho", "lr_decay", "max_lr", "min_lr")


def _scalar(v: Any) -> bool:
    return isinstance(v, _SCALARS) and not (isinstance(v, str) and len(v) > MAX_TEXT)


def _short_list(v: Any) -> bool:
    return (isinstance(v, (list, tuple)) and 0 < len(v) <= MAX_LIST
            and all(isinstance(x, (bool, int, float)) for x in v))


def _has_tensors(d: dict) -> bool:
    return any(isinstance(v, TensorRef) for v in d.values())


def values_of(root: Any) -> tuple[tuple[str, Any], ...]:
    """(path, value) pairs, paths joined with `/` like container paths, in the file's order."""
    out: list[tuple[str, Any]] = []

    def add(path: str, value: Any) -> None:
        if len(out) < MAX_VALUES:
            out.append((path, list(value) if isinstance(value, tuple) else value))

    def walk(obj: Any, path: list[str], depth: int) -> None:
        if len(out) >= MAX_VALUES or depth > MAX_DEPTH:
            return
        if isinstance(obj, Stub):
            state = stub_state(obj)
            if isinstance(state.get("_modules"), dict):  # a pickled module: no training values
                return
            obj = state
        if not isinstance(obj, dict) or (depth and _has_tensors(obj)):
            return  # loose objects and state dicts (their tensors are entries)
        if "state" in obj and isinstance(obj.get("param_groups"), list):  # an optimizer
            for i, g in enumerate(obj["param_groups"]):
                if isinstance(g, dict):
                    for k in _GROUP_FIELDS:
                        v = g.get(k)
                        if v is not None and (_scalar(v) or _short_list(v)):
                            add("/".join(path + ["param_groups", str(i), k]), v)
            return
        for k, v in obj.items():
            if not isinstance(k, (str, int)) or isinstance(v, TensorRef) or k in _SKIP:
                continue
            here = path + [str(k)]
            if _scalar(v) and not (isinstance(k, str) and k.startswith("_metadata")):
                add("/".join(here), v)
            elif _short_list(v):
                add("/".join(here), v)
            elif isinstance(v, (dict, Stub)) and not isinstance(v, PickledDict):
                walk(v, here, depth + 1)
            elif isinstance(v, PickledDict) and not _has_tensors(v):
                walk(v, here, depth + 1)
            elif isinstance(v, (list, tuple)) and len(v) <= MAX_LIST:
                for i, item in enumerate(v):  # e.g. Lightning's lr_schedulers: [state]
                    if isinstance(item, dict):
                        walk(item, here + [str(i)], depth + 1)

    try:
        walk(root, [], 0)
    except RecursionError:  # a hostile, deeply nested object: the values are only a courtesy
        return tuple(out)
    return tuple(out)
