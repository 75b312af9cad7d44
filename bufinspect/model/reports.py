"""The reports the analyses return and the renderers print: one home for every result type.

Each report's `to_dict()` is its `bufinspect/1` JSON document (SPEC.md). Nothing here reads files,
imports torch or formats text for people (that is `bufinspect.render`).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Sequence

from bufinspect.errors import UsageError
from bufinspect.model.checkpoint import SCHEMA, Checkpoint, Entry, Role, TensorStats, summarize

# ---- show ----------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class ModelState:
    """What `load_state_dict(strict=True)` of the user's model (`--model`) expects, key by key
    (`annotate.expected_state` builds it from the module, on meta)."""

    shapes: dict[str, tuple[int, ...] | None]  # key -> shape; None: lazy (uninitialized)
    buffers: frozenset[str]  # persistent buffers (the other keys are parameters)
    aliases: dict[str, tuple[str, ...]]  # tied tensors: every name of the same tensor
    # (tensors: key -> (shape, dtype), versions: `_metadata` versions or None) -> (missing,
    # unexpected) keys as the model's own load_state_dict(strict=False) reports them, or None
    verdict: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ShowReport:
    """What `show` lists: the selected entries, optional statistics, and where roles came from
    a model (`--model`, `--hf-config`): its spec and how it matched each state dict."""

    checkpoint: Checkpoint
    entries: tuple[Entry, ...]  # after --role / --filter / --container selection
    stats: dict[tuple[str, str], TensorStats] | None = None  # (container, key) -> stats
    model: str | None = None  # `MODULE:FACTORY`, or `hf-config`
    matches: tuple[ModelMatch, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        ck = self.checkpoint
        out_entries = []
        for e in self.entries:
            d = e.to_dict()
            if self.stats is not None:
                st = self.stats.get((e.container, e.key))
                d["stats"] = st.to_dict() if st else None
            out_entries.append(d)
        doc: dict[str, Any] = {
            "schema": SCHEMA,
            "command": "show",
            "path": ck.path,
            "format": ck.format.value,
            "size": ck.size,
            "containers": [c.to_dict() for c in ck.containers],
            "entries": out_entries,
            "summary": summarize(self.entries),
        }
        if ck.metadata:
            doc["metadata"] = dict(ck.metadata)
        if ck.foreign_globals:
            doc["foreign_globals"] = list(ck.foreign_globals)
        if ck.values:
            doc["values"] = dict(ck.values)
        if ck.calls:
            doc["calls"] = [{"name": n, "count": c} for n, c in ck.calls]
        if self.model is not None:
            doc["model"] = {"spec": self.model, "containers": [m.to_dict() for m in self.matches]}
        return doc


# ---- diff ----------------------------------------------------------------------------------


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


SCOPE_ROLES = {
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
    cast: dict[str, Any] | None = None  # status dtype: A against A cast (scan.castloss)

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
        if self.status is Status.DTYPE and self.max_abs is not None:  # what the cast lost
            d.update(rtol=self.rtol, atol=self.atol, cast=self.cast)
            for k in ("max_abs", "max_rel", "mean_abs", "mismatched", "numel", "nonfinite",
                      "rel_l2", "cosine"):
                d[k] = getattr(self, k)
        if self.note:
            d["note"] = self.note
        if self.approximate:
            d["approximate"] = True
        if envelope and self.envelope is not None:
            d["envelope"] = [list(p) for p in self.envelope]
        return d


@dataclass(frozen=True)
class DiffNote:
    """A remark on a diff as a whole (`analysis.diagnostics`); it does not change the verdict."""

    id: str
    message: str
    keys: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "message": self.message, "keys": list(self.keys)}


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
    # remarks on running statistics (analysis.diagnostics): statistics that did not move while
    # parameters trained, statistics that moved without their counter (or the reverse)
    notes: tuple["DiffNote", ...] = ()

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
        if self.notes:  # only when there is something to say: documents stay as they were
            doc["notes"] = [n.to_dict() for n in self.notes]
        if self.from_metrics:
            doc["from_metrics"] = True
        return doc


# ---- check ---------------------------------------------------------------------------------


class Severity(str, Enum):
    """How much a finding matters: errors fail `check`, warnings fail it with `--strict`."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class Finding:
    """One problem (or fact worth knowing) about one checkpoint, with the keys it concerns."""

    id: str
    severity: Severity
    path: str
    keys: tuple[str, ...]
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "severity": self.severity.value, "path": self.path,
                "keys": list(self.keys), "message": self.message}


@dataclass(frozen=True)
class ScanStats:
    """What the numeric pass measured for one tensor: exact on CPU and GPU alike."""

    nan: int = 0
    inf: int = 0
    negative: int = 0  # finite values below zero (counted for running_var entries only)
    min: float | None = None  # over finite values
    max: float | None = None


@dataclass(frozen=True)
class FileError:
    """A file `check` could not read; the other files are still checked (exit 2 at the end)."""

    path: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "message": self.message}


@dataclass(frozen=True)
class CheckReport:
    """The result of `check`: findings sorted by severity, and where the numeric scan ran.

    `ok` is False when any error remains (or, with `strict`, any warning). `to_dict()` is the
    bufinspect/1 `check` document. `stats` maps (path, container, key) to what the scan measured.
    """

    paths: tuple[str, ...]
    device: str
    findings: tuple[Finding, ...]
    strict: bool = False
    stats: dict[tuple[str, str, str], ScanStats] = field(default_factory=dict, compare=False,
                                                         repr=False)
    errors: tuple[FileError, ...] = ()  # files that could not be read (the others were checked)

    def count(self, severity: Severity) -> int:
        return sum(1 for f in self.findings if f.severity is severity)

    @property
    def ok(self) -> bool:
        failing = (Severity.ERROR, Severity.WARNING) if self.strict else (Severity.ERROR,)
        return not self.errors and not any(f.severity in failing for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        doc = {"schema": SCHEMA, "command": "check", "paths": list(self.paths),
               "device": self.device, "ok": self.ok,
               "findings": [f.to_dict() for f in self.findings]}
        if self.errors:
            doc["errors"] = [e.to_dict() for e in self.errors]
        return doc


# ---- trend ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrendRow:
    """One key: its metric against the first checkpoint at every step (None: not comparable)."""

    key: str
    role: Role
    values: tuple[float | None, ...]
    note: str = ""

    @property
    def total(self) -> float:
        """Total drift: the sum of the finite values (inf when a NaN/inf appeared)."""
        return sum(v for v in self.values if v is not None)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "role": self.role.value, "values": list(self.values),
                "total": self.total, "note": self.note}


@dataclass(frozen=True)
class TrendReport:
    """Rows sorted by total drift, largest first."""

    paths: tuple[str, ...]
    metric: str
    scope: Scope
    rows: tuple[TrendRow, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "command": "trend", "paths": list(self.paths),
                "metric": self.metric, "scope": self.scope.value,
                "rows": [r.to_dict() for r in self.rows]}
