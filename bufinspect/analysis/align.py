"""Which entries of two checkpoints correspond: the module state dict of each side, and its keys
aligned across wrapper prefixes (`module.` from DDP, `_orig_mod.` from torch.compile) and the
user's strip/add/rename rules. Metadata only: no tensor data is read here."""

from __future__ import annotations

from typing import Any, Sequence

from bufinspect.errors import InputError, UsageError
from bufinspect.model import Checkpoint, ContainerKind, Entry

WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def module_state(ck: Checkpoint, container: str | None) -> tuple[str, list[Entry]]:
    """The one module state dict of a checkpoint (or the one named by `container`)."""
    if container is not None:
        for c in ck.containers:
            if c.path == container:
                return c.path, list(c.entries)
        shown = ", ".join(repr(c.path) for c in ck.containers) or "none"
        raise UsageError(f"no container {container!r} (found: {shown})", ck.path)
    found = [c for c in ck.containers if c.kind in (ContainerKind.STATE_DICT, ContainerKind.MODULE)]
    if len(found) == 1:
        return found[0].path, list(found[0].entries)
    if not found:
        if len(ck.containers) == 1:
            return ck.containers[0].path, list(ck.containers[0].entries)
        raise InputError("holds no module state dict; pick one with --container", ck.path)
    shown = ", ".join(repr(c.path) for c in found)
    raise UsageError(f"holds several module state dicts ({shown}); pick one with --container",
                     ck.path)


def _strip_common(keys: list[str], prefix: str) -> bool:
    return bool(keys) and all(k.startswith(prefix) for k in keys)


def align(keys_a: list[str], keys_b: list[str], *, strip: Sequence[str] = (),
          add: Sequence[str] = (), rename: Sequence[tuple[str, str]] = (), auto: bool = True
          ) -> tuple[dict[str, str], dict[str, str], dict[str, Any]]:
    """Map each side's keys to a common name; return (a map, b map, the alignment applied).

    User rules first: `strip` removes a prefix from keys of both sides, `add` prepends a prefix
    to A's keys, `rename` replaces a leading OLD with NEW in A's keys. Then, with `auto`, a
    wrapper prefix (`module.`, `_orig_mod.`) that every key of one side has and no key of the
    other has is removed from that side when that aligns more keys, repeatedly (for
    `_orig_mod.module.` and the like).
    """
    ma = {k: k for k in keys_a}
    mb = {k: k for k in keys_b}
    applied: dict[str, Any] = {"a": [], "b": []}
    for p in strip:
        for m, side in ((ma, "a"), (mb, "b")):
            if any(v.startswith(p) for v in m.values()):
                for k, v in m.items():
                    if v.startswith(p):
                        m[k] = v[len(p):]
                applied[side].append(f"strip {p}")
    for p in add:
        for k, v in ma.items():
            ma[k] = p + v
        applied["a"].append(f"add {p}")
    for old, new in rename:
        hit = False
        for k, v in ma.items():
            if v == old or (old.endswith(".") and v.startswith(old)):
                ma[k] = new + v[len(old):]
                hit = True
        if hit:
            applied["a"].append(f"rename {old}={new}")
    if auto:
        while True:  # greedily take the wrapper removal that aligns the most keys, if any
            va, vb = list(ma.values()), list(mb.values())
            best, best_n = None, len(set(va) & set(vb))
            for p in WRAPPER_PREFIXES:
                for side, mine, other in (("a", va, vb), ("b", vb, va)):
                    if _strip_common(mine, p) and not any(v.startswith(p) for v in other):
                        n = len({v[len(p):] for v in mine} & set(other))
                        if n > best_n:
                            best, best_n = (side, p), n
            if best is None:
                break
            side, p = best
            m = ma if side == "a" else mb
            for k in m:
                m[k] = m[k][len(p):]
            applied[side].append(f"strip {p}")
            applied["auto"] = True
    return ma, mb, {k: v for k, v in applied.items() if v}
