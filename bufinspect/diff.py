"""Two checkpoints -> DiffReport: which module-state tensors moved, and by how much.

Keys are aligned first (wrapper prefixes such as `module.` removed automatically, user prefix and
rename rules applied), then metadata decides `added`/`removed`/`shape`/`dtype` without reading any
data. Entries that match in shape and dtype are streamed in step, chunk by chunk
(`stream.paired_chunks`); byte-identical chunks cost one memcmp-speed compare, and only chunks
whose bytes differ go through the float64 kernel (`numeric.DiffAccumulator`). Nothing imports torch
unless the CUDA path is chosen.
"""

from __future__ import annotations

import fnmatch
import math
import os
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from bufinspect import dtypes
from bufinspect.errors import InputError, UsageError
from bufinspect.model import SCHEMA, Checkpoint, ContainerKind, Entry, Role

if TYPE_CHECKING:
    import numpy as np

WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_AUTO_CUDA_BYTES = 64 << 20  # --device auto moves to the GPU after this many differing bytes


class Status(str, Enum):
    EQUAL = "equal"
    CLOSE = "close"
    CHANGED = "changed"
    ADDED = "added"
    REMOVED = "removed"
    SHAPE = "shape"
    DTYPE = "dtype"


DIFFERENT = (Status.CHANGED, Status.ADDED, Status.REMOVED, Status.SHAPE, Status.DTYPE)


class Scope(str, Enum):
    BUFFERS = "buffers"
    ALL = "all"
    PARAMETERS = "parameters"


_SCOPE_ROLES = {
    Scope.BUFFERS: {Role.BUFFER, Role.UNKNOWN},
    Scope.PARAMETERS: {Role.PARAMETER, Role.UNKNOWN},
    Scope.ALL: set(Role),
}


@dataclass(frozen=True)
class Tolerance:
    """A per-key override: keys matching `glob` (or `*.glob`) use these tolerances."""

    glob: str
    rtol: float
    atol: float | None = None  # None: the global atol

    @classmethod
    def parse(cls, spec: str) -> "Tolerance":
        """Parse `GLOB=RTOL[,ATOL]`, e.g. `running_var=1e-3` or `layer4.*=1e-4,1e-6`."""
        glob, sep, values = spec.rpartition("=")
        try:
            if not sep or not glob:
                raise ValueError
            parts = values.split(",")
            if len(parts) > 2:
                raise ValueError
            rtol = float(parts[0])
            atol = float(parts[1]) if len(parts) == 2 else None
            if not (rtol >= 0 and (atol is None or atol >= 0)):
                raise ValueError
        except ValueError:
            raise UsageError(f"--tol {spec!r}: expected GLOB=RTOL[,ATOL] with non-negative "
                             "numbers, e.g. 'running_var=1e-3' or '*.running_*=1e-3,1e-6'"
                             ) from None
        return cls(glob, rtol, atol)

    def matches(self, key: str) -> bool:
        return fnmatch.fnmatchcase(key, self.glob) or fnmatch.fnmatchcase(key, "*." + self.glob)

    def __str__(self) -> str:
        return f"{self.glob}={self.rtol:g}" + ("" if self.atol is None else f",{self.atol:g}")


def tolerances_for(key: str, rtol: float, atol: float, overrides: Sequence[Tolerance]
                   ) -> tuple[float, float]:
    """The (rtol, atol) for one key: the last matching override wins."""
    for t in reversed(overrides):
        if t.matches(key):
            return t.rtol, atol if t.atol is None else t.atol
    return rtol, atol


@dataclass(frozen=True)
class DiffEntry:
    """One aligned key and its verdict. Metrics are None where no data was compared."""

    key: str  # A's key (B's for `added`)
    role: Role
    status: Status
    shape: tuple[int, ...] | None = None  # A's (B's for `added`)
    dtype: str | None = None
    key_b: str | None = None  # B's key when alignment changed it
    shape_b: tuple[int, ...] | None = None  # only for `shape`
    dtype_b: str | None = None  # only for `dtype`
    rtol: float = 0.0
    atol: float = 0.0
    numel: int | None = None
    max_abs: float | None = None
    max_rel: float | None = None
    mean_abs: float | None = None
    mismatched: int | None = None
    nonfinite: int | None = None  # elements where NaN/inf appeared, vanished or changed sign
    rel_l2: float | None = None
    cosine: float | None = None
    old: int | float | bool | None = None  # one-element integer/bool tensors: the values
    new: int | float | bool | None = None
    note: str | None = None
    envelope: tuple[tuple[float, float, float], ...] | None = field(default=None, repr=False)
    approximate: bool = False  # re-judged from saved metrics and too close to call exactly

    @property
    def moved(self) -> float:
        """How much the entry moved, for sorting: relative L2 change (inf for metadata changes)."""
        if self.status in (Status.ADDED, Status.REMOVED, Status.SHAPE, Status.DTYPE):
            return math.inf
        if self.nonfinite:
            return math.inf
        if self.rel_l2 is not None:
            return self.rel_l2
        return self.max_abs or 0.0

    def to_dict(self, *, envelope: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {"key": self.key, "role": self.role.value, "status": self.status.value}
        if self.key_b is not None and self.key_b != self.key:
            d["key_b"] = self.key_b
        if self.shape is not None:
            d["shape"] = list(self.shape)
            d["dtype"] = self.dtype
        if self.shape_b is not None:
            d["shape_b"] = list(self.shape_b)
        if self.dtype_b is not None:
            d["dtype_b"] = self.dtype_b
        if self.status in (Status.EQUAL, Status.CLOSE, Status.CHANGED) and self.note is None:
            d.update(rtol=self.rtol, atol=self.atol)
            for k in ("max_abs", "max_rel", "mean_abs", "mismatched", "numel", "nonfinite",
                      "rel_l2", "cosine"):
                d[k] = getattr(self, k)
            if self.old is not None:
                d["old"], d["new"] = self.old, self.new
        if self.note:
            d["note"] = self.note
        if self.approximate:
            d["approximate"] = True
        if envelope and self.envelope is not None:
            d["envelope"] = [list(p) for p in self.envelope]
        return d


@dataclass(frozen=True)
class DiffReport:
    """The diff of two checkpoints; `to_dict()` is the bufinspect/1 `diff` document."""

    paths: tuple[str, str]
    scope: Scope
    rtol: float
    atol: float
    entries: tuple[DiffEntry, ...]
    tolerances: tuple[Tolerance, ...] = ()
    containers: tuple[str | None, str | None] = (None, None)
    alignment: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    from_metrics: bool = False

    @property
    def summary(self) -> dict[str, int]:
        out = {s.value: 0 for s in Status}
        for e in self.entries:
            out[e.status.value] += 1
        return out

    @property
    def has_differences(self) -> bool:
        """True when any in-scope entry is changed, added, removed, or differs in shape/dtype."""
        return any(e.status in DIFFERENT for e in self.entries)

    @property
    def identical(self) -> bool:
        return all(e.status is Status.EQUAL for e in self.entries)

    def to_dict(self, *, envelope: bool = False) -> dict[str, Any]:
        """The JSON document; `envelope=True` adds what `--from-metrics` needs to re-judge."""
        doc: dict[str, Any] = {
            "schema": SCHEMA, "command": "diff", "paths": list(self.paths),
            "scope": self.scope.value, "rtol": self.rtol, "atol": self.atol,
            "tolerances": [str(t) for t in self.tolerances],
            "containers": list(self.containers),
            "alignment": self.alignment,
            "device": self.device,
            "entries": [e.to_dict(envelope=envelope) for e in self.entries],
            "summary": self.summary,
            "identical": self.identical,
        }
        if self.from_metrics:
            doc["from_metrics"] = True
        return doc


# ---- choosing and aligning entries ---------------------------------------------------------


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


# ---- the sweep -----------------------------------------------------------------------------


class _Engine:
    """Where the numeric kernel runs: numpy on the CPU, or torch on a GPU."""

    def __init__(self, device: str):
        if device not in ("auto", "cpu", "cuda"):
            raise UsageError(f"--device {device!r}: expected auto, cpu or cuda")
        self.want = device
        self.cuda = None
        self.seen = 0
        if device == "cuda":
            self.cuda = _cuda_kernel()
            if self.cuda is None:
                raise UsageError("--device cuda: no CUDA GPU is available "
                                 "(torch.cuda.is_available() is False)")

    @property
    def name(self) -> str:
        return "cuda:0" if self.cuda is not None else "cpu"

    def workers(self, jobs: int) -> int:
        """CPU threads for the sweep: one when a GPU does (or may take over) the numeric work."""
        if self.cuda is not None or (self.want == "auto" and os.path.exists("/dev/nvidiactl")):
            return 1
        return max(int(jobs), 1)

    def add(self, acc, a: np.ndarray, b: np.ndarray, dtype: str) -> None:
        if (self.want == "auto" and self.cuda is None and self.seen < _AUTO_CUDA_BYTES
                <= self.seen + a.nbytes and os.path.exists("/dev/nvidiactl")):
            self.cuda = _cuda_kernel()
            self.want = "cpu" if self.cuda is None else "cuda"
        self.seen += a.nbytes
        kind = dtypes.DTYPES[dtype].kind
        if self.cuda is not None and acc.envelope is None and kind != "complex":
            self.cuda(acc, a, b, dtype)
        else:
            acc.add(a, b, dtype)


def _cuda_kernel():
    """A GPU version of `DiffAccumulator.add` (same float64 arithmetic), or None without CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return _torch_kernel(torch.device("cuda:0"))


def _torch_kernel(dev):
    """`DiffAccumulator.add` with torch on `dev`: the fused kernel's GPU twin
    (`kernels.torch_diff_partial`), merged like the CPU kernel's partials."""
    import numpy as np
    import torch

    from bufinspect import kernels
    from bufinspect.numeric import as_float

    def add(acc, a: np.ndarray, b: np.ndarray, dtype: str) -> None:
        def up(x):
            if x.dtype == np.bool_:
                x = x.view(np.uint8)
            if dtypes.DTYPES[dtype].kind == "float":
                x = as_float(x, dtype)
            return torch.from_numpy(np.ascontiguousarray(x)).to(dev).to(torch.float64)

        acc.add_partial(kernels.torch_diff_partial(up(a), up(b), acc.rtol, acc.atol))

    return add


def _bb(entries: list[Entry]) -> dict[int, float]:
    """Sum of squares of whole entries (second pass, for entries that are partly equal)."""
    import numpy as np

    from bufinspect.formats import stream
    from bufinspect.numeric import widen64

    out: dict[int, float] = {}
    for e, _, arr in stream.pieces(entries):
        x = widen64(arr, e.dtype)
        sq = float(np.vdot(x, x).real) if x.dtype.kind == "c" else float(np.einsum("i,i->", x, x))
        out[id(e)] = out.get(id(e), 0.0) + sq
    return out


def _compare(pairs: list[tuple[Entry, Entry]], tols: list[tuple[float, float]], engine: _Engine,
             envelope: bool, progress: Callable[[int], None] | None, jobs: int = 1
             ) -> list[dict[str, Any]]:
    """Stream the pairs in step; return per pair the metric fields of its DiffEntry.

    With `jobs` > 1 the sweep's steps (about 4 MiB of each side) go to `jobs` threads, each
    taking the next step in file order when it is free, with its own buffers (the reads, memcmp
    and numpy kernels release the GIL): a worker that stops to import numpy or to measure a
    differing step does not hold up the others. Every differing step gets an accumulator of its
    own; they are merged in element order afterwards, so the report is the same for any number
    of workers (and for any share of the pairs, which is what a torch.distributed rank
    computes). Identical data never imports numpy.
    """
    import threading

    from bufinspect import parallel
    from bufinspect.formats import stream

    readable = [i for i, (a, b) in enumerate(pairs)
                if stream.readable(a) and stream.readable(b)]
    sub = [pairs[i] for i in readable]
    counters = [i for i in readable if pairs[i][0].numel == 1
                and dtypes.DTYPES[pairs[i][0].dtype].kind in ("int", "uint", "bool")]
    values = iter(stream.read_scalars(e for i in counters for e in pairs[i]))
    scalars = {i: (next(values), next(values)) for i in counters}
    queue = iter(stream.pair_batches(sub))
    lock = threading.Lock()

    def take():
        while True:
            with lock:
                batch = next(queue, None)
            if batch is None:
                return
            yield batch

    def sweep(rest: bool) -> list[tuple[int, int, int, Any]]:
        """(pair, first element, elements, accumulator of a differing piece or None when
        identical) for the steps this worker took."""
        found = []
        for chunk in stream.paired_chunks(sub, skip_equal=True, batches=[] if rest else take(),
                                          rest=rest):
            for j, first, count, a, b in chunk.items:
                ea = sub[j][0]
                if progress is not None:
                    progress(2 * count * dtypes.itemsize(ea.dtype))
                if a is None or stream.same_bytes(a, b):
                    found.append((j, first, count, None))
                    continue
                from bufinspect.numeric import DiffAccumulator

                part = DiffAccumulator(*tols[readable[j]], envelope)
                engine.add(part, a, b, ea.dtype)
                found.append((j, first, count, part))
        return found

    jobs = engine.workers(jobs)
    tasks = [False] * jobs + [True]  # the last task: pairs read whole (strided views)
    equal: dict[int, int] = {}
    parts: dict[int, list[tuple[int, Any]]] = {}
    for found in parallel.map_groups(tasks, sweep, jobs, threads=True):
        for j, first, count, part in found:
            i = readable[j]
            if part is None:
                equal[i] = equal.get(i, 0) + count
            else:
                parts.setdefault(i, []).append((first, part))
    accs = {}
    if parts:  # numpy is loaded by now
        from bufinspect.numeric import DiffAccumulator

        for i, found in parts.items():
            acc = accs[i] = DiffAccumulator(*tols[i], envelope)
            acc.add_equal(equal.get(i, 0))
            for _, part in sorted(found, key=lambda f: f[0]):
                acc.merge(part)
    # entries with both equal and differing chunks: norms of the equal part, by a second pass
    partly = [pairs[i][1] for i, acc in accs.items() if acc.equal_elems]
    if partly:
        whole = _bb(partly)
        for i, acc in accs.items():
            if acc.equal_elems:
                eq = max(whole[id(pairs[i][1])] - acc.bb, 0.0)
                acc.aa += eq
                acc.ab += eq
                acc.bb += eq
    out = []
    readable_set = set(readable)
    for i, (ea, eb) in enumerate(pairs):
        if i not in readable_set:
            if ea.numel == 0:
                out.append({"status": Status.EQUAL, "numel": 0, "max_abs": 0.0, "max_rel": 0.0,
                            "mean_abs": 0.0, "mismatched": 0, "nonfinite": 0, "rel_l2": 0.0,
                            "cosine": None})
            else:
                out.append({"status": Status.CHANGED,
                            "note": "data not readable (meta tensor or packed/quantized dtype); "
                                    "not compared"})
            continue
        fields = metrics(accs[i], ea.numel) if i in accs else _identical(ea.numel, envelope)
        if i in scalars:
            fields["old"], fields["new"] = scalars[i]
        out.append(fields)
    return out


def _identical(numel: int, envelope: bool) -> dict[str, Any]:
    """What `metrics` gives for byte-identical data (without making an accumulator)."""
    return {"status": Status.EQUAL, "numel": numel, "max_abs": 0.0, "max_rel": 0.0,
            "mean_abs": 0.0, "mismatched": 0, "nonfinite": 0, "rel_l2": 0.0, "cosine": 1.0,
            "envelope": () if envelope else None}


def metrics(acc, numel: int) -> dict[str, Any]:
    """DiffEntry fields from an accumulator (status decided from the mismatches)."""
    if acc.diff_elems == 0:
        return _identical(numel, acc.envelope is not None)
    if acc.max_abs == 0 and acc.nonfinite == 0:
        status = Status.EQUAL
    else:
        status = Status.CLOSE if acc.mismatched == 0 else Status.CHANGED
    bb = acc.bb
    rel_l2 = math.sqrt(acc.sum_d2) / math.sqrt(bb) if bb else (0.0 if acc.sum_d2 == 0
                                                               else math.inf)
    cosine = acc.ab / math.sqrt(acc.aa * acc.bb) if acc.aa > 0 and acc.bb > 0 else None
    if cosine is not None:
        cosine = max(-1.0, min(1.0, cosine))
    env = None
    if acc.envelope is not None:
        env = tuple(tuple(p) for p in acc.envelope_points())
    return {"status": status, "numel": numel, "max_abs": acc.max_abs, "max_rel": acc.max_rel,
            "mean_abs": acc.sum_abs / numel if numel else 0.0, "mismatched": acc.mismatched,
            "nonfinite": acc.nonfinite, "rel_l2": rel_l2, "cosine": cosine, "envelope": env}


def diff(a: Checkpoint | str, b: Checkpoint | str, *, scope: Scope | str = Scope.BUFFERS,
         rtol: float = 1e-5, atol: float = 1e-8, tolerances: Iterable[Tolerance | str] = (),
         containers: Sequence[str] = (), strip_prefix: Sequence[str] = (),
         add_prefix: Sequence[str] = (), rename: Sequence[tuple[str, str] | str] = (),
         auto_align: bool = True, device: str = "cpu", save_envelope: bool = False,
         progress: Callable[[int], None] | None = None, jobs: int = 1,
         compare: Callable[..., list[dict[str, Any]]] | None = None) -> DiffReport:
    """Compare the module state of two checkpoints.

    Args:
        a, b: checkpoints (paths are loaded with `bufinspect.load`).
        scope: `buffers` (buffers and unknown entries, the default), `parameters` (parameters and
            unknown entries) or `all`.
        rtol, atol: allclose tolerances, `|a-b| <= atol + rtol*|b|`, computed in float64.
        tolerances: per-key overrides (`Tolerance` or `GLOB=RTOL[,ATOL]` strings; last match wins).
        containers: zero, one (both sides) or two (A, B) container paths; default: the one
            module state dict of each checkpoint.
        strip_prefix, add_prefix, rename: key alignment rules (see `align`); `rename` items are
            `(OLD, NEW)` or `OLD=NEW`.
        auto_align: remove `module.`/`_orig_mod.` prefixes that only one side has.
        device: `cpu`, `cuda` (UsageError without a GPU) or `auto` (a GPU when one is present
            and more than 64 MiB of data differs).
        save_envelope: also keep what `rejudge_report` needs (costs time on differing chunks).
        progress: called with the number of bytes read after each step (from worker threads
            when `jobs` > 1).
        jobs: CPU threads for the data sweep (the report does not depend on it).
        compare: runs the data pass instead of `_compare`, with the same arguments and result
            (`bufinspect.distributed` shares it across ranks).

    Returns:
        A `DiffReport`: entries in A's key order (added keys last), with statuses and metrics.
    """
    from bufinspect import load

    ck_a = a if isinstance(a, Checkpoint) else load(str(a))
    ck_b = b if isinstance(b, Checkpoint) else load(str(b))
    scope = Scope(scope)
    tols = tuple(t if isinstance(t, Tolerance) else Tolerance.parse(t) for t in tolerances)
    if not (rtol >= 0 and atol >= 0):
        raise UsageError("--rtol and --atol must be non-negative numbers")
    containers = list(containers)
    if len(containers) > 2:
        raise UsageError("--container may be given at most twice (A's, then B's)")
    ca = containers[0] if containers else None
    cb = containers[-1] if containers else None
    path_a, ents_a = module_state(ck_a, ca)
    path_b, ents_b = module_state(ck_b, cb)
    renames = [tuple(r.split("=", 1)) if isinstance(r, str) else r for r in rename]
    for r in renames:
        if len(r) != 2 or not r[0]:
            raise UsageError(f"--rename {'='.join(r)!r}: expected OLD=NEW")
    ma, mb, applied = align([e.key for e in ents_a], [e.key for e in ents_b], strip=strip_prefix,
                            add=add_prefix, rename=renames, auto=auto_align)
    by_b: dict[str, Entry] = {}
    for e in ents_b:
        by_b.setdefault(mb[e.key], e)
    roles = _SCOPE_ROLES[scope]
    engine = _Engine(device)
    results: list[dict[str, Any]] = []  # DiffEntry fields, built once at the end
    pairs: list[tuple[Entry, Entry]] = []
    slots: list[tuple[int, float, float]] = []
    seen_b: set[str] = set()
    for ea in ents_a:
        name = ma[ea.key]
        eb = by_b.get(name)
        if eb is not None:
            seen_b.add(name)
        if ea.role not in roles and (eb is None or eb.role not in roles):
            continue
        role = ea.role if ea.role is not Role.UNKNOWN or eb is None else eb.role
        r, t = tolerances_for(ea.key, rtol, atol, tols)
        fields = {"key": ea.key, "role": role, "status": Status.EQUAL, "shape": ea.shape,
                  "dtype": ea.dtype, "key_b": eb.key if eb is not None else None, "rtol": r,
                  "atol": t}
        if eb is None:
            fields["status"] = Status.REMOVED
        elif ea.shape != eb.shape:
            fields.update(status=Status.SHAPE, shape_b=eb.shape,
                          dtype_b=eb.dtype if eb.dtype != ea.dtype else None)
        elif ea.dtype != eb.dtype:
            fields.update(status=Status.DTYPE, dtype_b=eb.dtype)
        else:
            slots.append((len(results), r, t))
            pairs.append((ea, eb))
        results.append(fields)
    for eb in ents_b:
        if mb[eb.key] not in seen_b and eb.role in roles:
            results.append({"key": eb.key, "role": eb.role, "status": Status.ADDED,
                            "shape": eb.shape, "dtype": eb.dtype, "rtol": rtol, "atol": atol})
    measured = (compare or _compare)(pairs, [(r, t) for _, r, t in slots], engine,
                                     save_envelope, progress, jobs)
    for (pos, _, _), f in zip(slots, measured):
        results[pos].update(f)
    entries = tuple(DiffEntry(**f) for f in results)
    return DiffReport((ck_a.path, ck_b.path), scope, rtol, atol, entries, tols,
                      (path_a, path_b), applied, engine.name)


# ---- saved metrics -------------------------------------------------------------------------


def load_metrics(path: str) -> dict[str, Any]:
    """Read a document written by `--save-metrics` (a diff document with envelopes)."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except json.JSONDecodeError as exc:
        raise InputError(f"not a bufinspect metrics file ({exc.msg})", path) from None
    except UnicodeDecodeError:
        raise InputError("not a bufinspect metrics file (not UTF-8 text)", path) from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or doc.get("command") != "diff" \
            or not isinstance(doc.get("entries"), list):
        raise InputError("not a bufinspect metrics file (expected a bufinspect/1 diff document "
                         "written by --save-metrics)", path)
    return doc


def _num(v: Any) -> Any:
    if isinstance(v, str) and v in ("nan", "inf", "-inf"):
        return float(v)
    return v


def rejudge_report(doc: dict[str, Any], *, rtol: float | None = None, atol: float | None = None,
                   tolerances: Iterable[Tolerance | str] | None = None,
                   source: str = "metrics") -> DiffReport:
    """Judge saved per-entry metrics again under new tolerances, without reading checkpoints.

    Exact wherever the saved envelope decides it (an entry is `close` when every bucket's largest
    |a-b| is within `atol + rtol * (bucket's smallest |b|)`, `changed` when one exceeds
    `atol + rtol * (bucket's largest |b|)`). Between the two (buckets are 2**-7 wide in |b|)
    the entry is reported `changed` with `approximate: true`. `mismatched` is kept only where the
    tolerances are the saved ones (otherwise null: counts need the data).
    """
    try:
        rtol = float(doc["rtol"]) if rtol is None else rtol
        atol = float(doc["atol"]) if atol is None else atol
        if tolerances is None:
            tolerances = doc.get("tolerances", [])
        tols = tuple(t if isinstance(t, Tolerance) else Tolerance.parse(t) for t in tolerances)
        entries = []
        for d in doc["entries"]:
            status = Status(d["status"])
            kw: dict[str, Any] = {k: _num(d.get(k)) for k in (
                "numel", "max_abs", "max_rel", "mean_abs", "nonfinite", "rel_l2", "cosine", "old",
                "new", "note")}
            shape = tuple(d["shape"]) if d.get("shape") is not None else None
            e = DiffEntry(d["key"], Role(d["role"]), status, shape, d.get("dtype"),
                          key_b=d.get("key_b"),
                          shape_b=tuple(d["shape_b"]) if d.get("shape_b") else None,
                          dtype_b=d.get("dtype_b"), **kw)
            if status in (Status.EQUAL, Status.CLOSE, Status.CHANGED) and e.note is None:
                r, t = tolerances_for(e.key, rtol, atol, tols)
                mismatched = d.get("mismatched") if (r, t) == (d.get("rtol"), d.get("atol")) \
                    else None
                env = d.get("envelope")
                if status is Status.EQUAL:
                    new = Status.EQUAL
                    mismatched = 0
                    approx = False
                elif e.nonfinite:
                    new, approx = Status.CHANGED, False
                elif env is None:
                    raise InputError(f"entry {e.key!r} has no envelope: save metrics with "
                                     "--save-metrics to re-judge them", source)
                else:
                    verdict = _rejudge(env, r, t)
                    new = Status.CLOSE if verdict else Status.CHANGED
                    approx = verdict is None
                if mismatched is None and new is Status.CLOSE:
                    mismatched = 0
                e = replace(e, status=new, rtol=r, atol=t, mismatched=mismatched,
                            approximate=approx,
                            envelope=tuple(tuple(p) for p in env) if env else None)
            entries.append(e)
        return DiffReport(tuple(doc["paths"]), Scope(doc["scope"]), rtol, atol, tuple(entries),
                          tols, tuple(doc.get("containers") or (None, None)),
                          doc.get("alignment") or {}, doc.get("device", "cpu"), from_metrics=True)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"not a bufinspect metrics file ({type(exc).__name__}: {exc})",
                         source) from None


def _rejudge(env: list[list[float]], rtol: float, atol: float) -> bool | None:
    from bufinspect.numeric import rejudge

    return rejudge([[float(x) for x in p] for p in env], rtol, atol)
