"""The pickle pre-scan (bufinspect/formats/_prescan.py): what it adds to a load, and how fast it
refuses the round-2 bombs. Prints medians of several runs; run it on a quiet machine.

    python benchmarks/bench_prescan.py [TENSORS]
"""

from __future__ import annotations

import io
import os
import pickletools
import statistics
import sys
import time
import zipfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))


def median_time(fn, runs: int = 5) -> float:
    """Median CPU time of `fn` (process time: steadier than wall time on a shared machine)."""
    times = []
    for _ in range(runs):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return statistics.median(times)


def main() -> None:
    import torch

    from bufinspect.formats import _prescan, _unpickle

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    sd = {f"layer{i}.weight": torch.zeros(2) for i in range(n)}
    buf = io.BytesIO()
    torch.save(sd, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        raw = z.read(next(m for m in z.namelist() if m.endswith("data.pkl")))
    ops = sum(1 for _ in pickletools.genops(raw))
    print(f"state dict of {n} tensors: data.pkl {len(raw) / 1e6:.1f} MB, {ops} opcodes "
          f"(load average {os.getloadavg()[0]:.2f})")
    scan = median_time(lambda: _prescan.scan(raw))
    load = median_time(lambda: _unpickle.load(io.BytesIO(raw), _unpickle.storage_from_pid))
    print(f"  pre-scan alone        {scan * 1e3:8.1f} ms  ({scan / ops * 1e9:.0f} ns/opcode, "
          f"{scan / n * 1e6:.1f} us/tensor)")
    print(f"  load (scan+unpickle)  {load * 1e3:8.1f} ms  (the scan is {scan / load:.0%} of it)")
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"bench_prescan_{n}.pt")
    torch.save(sd, path)
    import bufinspect

    with_scan = median_time(lambda: bufinspect.load(path), 3)
    real = _prescan.scan_file
    _prescan.scan_file = lambda f: None  # the reader as it was before the pre-scan
    try:
        without = median_time(lambda: bufinspect.load(path), 3)
    finally:
        _prescan.scan_file = real
    os.unlink(path)
    print(f"  bufinspect.load of the .pt: {with_scan * 1e3:.0f} ms with the pre-scan, "
          f"{without * 1e3:.0f} ms without (+{(with_scan - without) / n * 1e6:.1f} us/tensor)")

    from hostile import make_corpus as P

    bombs = {
        "1 MB of colliding keys (80,000)": P.PROTO2 + P.EMPTY_DICT + P.MARK + b"".join(
            P._colliding_int(k) + P.NONE for k in range(1, 80_000)) + P.SETITEMS + P.STOP,
        "tuple nested 300,000 deep as a key": P.PROTO2 + P.EMPTY_DICT + P._deep_tuple(300_000)
        + P.NONE + P.SETITEM + P.STOP,
        "40-level shared tuple tower as a key": P.PROTO2 + P.EMPTY_DICT + P._tuple_tower(40)
        + P.NONE + P.SETITEM + P.STOP,
        "22-level tower, five uses as keys": P.PROTO2 + P.EMPTY_DICT + P._tuple_tower(22)
        + P.POP + P.MARK + b"".join(P.get(22) + P.i(k) for k in range(5)) + P.SETITEMS + P.STOP,
    }
    for what, pkl in bombs.items():
        def refuse(pkl=pkl):
            try:
                _prescan.scan(pkl)
            except _prescan.Refused:
                return
            raise AssertionError(f"{what}: not refused")
        print(f"  refuses {what:40} in {median_time(refuse) * 1e3:7.1f} ms ({len(pkl)} bytes)")


if __name__ == "__main__":
    main()
