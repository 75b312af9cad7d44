"""The findings of `check`: one function per family of problems, each naming the keys it
concerns and saying what to do. Metadata findings read only the listing; numeric findings read
what the scan layer measured (`scan.check_scan`).

To add a finding: an id in `FINDINGS` (severity and the line --help prints), the rule that emits
it below, and its row in the README's findings table (the JSON schema keeps ids open).
"""

from __future__ import annotations

from collections import defaultdict
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from bufinspect import dtypes
from bufinspect.model import Checkpoint, ContainerKind, Entry, Finding, Role, ScanStats, Severity

if TYPE_CHECKING:
    from bufinspect.analysis.policy import Policy

_ERROR, _WARNING, _INFO = Severity.ERROR, Severity.WARNING, Severity.INFO

# id -> (severity, one line for --help and the README)
FINDINGS: dict[str, tuple[Severity, str]] = {
    "mixed-devices": (_ERROR, "module tensors were saved from more than one device"),
    "gpu-saved": (_WARNING, "tensors saved from a GPU (a CPU-only load needs map_location)"),
    "missing-device": (_ERROR, "a saved cuda index does not exist on this machine's GPUs"),
    "mixed-param-dtypes": (_WARNING, "floating-point parameters have more than one dtype"),
    "buffer-dtype-mismatch": (_WARNING, "a module's floating buffers differ from its "
                                        "parameters' dtype"),
    "nan": (_ERROR, "NaN values"),
    "inf": (_ERROR, "infinite values"),
    "negative-variance": (_ERROR, "a normalization running_var holds negative values"),
    "expected-dtype": (_ERROR, "entries that break --expect-dtype"),
    "expected-device": (_ERROR, "entries that break --expect-device"),
    "low-precision-stats": (_WARNING, "running_mean/running_var in float16, bfloat16 or float8"),
    "num-batches-tracked-dtype": (_WARNING, "num_batches_tracked is not int64"),
    "meta-tensor": (_ERROR, "tensors saved from the meta device hold no values"),
    "missing-num-batches-tracked": (_WARNING, "running stats without num_batches_tracked "
                                              "(info: old format)"),
    "shared-storage": (_INFO, "keys that share one storage (tied weights)"),
    "non-persistent-buffer": (_INFO, "buffers that a state dict of the module will not hold"),
    "pickle-calls": (_WARNING, "the pickle calls globals when loaded by torch.load (listed; "
                               "none is run here)"),
    # buffer diagnostics (analysis.diagnostics)
    "stats-at-init": (_WARNING, "running statistics still at init while the affine "
                                "parameters trained"),
    "stats-never-tracked": (_INFO, "num_batches_tracked 0 on every norm layer while the "
                                   "parameters trained"),
    "ema-buffers-stale": (_WARNING, "an EMA copy's running statistics at init, stale or missing"),
    "missing-key": (_ERROR, "with --model: keys the model expects are absent (strict loading "
                            "fails)"),
    "unexpected-key": (_WARNING, "with --model: keys the model does not have"),
    "shape-mismatch": (_ERROR, "with --model: tensors whose shape differs from the model's"),
    "key-prefix": (_WARNING, "with --model: a wrapper prefix (module., _orig_mod.) only one "
                             "side has"),
}

_LOW_PRECISION = {"float16", "bfloat16"}
MODULE_KINDS = (ContainerKind.STATE_DICT, ContainerKind.MODULE)


# ---- messages -------------------------------------------------------------------------------

def name_keys(keys: Sequence[str], limit: int = 3) -> str:
    """`a, b and c` or `a, b, c and 41 more`."""
    keys = list(keys)
    if len(keys) <= limit:
        return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + " and " + keys[-1]
    return ", ".join(keys[:limit]) + f" and {len(keys) - limit} more"


def module_entries(ck: Checkpoint, entries: Iterable[Entry]) -> list[Entry]:
    """The entries that are module state (a state dict or a pickled module), not optimizer
    state or loose tensors."""
    kinds = {c.path: c.kind for c in ck.containers}
    return [e for e in entries if kinds.get(e.container) in MODULE_KINDS]


def qualified(e: Entry) -> str:
    """The key as a user finds it: `model/bn1.running_var` for a nested container."""
    return f"{e.container}/{e.key}" if e.container else e.key


def plural(n: int, one: str, many: str | None = None) -> str:
    """`1 tensor`, `3 tensors` (`many` for irregular plurals)."""
    return f"{n} {one}" if n == 1 else f"{n} {many or one + 's'}"



# ---- the checks -----------------------------------------------------------------------------

def _cuda_index(device: str | None) -> int | None:
    if device and device.startswith("cuda"):
        _, _, idx = device.partition(":")
        return int(idx) if idx.isdigit() else 0
    return None


def _by_value(entries: Iterable[Entry], attr: Callable[[Entry], Any]) -> dict[Any, list[Entry]]:
    out: dict[Any, list[Entry]] = defaultdict(list)
    entries = entries if isinstance(entries, (list, tuple)) else list(entries)
    for e, value in zip(entries, map(attr, entries)):
        out[value].append(e)
    return out


# (C getters: `_by_value` runs over every entry, 100,000 in a mixture-of-experts checkpoint)
_CONTAINER, _MODULE = attrgetter("container"), attrgetter("module")
_DTYPE, _DEVICE, _STORAGE = attrgetter("dtype"), attrgetter("device"), attrgetter("data.storage_id")


def _split_summary(groups: dict[Any, list[Entry]]) -> str:
    return "; ".join(f"{k} ({len(v)}: {name_keys([qualified(e) for e in v], 2)})"
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
            severity: Severity | None = None) -> None:
        keys = tuple(qualified(k) if isinstance(k, Entry) else k for k in entries_or_keys)
        self.items.append(Finding(fid, severity or FINDINGS[fid][0], self.path, keys, message))


def _keys(entries: Sequence[Entry], limit: int = 3) -> str:
    return name_keys([qualified(e) for e in entries], limit)


def _device_checks(out: _Findings, entries: list[Entry], module_entries: list[Entry],
                   gpus: int | None) -> None:
    meta = [e for e in entries if e.device == "meta"]
    if meta:
        out.add("meta-tensor", meta,
                f"{_keys(meta)} {_are(len(meta), 'was', 'were')} saved from the meta device and "
                f"hold no values: save after materializing the module (e.g. "
                f"module.to_empty(device='cpu') and loading real weights)")
    for cpath, own in _by_value(module_entries, _CONTAINER).items():
        devs = _by_value([e for e in own if e.device and e.device != "meta"], _DEVICE)
        if len(devs) > 1:
            where = f" in {cpath!r}" if cpath else ""
            out.add("mixed-devices", _minority(devs),
                    f"module tensors{where} were saved from {len(devs)} devices: "
                    f"{_split_summary(devs)}; torch.load(..., map_location='cpu') puts them on "
                    f"one device")
    on_gpu = _by_value([e for e in entries if e.device not in (None, "cpu", "meta")], _DEVICE)
    if on_gpu:
        hit = [e for v in on_gpu.values() for e in v]
        out.add("gpu-saved", hit,
                f"{plural(len(hit), 'tensor')} saved from {', '.join(sorted(on_gpu))} "
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
                f"{', '.join(sorted(missing))} but this machine has {plural(gpus, 'GPU')} "
                f"({have}): load with map_location={{{remap}}} or map_location='cpu'")


def _dtype_checks(out: _Findings, module_entries: list[Entry]) -> None:
    for own in _by_value(module_entries, _CONTAINER).values():
        own = [e for e in own if dtypes.is_floating(e.dtype)]
        groups = _by_value([e for e in own if e.role in (Role.PARAMETER, Role.UNKNOWN)],
                           _DTYPE)
        if len(groups) > 1:
            odd = _minority(groups)
            note = (" (including tensors whose role is undecided)"
                    if any(e.role is Role.UNKNOWN for e in odd) else "")
            out.add("mixed-param-dtypes", odd,
                    f"floating-point parameters have {len(groups)} dtypes{note}: "
                    f"{_split_summary(groups)}")
        odd, detail = [], []
        # (only modules that hold a buffer can mismatch: 100,000 expert modules hold none)
        buffered = {e.module for e in own if e.role is Role.BUFFER}
        for es in _by_value([e for e in own if e.module in buffered], _MODULE).values():
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
    with_stats = {(e.container, e.module) for e in module_entries if e.name == "running_mean"}
    for cpath, own in _by_value([e for e in module_entries
                                 if (e.container, e.module) in with_stats], _CONTAINER).items():
        versions = ck.container(cpath).module_versions or {}
        for module, es in _by_value(own, _MODULE).items():
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
                f"normalization state; load_state_dict fills in 0", severity=_INFO)


def _storage_checks(out: _Findings, entries: list[Entry]) -> None:
    groups = [v for v in _by_value([e for e in entries if e.data is not None],
                                   _STORAGE).values() if len(v) > 1]
    if groups:
        more = f" and {len(groups) - 3} more groups" if len(groups) > 3 else ""
        out.add("shared-storage", [e for g in groups for e in g],
                f"{plural(len(groups), 'storage')} shared by several keys (tied or view "
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


def metadata_findings(ck: Checkpoint, entries: list[Entry], gpus: int | None,
                     policy: Policy) -> list[Finding]:
    """Every finding that needs no tensor data, for one checkpoint's selected entries."""
    out = _Findings(ck.path)
    module_state = module_entries(ck, entries)
    _device_checks(out, entries, module_state, gpus)
    _dtype_checks(out, module_state)
    _norm_checks(out, ck, module_state)
    _storage_checks(out, entries)
    _policy_checks(out, entries, policy)
    if ck.calls:
        _pickle_calls(out, ck)
    return out.items


def _pickle_calls(out: _Findings, ck: Checkpoint) -> None:
    shown = ", ".join(f"{name} x{count}" for name, count in ck.calls[:8])
    more = f" and {len(ck.calls) - 8} more" if len(ck.calls) > 8 else ""
    out.add("pickle-calls", [name for name, _ in ck.calls],
            f"torch.load(weights_only=False) would call {shown}{more} (none was run here); "
            f"load it that way only from a source you trust, or save a state dict instead")


def numeric_findings(path: str, entries: list[Entry], stats: dict[int, ScanStats]
                      ) -> list[Finding]:
    out = []
    for fid, attr, word in (("nan", "nan", "NaN"), ("inf", "inf", "infinite value")):
        hit = [(e, getattr(stats[id(e)], attr)) for e in entries
               if id(e) in stats and getattr(stats[id(e)], attr)]
        if hit:
            total = sum(n for _, n in hit)
            if len(hit) == 1:
                msg = f"{qualified(hit[0][0])} holds {plural(total, word)}"
            else:
                parts = [f"{qualified(e)} ({n})" for e, n in hit]
                msg = f"{plural(total, word)} in {len(hit)} tensors: {name_keys(parts)}"
            out.append(Finding(fid, _ERROR, path, tuple(qualified(e) for e, _ in hit), msg))
    neg = [(e, stats[id(e)]) for e in entries if e.name == "running_var" and id(e) in stats
           and stats[id(e)].negative]
    if neg:
        parts = [f"{qualified(e)} ({s.negative} of {e.numel}, min {s.min:.4g})" for e, s in neg]
        out.append(Finding("negative-variance", _ERROR, path, tuple(qualified(e) for e, _ in neg),
                           f"negative running variance: {name_keys(parts)}; the statistics are "
                           f"corrupt (re-estimate them, e.g. a pass in train mode)"))
    return out


