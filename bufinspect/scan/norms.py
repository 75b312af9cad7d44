"""The small reads behind the buffer diagnostics (`analysis.diagnostics`): the values of
normalization statistics, affine tensors and counters, and whether any parameter's bytes
differ between two checkpoints. Only the entries asked for are streamed (a few KiB per layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from bufinspect import dtypes
from bufinspect.formats import stream
from bufinspect.model import Entry

# the tensor names of a normalization layer that keeps running statistics
STATS = ("running_mean", "running_var")
COUNTER = "num_batches_tracked"
AFFINE = ("weight", "bias")


@dataclass(frozen=True)
class Values:
    """What one small read of a tensor found: finite min/max, any NaN/Inf, and a digest of its
    bytes (to tell whether two files hold the same statistics)."""

    lo: float
    hi: float
    nonfinite: bool
    digest: bytes

    def constant(self, value: float | None = None) -> bool:
        """Every element equal (to `value`, when given)."""
        if self.nonfinite or self.lo != self.hi:
            return False
        return value is None or self.lo == value


def read_values(entries: Iterable[Entry]) -> dict[int, Values]:
    """Values of small floating tensors, by `id(entry)`: one streamed pass in file order, the
    extremes from `check`'s own `numeric.RangeAccumulator`."""
    import hashlib  # (here: a diff of small files never reads values, nor imports it)

    from bufinspect.numeric import RangeAccumulator

    acc: dict[int, tuple[RangeAccumulator, Any]] = {}
    for e, _, arr in stream.pieces([e for e in entries if stream.readable(e)]):
        found, digest = acc.setdefault(id(e), (RangeAccumulator(),
                                               hashlib.blake2b(digest_size=16)))
        digest.update(arr.tobytes())
        found.add_raw(arr, e.dtype, negatives=False)
    return {k: Values(r.min, r.max, bool(r.nan or r.inf), h.digest())
            for k, (r, h) in acc.items()}


def read_counters(entries: Iterable[Entry]) -> dict[int, int]:
    """`num_batches_tracked` values by `id(entry)` (integer scalars; a float one is rounded)."""
    ints, floats = [], []
    for e in entries:
        kind = dtypes.DTYPES.get(e.dtype)
        if kind is None or e.numel != 1 or not stream.readable(e):
            continue
        (ints if kind.kind in ("int", "uint", "bool") else floats).append(e)
    out = {id(e): int(v) for e, v in zip(ints, stream.read_scalars(ints))}
    for e, v in read_values(floats).items():
        if not v.nonfinite:
            out[e] = int(v.lo)
    return out


def bytes_differ(pairs: Sequence[tuple[Entry, Entry]]) -> bool:
    """Whether any pair's bytes differ (same dtype and shape on both sides): memcmp per chunk in
    A's file order, no numpy, stopping at the first differing chunk."""
    pairs = [(a, b) for a, b in pairs if stream.readable(a) and stream.readable(b)]
    if not pairs:
        return False
    chunks = stream.paired_chunks(pairs, skip_equal=True)
    try:
        for chunk in chunks:
            if not chunk.equal:
                return True
    finally:
        chunks.close()
    return False
