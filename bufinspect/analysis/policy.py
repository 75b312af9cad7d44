"""What a CI job expects of a checkpoint (`check`'s policy), parsed from flags and from
`[tool.bufinspect.check]` settings (read by `formats.config`): dtypes per role, a device, finding
ids to ignore, strictness. A bad value is a `UsageError` (exit 2)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from bufinspect import dtypes
from bufinspect.analysis.findings import FINDINGS
from bufinspect.errors import UsageError
from bufinspect.model import Role

_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "fp64": "float64",
                  "f16": "float16", "f32": "float32", "f64": "float64"}
_ROLES = tuple(r.value for r in Role)


@dataclass(frozen=True)
class Policy:
    """What a CI job expects: dtypes per role, a device, which ids to ignore, strictness."""

    expect_dtype: Mapping[str, str] = field(default_factory=dict)  # role -> dtype
    expect_device: str | None = None
    ignore: frozenset[str] = frozenset()
    strict: bool = False


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
