"""Print what role inference costs on listing: layer-table load, and `load()` on a big state dict.

    python scripts/bench_roles.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    import torch
    from torch import nn

    with tempfile.TemporaryDirectory() as tmp:
        blocks = [nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.LayerNorm(4),
                                nn.Linear(4, 4)) for _ in range(2500)]
        m = nn.Sequential(*blocks)
        opt = torch.optim.Adam(m.parameters())
        for p in m.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        path = Path(tmp) / "big.pt"
        torch.save({"model": m.state_dict(), "optimizer": opt.state_dict()}, path)
        n = len(m.state_dict())
        code = ("import sys,time; t=time.perf_counter(); import bufinspect; "
                "ck=bufinspect.load(sys.argv[1]); "
                "assert 'torch' not in sys.modules; print(time.perf_counter()-t)")
        for label, extra in (("load() with roles", ""),):
            runs = [float(subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT,
                                         capture_output=True, text=True, check=True).stdout)
                    for _ in range(5)]
            print(f"{label}: {n} state-dict tensors + {len(opt.state_dict()['state']) * 3} "
                  f"optimizer tensors: median {statistics.median(runs) * 1000:.0f} ms")
        from bufinspect import formats, roles

        ck = formats.read(str(path))
        t = time.perf_counter()
        roles.layer_table.cache_clear()
        roles.layer_table()
        print(f"layer table (JSON) load: {(time.perf_counter() - t) * 1000:.1f} ms")
        t = time.perf_counter()
        roles.assign(ck)
        print(f"roles.assign alone: {(time.perf_counter() - t) * 1000:.0f} ms")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import layer_table

    t = time.perf_counter()
    layer_table.introspect()
    print(f"introspecting torch at run time instead (torch already imported): "
          f"{time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    main()
