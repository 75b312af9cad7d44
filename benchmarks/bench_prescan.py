"""The pickle pre-scan (bufinspect/formats/_prescan.py): the Python walk against the compiled
one (formats/_prescan_native.c), per opcode and per tensor, what each adds to a load, and how
fast each refuses the round-2 bombs. Prints medians of CPU time (process time: steadier than
wall time on a shared machine); run it on a quiet machine.

    python benchmarks/bench_prescan.py [TENSORS ...]      (default: 10000 100000)

The .pt files are `benchmarks/_many.py`'s (MoE-style names, 4x4 tensors), as in #16's figures.
"""

from __future__ import annotations

import os
import pickletools
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.dirname(__file__))


def median_time(fn, runs: int = 5) -> float:
    """Median CPU time of `fn`."""
    times = []
    for _ in range(runs):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return statistics.median(times)


def c_scan():
    from bufinspect.formats import _prescan

    mod = _prescan.native()
    if mod is None:
        sys.exit("the compiled pre-scan is not built (or BUFINSPECT_NO_KERNEL is set)")

    def scan(data: bytes) -> int:
        end = mod.scan(data, 0)
        if type(end) is str:
            raise _prescan.Refused(end)
        return end
    return scan


def with_walk(walk: str, fn):
    """Run `fn` with `_prescan.scan` on one walk: "python", "c" or "none" (no pre-scan)."""
    from bufinspect.formats import _prescan

    real_native, real_file = _prescan._native_mod, _prescan.scan_file
    if walk == "python":
        _prescan._native_mod = None
    elif walk == "none":
        _prescan.scan_file = lambda f: None  # the reader as it was before the pre-scan
    try:
        return fn()
    finally:
        _prescan._native_mod, _prescan.scan_file = real_native, real_file


def listing(n: int, folder: Path) -> None:
    import _many

    import bufinspect
    from bufinspect.formats import _prescan

    path = _many.make(folder / f"many_{n}", n, "pt")
    with zipfile.ZipFile(path) as z:
        raw = z.read(next(m for m in z.namelist() if m.endswith("data.pkl")))
    ops = sum(1 for _ in pickletools.genops(raw))
    print(f"{n} tensors: data.pkl {len(raw) / 1e6:.1f} MB, {ops} opcodes "
          f"(load average {os.getloadavg()[0]:.2f})")
    fast = c_scan()
    assert fast(raw) == _prescan.scan_python(raw) == len(raw)
    runs = 5 if n <= 20_000 else 3
    for name, fn in (("python", _prescan.scan_python), ("c", fast)):
        t = median_time(lambda: fn(raw), runs)
        print(f"  pre-scan, {name:6} walk {t * 1e3:8.1f} ms  ({t / ops * 1e9:6.1f} ns/opcode, "
              f"{t / n * 1e6:5.2f} us/tensor)")
    loads = {walk: with_walk(walk, lambda: median_time(lambda: bufinspect.load(path), runs))
             for walk in ("python", "c", "none")}
    print("  bufinspect.load of the .pt: " + ", ".join(
        f"{t * 1e3:.0f} ms {'with the ' + w + ' walk' if w != 'none' else 'without a pre-scan'}"
        for w, t in loads.items()))
    path.unlink()


def bombs() -> None:
    from hostile import make_corpus as P

    from bufinspect.formats import _prescan

    cases = {
        "1 MB of colliding keys (80,000)": P.PROTO2 + P.EMPTY_DICT + P.MARK + b"".join(
            P._colliding_int(k) + P.NONE for k in range(1, 80_000)) + P.SETITEMS + P.STOP,
        "tuple nested 300,000 deep as a key": P.PROTO2 + P.EMPTY_DICT + P._deep_tuple(300_000)
        + P.NONE + P.SETITEM + P.STOP,
        "40-level shared tuple tower as a key": P.PROTO2 + P.EMPTY_DICT + P._tuple_tower(40)
        + P.NONE + P.SETITEM + P.STOP,
        "22-level tower, five uses as keys": P.PROTO2 + P.EMPTY_DICT + P._tuple_tower(22)
        + P.POP + P.MARK + b"".join(P.get(22) + P.i(k) for k in range(5)) + P.SETITEMS + P.STOP,
    }
    fast = c_scan()
    for what, pkl in cases.items():
        times = []
        for fn in (_prescan.scan_python, fast):
            def refuse(pkl=pkl, fn=fn):
                try:
                    fn(pkl)
                except _prescan.Refused:
                    return
                raise AssertionError(f"{what}: not refused")
            times.append(median_time(refuse) * 1e3)
        print(f"  refuses {what:38} python {times[0]:7.2f} ms, c {times[1]:6.3f} ms "
              f"({len(pkl)} bytes)")


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [10_000, 100_000]
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            listing(n, Path(tmp))
    bombs()


if __name__ == "__main__":
    main()
