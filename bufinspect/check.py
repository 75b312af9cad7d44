"""Checkpoints -> CheckReport: device and dtype consistency, non-finite values, stale statistics.

Metadata checks read nothing but the listing. Numeric checks (NaN/Inf counts, negative running
variances) stream every floating tensor once, in file order: with numpy on the CPU, or chunk by
chunk through pinned host memory to the GPU when one is present and `device` allows it. Both paths
compute the same exact statistics (counts, finite min/max), so their findings are identical.

Finding ids and severities (the first ten are fixed by SPEC.md):

    mixed-devices            error    module tensors saved from more than one device
    gpu-saved                warning  tensors saved from a GPU (a CPU-only load needs map_location)
    missing-device           error    a saved cuda index this machine does not have (GPU present)
    mixed-param-dtypes       warning  floating parameters with more than one dtype
    buffer-dtype-mismatch    warning  a module's floating buffers differ from its parameters' dtype
    nan / inf                error    non-finite values
    negative-variance        error    a normalization running_var below zero
    expected-dtype           error    entries that break --expect-dtype
    expected-device          error    entries that break --expect-device
    low-precision-stats      warning  running_mean/running_var stored in float16/bfloat16/float8
    num-batches-tracked-dtype warning num_batches_tracked that is not int64
    meta-tensor              error    tensors saved from the meta device: no values in the file
    missing-num-batches-tracked  warning/info  running stats without num_batches_tracked
    shared-storage           info     keys that share one storage (tied weights)
    non-persistent-buffer    info     buffers a state dict of the module will not hold
"""

from __future__ import annotations

import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from bufinspect import dtypes
from bufinspect.errors import UsageError
from bufinspect.model import SCHEMA, Checkpoint, ContainerKind, Entry, Role

SEVERITIES = ("error", "warning", "info")

# id -> (severity, one line for --help and the README)
FINDINGS: dict[str, tuple[str, str]] = {
    "mixed-devices": ("error", "module tensors were saved from more than one device"),
    "gpu-saved": ("warning", "tensors saved from a GPU (a CPU-only load needs map_location)"),
    "missing-device": ("error", "a saved cuda index does not exist on this machine's GPUs"),
    "mixed-param-dtypes": ("warning", "floating-point parameters have more than one dtype"),
    "buffer-dtype-mismatch": ("warning", "a module's floating buffers differ from its "
                                         "parameters' dtype"),
    "nan": ("error", "NaN values"),
    "inf": ("error", "infinite values"),
    "negative-variance": ("error", "a normalization running_var holds negative values"),
    "expected-dtype": ("error", "entries that break --expect-dtype"),
    "expected-device": ("error", "entries that break --expect-device"),
    "low-precision-stats": ("warning", "running_mean/running_var in float16, bfloat16 or float8"),
    "num-batches-tracked-dtype": ("warning", "num_batches_tracked is not int64"),
    "meta-tensor": ("error", "tensors saved from the meta device hold no values"),
    "missing-num-batches-tracked": ("warning", "running stats without num_batches_tracked "
                                               "(info: old format)"),
    "shared-storage": ("info", "keys that share one storage (tied weights)"),
    "non-persistent-buffer": ("info", "buffers that a state dict of the module will not hold"),
}

_LOW_PRECISION = {"float16", "bfloat16"}
_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "fp64": "float64",
                  "f16": "float16", "f32": "float32", "f64": "float64"}
_ROLES = tuple(r.value for r in Role)
_MODULE_KINDS = (ContainerKind.STATE_DICT, ContainerKind.MODULE)


# ---- results --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Finding:
    """One problem (or fact worth knowing) about one checkpoint, with the keys it concerns."""

    id: str
    severity: str
    path: str
    keys: tuple[str, ...]
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "severity": self.severity, "path": self.path,
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
class Policy:
    """What a CI job expects: dtypes per role, a device, which ids to ignore, strictness."""

    expect_dtype: Mapping[str, str] = field(default_factory=dict)  # role -> dtype
    expect_device: str | None = None
    ignore: frozenset[str] = frozenset()
    strict: bool = False


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

    def count(self, severity: str) -> int:
        return sum(1 for f in self.findings if f.severity == severity)

    @property
    def ok(self) -> bool:
        failing = ("error", "warning") if self.strict else ("error",)
        return not any(f.severity in failing for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "command": "check", "paths": list(self.paths),
                "device": self.device, "ok": self.ok,
                "findings": [f.to_dict() for f in self.findings]}


# ---- policy ---------------------------------------------------------------------------------

def parse_dtype(text: str) -> str:
    """A dtype as users write it (`bfloat16`, `torch.bfloat16`, `bf16`, `half`) -> canonical."""
    name = text.strip().lower().removeprefix("torch.")
    name = dtypes.canonical(_DTYPE_ALIASES.get(name, name))
    if name is None:
        raise UsageError(f"unknown dtype {text!r} (e.g. float32, bfloat16, float16)")
    return name


def parse_expect_dtype(value: str | Mapping[str, str] | None) -> dict[str, str]:
    """`bfloat16` (every floating module tensor) or `parameter=bfloat16,buffer=float32` -> map."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        items = [(str(k), str(v)) for k, v in value.items()]
    elif "=" in value:
        items = [tuple(p.split("=", 1)) for p in value.split(",") if p.strip()]
    else:
        d = parse_dtype(value)
        return {"parameter": d, "buffer": d, "unknown": d}
    out = {}
    for role, d in items:
        role = role.strip()
        if role not in _ROLES:
            raise UsageError(f"--expect-dtype: unknown role {role!r} (use {', '.join(_ROLES)})")
        out[role] = parse_dtype(d)
    if "unknown" not in out and "parameter" in out and out.get("buffer", out["parameter"]) \
            == out["parameter"]:
        out["unknown"] = out["parameter"]
    return out


_DEVICE = re.compile(r"^(cpu|meta|[a-z]+(:\d+)?)$")


def parse_device(text: str) -> str:
    """`cpu`, `cuda` (any index) or `cuda:N`."""
    dev = text.strip().lower()
    if not _DEVICE.match(dev):
        raise UsageError(f"bad device {text!r} (e.g. cpu, cuda, cuda:0)")
    return dev


def parse_ignore(ids: Iterable[str]) -> frozenset[str]:
    out = set()
    for i in ids:
        for part in str(i).split(","):
            part = part.strip()
            if part and part not in FINDINGS:
                raise UsageError(f"--ignore: unknown finding id {part!r} "
                                 f"(known: {', '.join(FINDINGS)})")
            if part:
                out.add(part)
    return frozenset(out)


CONFIG_KEYS = ("expect-dtype", "expect-device", "device", "strict", "ignore")


def find_pyproject(start: str | None = None) -> str | None:
    """The nearest pyproject.toml at or above `start` (default: the current directory)."""
    here = os.path.abspath(start or os.getcwd())
    while True:
        cand = os.path.join(here, "pyproject.toml")
        if os.path.isfile(cand):
            return cand
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent


def load_config(path: str | None = None) -> tuple[dict[str, Any], str | None, str | None]:
    """Read `[tool.bufinspect.check]` from the nearest pyproject.toml.

    Returns (settings, the file it came from, a note when the file could not be read). Settings
    use the flag names: `expect-dtype` (string or table role -> dtype), `expect-device`,
    `device`, `strict`, `ignore` (list of ids).
    """
    path = path or find_pyproject()
    if path is None:
        return {}, None, None
    try:
        import tomllib
    except ModuleNotFoundError:  # python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            return {}, path, "pyproject.toml not read (python 3.10 needs the `tomli` package)"
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read [tool.bufinspect]: {exc}", path) from None
    section = doc.get("tool", {}).get("bufinspect", {}).get("check", {})
    if not isinstance(section, dict):
        raise UsageError("[tool.bufinspect.check] must be a table", path)
    unknown = sorted(set(section) - set(CONFIG_KEYS))
    if unknown:
        raise UsageError(f"[tool.bufinspect.check]: unknown setting(s) {', '.join(unknown)} "
                         f"(known: {', '.join(CONFIG_KEYS)})", path)
    if "ignore" in section and not isinstance(section["ignore"], list):
        raise UsageError("[tool.bufinspect.check] ignore must be a list of finding ids", path)
    if "strict" in section and not isinstance(section["strict"], bool):
        raise UsageError("[tool.bufinspect.check] strict must be true or false", path)
    return section, path, None


def make_policy(*, expect_dtype: str | None = None, expect_device: str | None = None,
                ignore: Sequence[str] = (), strict: bool | None = None,
                config: Mapping[str, Any] | None = None) -> Policy:
    """Merge flags over pyproject settings (a flag given on the command line wins)."""
    config = config or {}
    dt = expect_dtype if expect_dtype is not None else config.get("expect-dtype")
    dev = expect_device if expect_device is not None else config.get("expect-device")
    ign = list(ignore) if ignore else list(config.get("ignore", ()))
    st = strict if strict is not None else bool(config.get("strict", False))
    return Policy(expect_dtype=parse_expect_dtype(dt),
                  expect_device=parse_device(dev) if dev is not None else None,
                  ignore=parse_ignore(ign), strict=st)


# ---- messages -------------------------------------------------------------------------------

def name_keys(keys: Sequence[str], limit: int = 3) -> str:
    """`a, b and c` or `a, b, c and 41 more`."""
    keys = list(keys)
    if len(keys) <= limit:
        return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + " and " + keys[-1]
    return ", ".join(keys[:limit]) + f" and {len(keys) - limit} more"


def _qual(e: Entry) -> str:
    """The key as a user finds it: `model/bn1.running_var` for a nested container."""
    return f"{e.container}/{e.key}" if e.container else e.key


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# ---- GPU detection and the numeric scan -----------------------------------------------------

def _gpu_may_exist() -> bool:
    """Cheap test before importing torch (seconds): no NVIDIA/AMD device node means no GPU."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd",
                                            "/proc/driver/nvidia/gpus"))


def cuda_available() -> bool:
    """True when torch can use a CUDA GPU here; torch is imported only if a GPU may exist."""
    if not _gpu_may_exist():
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_device(device: str) -> str:
    """`auto` -> `cuda:0` when a GPU is usable, else `cpu`; `cuda` without one is a usage error."""
    if device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda (got {device!r})")
    if device == "cpu":
        return "cpu"
    if cuda_available():
        return "cuda:0"
    if device == "cuda":
        raise UsageError("--device cuda: no CUDA GPU is available here (torch.cuda.is_available() "
                         "is False); use --device cpu or auto")
    return "cpu"


def scannable(e: Entry) -> bool:
    """True for the entries the numeric scan reads (floating and complex tensors with data)."""
    d = dtypes.DTYPES.get(e.dtype)
    return (d is not None and d.kind in ("float", "complex") and d.numpy is not None
            and e.data is not None and e.numel > 0)


class _Acc:
    __slots__ = ("nan", "inf", "neg", "min", "max")

    def __init__(self) -> None:
        self.nan = self.inf = self.neg = 0
        self.min = math.inf
        self.max = -math.inf

    def merge(self, nan: int, inf: int, neg: int, lo: float, hi: float) -> None:
        self.nan += nan
        self.inf += inf
        self.neg += neg
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)

    def result(self) -> ScanStats:
        have = self.min <= self.max
        return ScanStats(self.nan, self.inf, self.neg, self.min if have else None,
                         self.max if have else None)


def scan_cpu(entries: Sequence[Entry], progress: Callable[[int], None] | None = None,
             jobs: int = 1) -> dict[int, ScanStats]:
    """NaN/Inf/negative counts and finite min/max per entry (by id), numpy over streamed chunks.

    With `jobs` > 1 the entries are split into balanced runs in file order, one worker each
    (`bufinspect.parallel`); every worker owns its buffers, so memory stays bounded per worker.
    """
    from bufinspect import parallel
    from bufinspect.formats import stream

    def run(group: list[Entry]) -> list[tuple[int, ScanStats]]:
        acc: dict[int, _Acc] = {}
        # read in line, 2 MiB at a time: the reductions find the bytes still in cache
        for e, _, arr in stream.pieces(group, 2 << 20, prefetch=False):
            _numpy_piece(acc.setdefault(id(e), _Acc()), e, arr)
            if progress is not None:
                progress(arr.nbytes)
        # positions in the group, not ids: ids do not survive a process pool
        return [(i, acc[id(e)].result()) for i, e in enumerate(group) if id(e) in acc]

    groups = parallel.partition(list(entries), max(1, jobs)) if jobs > 1 else [list(entries)]
    groups = [g for g in groups if g]
    results = parallel.map_groups(groups, run, jobs, threads=True)  # numpy frees the GIL
    return {id(g[i]): st for g, res in zip(groups, results) for i, st in res}


def _numpy_piece(a: _Acc, e: Entry, arr: Any) -> None:
    """Fold one streamed piece into `a` with numpy."""
    import numpy as np

    from bufinspect import kernels
    from bufinspect.numeric import as_float, bf16_range, split_nonfinite

    part = kernels.stats_partial(arr, e.dtype, moments=False)  # fused, if built
    if part is not None:
        neg = part.neg if part.min < 0 and _counts_negatives(e) else 0
        a.merge(part.nan, part.inf, neg, part.min, part.max)
        return
    if e.dtype == "bfloat16":  # the common all-finite case: integer reductions, no widening
        r = bf16_range(arr)
        if r is not None:
            lo, hi = r
            neg = (int(np.count_nonzero(arr > 0x8000))  # below -0.0
                   if lo < 0 and _counts_negatives(e) else 0)
            a.merge(0, 0, neg, lo, hi)
            return
    if dtypes.DTYPES[e.dtype].kind == "complex":
        a.merge(int(np.count_nonzero(np.isnan(arr))), int(np.count_nonzero(np.isinf(arr))),
                0, math.inf, -math.inf)
        return
    x, nan, inf, lo, hi = split_nonfinite(as_float(arr, e.dtype))
    neg = int(np.count_nonzero(x < 0)) if lo < 0 and _counts_negatives(e) else 0
    a.merge(nan, inf, neg, lo, hi)


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


# pieces smaller than this are reduced on the host: a dozen kernel launches cost more than the
# work, and the bytes are already in host memory (results are exact either way)
GPU_MIN_BYTES = 64 << 10


def scan_gpu(entries: Sequence[Entry], device: str = "cuda:0",
             progress: Callable[[int], None] | None = None,
             min_bytes: int | None = None) -> dict[int, ScanStats]:
    """The same scan with torch on `device`: each streamed chunk is copied into one of two pinned
    host buffers, sent with a non-blocking copy and reduced there; results come back once at the
    end. Pieces under `min_bytes` (default `GPU_MIN_BYTES`) are reduced with numpy instead.
    (`device="cpu"` runs the same kernels without pinning: tests use it to compare paths.)
    """
    import torch

    from bufinspect.formats import stream

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    pinned = ([torch.empty(stream.CHUNK_BYTES, dtype=torch.uint8).pin_memory() for _ in range(2)]
              if cuda else [])
    small = GPU_MIN_BYTES if min_bytes is None else min_bytes
    acc: dict[int, _Acc] = {}
    done: list[Any] = [None, None]
    partial: list[tuple[int, Any]] = []  # (entry id, [nan, inf, neg, min, max] on the device)
    slot = 0
    with torch.no_grad():
        for e, _, arr in stream.pieces(entries):
            if arr.nbytes < small:
                _numpy_piece(acc.setdefault(id(e), _Acc()), e, arr)
                if progress is not None:
                    progress(arr.nbytes)
                continue
            raw = torch.from_numpy(arr.view("u1"))
            if not cuda:
                x = raw  # reduced at once, before the buffer is reused
            elif raw.numel() > stream.CHUNK_BYTES:  # a strided tensor's own copy: send as is
                x = raw.to(dev)
            else:
                if done[slot] is not None:
                    done[slot].synchronize()  # the last copy out of this buffer has finished
                host = pinned[slot][: raw.numel()]
                host.copy_(raw)
                x = host.to(dev, non_blocking=True)
                done[slot] = torch.cuda.Event()
                done[slot].record()
                slot = 1 - slot
            partial.append((id(e), _torch_row(x.view(_torch_dtype(e.dtype)),
                                              _counts_negatives(e))))
            if progress is not None:
                progress(arr.nbytes)
    if partial:
        table = torch.stack([r for _, r in partial]).cpu().tolist()
        for (eid, _), (nan, inf, neg, lo, hi) in zip(partial, table, strict=True):
            acc.setdefault(eid, _Acc()).merge(int(nan), int(inf), int(neg), lo, hi)
    return {k: v.result() for k, v in acc.items()}


def scan(entries: Sequence[Entry], device: str = "cpu",
         progress: Callable[[int], None] | None = None, jobs: int = 1) -> dict[int, ScanStats]:
    """The numeric pass of `check` on `device` (`scan_gpu` on cuda, else `scan_cpu`), by id."""
    if not entries:
        return {}
    if device.startswith("cuda"):
        return scan_gpu(entries, device, progress)
    return scan_cpu(entries, progress, jobs)


def _counts_negatives(e: Entry) -> bool:
    return e.name == "running_var"


def _torch_row(x, negatives: bool):
    """[nan, inf, negative, finite min, finite max] of one chunk, as a float64 tensor."""
    import torch

    inf = torch.tensor(math.inf, dtype=torch.float64, device=x.device)
    if x.is_complex():
        return torch.stack([torch.isnan(x).sum().double(), torch.isinf(x).sum().double(),
                            torch.zeros_like(inf), inf, -inf])
    from bufinspect import kernels

    row = kernels.torch_stats_row(x, moments=False)  # the CPU kernel's twin
    neg = row[8] if negatives else torch.zeros_like(row[8])
    return torch.stack([row[5], row[6], neg, row[3], row[4]])


def cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count()


# ---- the checks -----------------------------------------------------------------------------

def _cuda_index(device: str | None) -> int | None:
    if device and device.startswith("cuda"):
        _, _, idx = device.partition(":")
        return int(idx) if idx.isdigit() else 0
    return None


def _by_value(entries: Iterable[Entry], attr: Callable[[Entry], Any]) -> dict[Any, list[Entry]]:
    out: dict[Any, list[Entry]] = defaultdict(list)
    for e in entries:
        out[attr(e)].append(e)
    return out


def _split_summary(groups: dict[Any, list[Entry]]) -> str:
    return "; ".join(f"{k} ({len(v)}: {name_keys([_qual(e) for e in v], 2)})"
                     for k, v in sorted(groups.items(), key=lambda kv: -len(kv[1])))


def _minority(groups: dict[Any, list[Entry]]) -> list[Entry]:
    major = max(groups, key=lambda k: len(groups[k]))
    return [e for k, v in groups.items() if k != major for e in v]


def _are(n: int, one: str, many: str) -> str:
    return one if n == 1 else many


class _Findings:
    """Collects one checkpoint's findings; each `add` names the keys and says what to do."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.items: list[Finding] = []

    def add(self, fid: str, entries_or_keys: Iterable[Entry | str], message: str,
            severity: str | None = None) -> None:
        keys = tuple(_qual(k) if isinstance(k, Entry) else k for k in entries_or_keys)
        self.items.append(Finding(fid, severity or FINDINGS[fid][0], self.path, keys, message))


def _keys(entries: Sequence[Entry], limit: int = 3) -> str:
    return name_keys([_qual(e) for e in entries], limit)


def _device_checks(out: _Findings, entries: list[Entry], module_entries: list[Entry],
                   gpus: int | None) -> None:
    meta = [e for e in entries if e.device == "meta"]
    if meta:
        out.add("meta-tensor", meta,
                f"{_keys(meta)} {_are(len(meta), 'was', 'were')} saved from the meta device and "
                f"hold no values: save after materializing the module (e.g. "
                f"module.to_empty(device='cpu') and loading real weights)")
    for cpath, own in _by_value(module_entries, lambda e: e.container).items():
        devs = _by_value([e for e in own if e.device and e.device != "meta"], lambda e: e.device)
        if len(devs) > 1:
            where = f" in {cpath!r}" if cpath else ""
            out.add("mixed-devices", _minority(devs),
                    f"module tensors{where} were saved from {len(devs)} devices: "
                    f"{_split_summary(devs)}; torch.load(..., map_location='cpu') puts them on "
                    f"one device")
    on_gpu = _by_value([e for e in entries if e.device not in (None, "cpu", "meta")],
                       lambda e: e.device)
    if on_gpu:
        hit = [e for v in on_gpu.values() for e in v]
        out.add("gpu-saved", hit,
                f"{_plural(len(hit), 'tensor')} saved from {', '.join(sorted(on_gpu))} "
                f"({_keys(hit)}): a CPU-only machine needs torch.load(path, map_location='cpu')")
    if gpus is None:
        return
    missing = {d: v for d, v in on_gpu.items()
               if (i := _cuda_index(d)) is not None and i >= gpus}
    if missing:
        hit = [e for v in missing.values() for e in v]
        remap = ", ".join(f"'{d}': 'cuda:0'" for d in sorted(missing))
        have = "cuda:0" if gpus == 1 else f"cuda:0..cuda:{gpus - 1}"
        out.add("missing-device", hit,
                f"{_keys(hit)} {_are(len(hit), 'was', 'were')} saved from "
                f"{', '.join(sorted(missing))} but this machine has {_plural(gpus, 'GPU')} "
                f"({have}): load with map_location={{{remap}}} or map_location='cpu'")


def _dtype_checks(out: _Findings, module_entries: list[Entry]) -> None:
    for own in _by_value(module_entries, lambda e: e.container).values():
        own = [e for e in own if dtypes.is_floating(e.dtype)]
        groups = _by_value([e for e in own if e.role in (Role.PARAMETER, Role.UNKNOWN)],
                           lambda e: e.dtype)
        if len(groups) > 1:
            odd = _minority(groups)
            note = (" (including tensors whose role is undecided)"
                    if any(e.role is Role.UNKNOWN for e in odd) else "")
            out.add("mixed-param-dtypes", odd,
                    f"floating-point parameters have {len(groups)} dtypes{note}: "
                    f"{_split_summary(groups)}")
        odd, detail = [], []
        for es in _by_value(own, lambda e: e.module).values():
            pdt = {e.dtype for e in es if e.role is Role.PARAMETER}
            if len(pdt) != 1:
                continue
            (want,) = pdt
            bad = [e for e in es if e.role is Role.BUFFER and e.dtype != want]
            if bad:
                odd += bad
                bad_dt = "/".join(sorted({e.dtype for e in bad}))
                detail.append(f"{_keys(bad, 2)} {bad_dt} vs parameters {want}")
        if odd:
            more = f" and {len(detail) - 3} more modules" if len(detail) > 3 else ""
            out.add("buffer-dtype-mismatch", odd,
                    f"floating buffers differ in dtype from their module's parameters: "
                    f"{'; '.join(detail[:3])}{more}; cast them to the parameters' dtype before "
                    f"saving")


def _norm_checks(out: _Findings, ck: Checkpoint, module_entries: list[Entry]) -> None:
    low = [e for e in module_entries if e.name in ("running_mean", "running_var")
           and (e.dtype in _LOW_PRECISION or e.dtype.startswith("float8"))]
    if low:
        out.add("low-precision-stats", low,
                f"{_keys(low)} {_are(len(low), 'is', 'are')} stored in "
                f"{'/'.join(sorted({e.dtype for e in low}))}: running statistics lose precision "
                f"(and a float16 running_var can overflow); keep normalization buffers in float32")
    nbt = [e for e in module_entries if e.name == "num_batches_tracked" and e.dtype != "int64"]
    if nbt:
        out.add("num-batches-tracked-dtype", nbt,
                f"{_keys(nbt)} {_are(len(nbt), 'is', 'are')} "
                f"{'/'.join(sorted({e.dtype for e in nbt}))}; torch keeps num_batches_tracked as "
                f"int64 (load_state_dict copies it into an int64 buffer)")
    versioned: list[str] = []  # `_metadata` says version 2: strict loading reports the key missing
    old: list[str] = []  # version 1 or no `_metadata`: torch fills in 0 when loading
    for cpath, own in _by_value(module_entries, lambda e: e.container).items():
        versions = ck.container(cpath).module_versions or {}
        for module, es in _by_value(own, lambda e: e.module).items():
            names = {e.name for e in es}
            if {"running_mean", "running_var"} <= names and "num_batches_tracked" not in names:
                key = f"{module}.num_batches_tracked" if module else "num_batches_tracked"
                key = f"{cpath}/{key}" if cpath else key
                (versioned if (versions.get(module) or 0) >= 2 else old).append(key)
    if versioned:
        out.add("missing-num-batches-tracked", versioned,
                f"{name_keys(versioned)} missing although `_metadata` marks the module as "
                f"version 2 (the format that has it): load_state_dict(strict=True) will report "
                f"{_are(len(versioned), 'it', 'them')} missing; re-save from the module or add "
                f"torch.tensor(0) entries")
    if old:
        out.add("missing-num-batches-tracked", old,
                f"{name_keys(old)} absent: an old (pre-version-2 or `_metadata`-less) "
                f"normalization state; load_state_dict fills in 0", severity="info")


def _storage_checks(out: _Findings, entries: list[Entry]) -> None:
    groups = [v for v in _by_value([e for e in entries if e.data is not None],
                                   lambda e: e.data.storage_id).values() if len(v) > 1]
    if groups:
        more = f" and {len(groups) - 3} more groups" if len(groups) > 3 else ""
        out.add("shared-storage", [e for g in groups for e in g],
                f"{_plural(len(groups), 'storage')} shared by several keys (tied or view "
                f"tensors): {'; '.join(_keys(g) for g in groups[:3])}{more}")
    # entries with persistent=False come from pickled modules, or (roles issue) a --model factory
    npb = [e for e in entries if e.role is Role.BUFFER and e.persistent is False]
    if npb:
        it = _are(len(npb), "it", "them")
        out.add("non-persistent-buffer", npb,
                f"{_keys(npb)} {_are(len(npb), 'is a', 'are')} non-persistent "
                f"{_are(len(npb), 'buffer', 'buffers')}: "
                f"module.state_dict() will not hold {it}, so a consumer of the state dict must "
                f"recompute {it}")


def _policy_checks(out: _Findings, entries: list[Entry], policy: Policy) -> None:
    if policy.expect_dtype:
        expect = policy.expect_dtype
        either = {expect.get("parameter"), expect.get("buffer")} - {None}
        bad = []
        for e in entries:
            if not dtypes.is_floating(e.dtype):
                continue  # integer and bool buffers cannot take a floating dtype
            want = expect.get(e.role.value)
            if want is not None:
                bad += [e] if e.dtype != want else []
            elif e.role is Role.UNKNOWN and either and e.dtype not in either:
                bad.append(e)  # undecided: wrong only if neither a parameter nor a buffer fits
        if bad:
            want = ", ".join(f"{r}={d}" for r, d in expect.items())
            out.add("expected-dtype", bad,
                    f"{_keys(bad)} ({'/'.join(sorted({e.dtype for e in bad}))}) break the "
                    f"expected dtype ({want})")
    if policy.expect_device:
        want = policy.expect_device
        bad = [e for e in entries if e.device is not None and e.device != want
               and not (":" not in want and e.device.partition(":")[0] == want)]
        if bad:
            hint = ("; re-save after model.to('cpu') or load with map_location='cpu'"
                    if want == "cpu" else "")
            out.add("expected-device", bad,
                    f"{_keys(bad)} saved from {', '.join(sorted({e.device for e in bad}))}, "
                    f"expected {want}{hint}")


def _metadata_checks(ck: Checkpoint, entries: list[Entry], gpus: int | None,
                     policy: Policy) -> list[Finding]:
    """Every finding that needs no tensor data, for one checkpoint's selected entries."""
    out = _Findings(ck.path)
    kinds = {c.path: c.kind for c in ck.containers}
    module_entries = [e for e in entries if kinds.get(e.container) in _MODULE_KINDS]
    _device_checks(out, entries, module_entries, gpus)
    _dtype_checks(out, module_entries)
    _norm_checks(out, ck, module_entries)
    _storage_checks(out, entries)
    _policy_checks(out, entries, policy)
    return out.items


def _numeric_findings(path: str, entries: list[Entry], stats: dict[int, ScanStats]
                      ) -> list[Finding]:
    out = []
    for fid, attr, word in (("nan", "nan", "NaN"), ("inf", "inf", "infinite value")):
        hit = [(e, getattr(stats[id(e)], attr)) for e in entries
               if id(e) in stats and getattr(stats[id(e)], attr)]
        if hit:
            total = sum(n for _, n in hit)
            if len(hit) == 1:
                msg = f"{_qual(hit[0][0])} holds {_plural(total, word)}"
            else:
                parts = [f"{_qual(e)} ({n})" for e, n in hit]
                msg = f"{_plural(total, word)} in {len(hit)} tensors: {name_keys(parts)}"
            out.append(Finding(fid, "error", path, tuple(_qual(e) for e, _ in hit), msg))
    neg = [(e, stats[id(e)]) for e in entries if e.name == "running_var" and id(e) in stats
           and stats[id(e)].negative]
    if neg:
        parts = [f"{_qual(e)} ({s.negative} of {e.numel}, min {s.min:.4g})" for e, s in neg]
        out.append(Finding("negative-variance", "error", path, tuple(_qual(e) for e, _ in neg),
                           f"negative running variance: {name_keys(parts)}; the statistics are "
                           f"corrupt (re-estimate them, e.g. a pass in train mode)"))
    return out


def check(paths: Sequence[str], *, policy: Policy | None = None, device: str = "auto",
          containers: Sequence[str] = (), progress: Callable[[int], None] | None = None,
          loaded: Sequence[Checkpoint] | None = None, jobs: int = 1,
          scanner: Callable[..., dict[int, ScanStats]] | None = None) -> CheckReport:
    """Check one or more checkpoints and return one report.

    Args:
        paths: checkpoint files (each is loaded with `bufinspect.load`: nothing in it runs).
        policy: expected dtypes/device, ignored ids and strictness (`make_policy` builds one).
        device: where the numeric scan runs: `auto` (the GPU when torch sees one, else the
            CPU), `cpu`, or `cuda` (a `UsageError` when no GPU is usable).
        containers: only these state dicts inside each checkpoint (default: all).
        progress: called with a byte count after each streamed chunk.
        loaded: already-loaded checkpoints for `paths` (skips loading them again).
        jobs: CPU workers for the numeric scan (the GPU path streams on one).
        scanner: runs the numeric scan instead of `scan`, with the same arguments and result
            (`bufinspect.distributed` shares it across ranks).

    Returns:
        A `CheckReport`; `report.ok` is the CI verdict, `report.to_dict()` the JSON document.

    Raises:
        InputError: a file is missing, corrupt or unsafe. UsageError: a bad policy or device.
    """
    from bufinspect import listing, load

    policy = policy or Policy()
    where = resolve_device(device)
    # saved cuda indices are verified whenever a GPU is present, whatever runs the numeric scan
    gpus = cuda_device_count() if where.startswith("cuda") or cuda_available() else None
    findings: list[Finding] = []
    stats: dict[tuple[str, str, str], ScanStats] = {}
    cks = list(loaded) if loaded is not None else [load(p) for p in paths]
    selected = [listing.select(ck, containers=containers) for ck in cks]
    todo = [e for entries in selected for e in entries if scannable(e)]
    measured = (scanner or scan)(todo, where, progress, jobs)
    for ck, entries in zip(cks, selected, strict=True):
        findings += _metadata_checks(ck, entries, gpus, policy)
        findings += _numeric_findings(ck.path, entries, measured)
        for e in entries:
            if id(e) in measured:
                stats[(ck.path, e.container, e.key)] = measured[id(e)]
    order = {s: i for i, s in enumerate(SEVERITIES)}
    path_order = {ck.path: i for i, ck in enumerate(cks)}
    kept = [f for f in findings if f.id not in policy.ignore]
    kept.sort(key=lambda f: (order[f.severity], path_order.get(f.path, 0)))
    return CheckReport(tuple(ck.path for ck in cks), where, tuple(kept), policy.strict, stats)
