"""What the buffer diagnostics (bufinspect.diagnostics) add to `check` and `diff`.

    python benchmarks/bench_diagnostics.py [--repeat 5]

In one process, on checkpoints generated into a temporary folder:

- `check` of a ResNet-50-shaped state dict (53 BatchNorm layers, ~100 MB) and of an LLM-shaped
  one without running statistics (2,000 tensors), with and without the diagnostics;
- the diagnostics alone on the ResNet-50 file with an EMA copy beside the model;
- `diff` (default buffers scope) of a frozen-BatchNorm fine-tune, where the note must learn
  whether parameters changed (stops at the first differing chunk), and of two identical files
  (the worst case: every parameter byte compared), with and without the notes.

Prints medians of wall time. Figures depend on the machine and its load (see `uptime`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def resnet50_like() -> dict[str, torch.Tensor]:
    """Keys and shapes of a ResNet-50 (53 BatchNorm layers), trained-looking values."""
    g = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {}

    def conv(name, cin, cout, k):
        sd[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) * 0.05

    def bn(name, c):
        sd[f"{name}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.bias"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.running_mean"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.running_var"] = 1 + torch.rand(c, generator=g)
        sd[f"{name}.num_batches_tracked"] = torch.tensor(1000)

    conv("conv1", 3, 64, 7)
    bn("bn1", 64)
    cin = 64
    for li, (blocks, width) in enumerate(((3, 64), (4, 128), (6, 256), (3, 512)), start=1):
        for b in range(blocks):
            p = f"layer{li}.{b}"
            conv(f"{p}.conv1", cin, width, 1)
            bn(f"{p}.bn1", width)
            conv(f"{p}.conv2", width, width, 3)
            bn(f"{p}.bn2", width)
            conv(f"{p}.conv3", width, width * 4, 1)
            bn(f"{p}.bn3", width * 4)
            if b == 0:
                conv(f"{p}.downsample.0", cin, width * 4, 1)
                bn(f"{p}.downsample.1", width * 4)
            cin = width * 4
    sd["fc.weight"] = torch.randn(1000, 2048, generator=g) * 0.01
    sd["fc.bias"] = torch.zeros(1000)
    return sd


def llm_like(layers: int = 200) -> dict[str, torch.Tensor]:
    sd = {}
    for i in range(layers):
        for name in ("q", "k", "v", "o", "up", "down", "gate"):
            sd[f"model.layers.{i}.{name}.weight"] = torch.randn(64, 64)
        sd[f"model.layers.{i}.norm1.weight"] = torch.ones(64)
        sd[f"model.layers.{i}.norm2.weight"] = torch.ones(64)
        sd[f"model.layers.{i}.rotary.inv_freq"] = torch.rand(32)
    return sd


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    from bufinspect import load
    from bufinspect.analysis import check as checking
    from bufinspect.analysis import diagnostics
    from bufinspect.analysis.diff import diff
    from bufinspect.analysis.show import select

    print(f"load: {os.getloadavg()[0]:.2f} (1-min average)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sd = resnet50_like()
        torch.save(sd, tmp / "r50.pt")
        torch.save({"model": sd, "model_ema": {k: v.clone() for k, v in sd.items()}},
                   tmp / "r50_ema.pt")
        torch.save(llm_like(), tmp / "llm.pt")
        frozen = {k: (v + 1e-3 if k.endswith(".weight") and v.dim() > 1 else v)
                  for k, v in sd.items()}
        torch.save(frozen, tmp / "r50_frozen_ft.pt")
        torch.save(dict(sd), tmp / "r50_copy.pt")
        size = (tmp / "r50.pt").stat().st_size / 1e6
        print(f"ResNet-50-shaped file: {size:.0f} MB, {len(sd)} tensors")

        real = checking.diagnose
        for name in ("r50.pt", "llm.pt"):
            path = str(tmp / name)
            ck = load(path)
            with_ = median_time(lambda: checking.check([ck], device="cpu"),
                                args.repeat)
            checking.diagnose = lambda *a, **k: []
            try:
                without = median_time(lambda: checking.check([ck], device="cpu"),
                                      args.repeat)
            finally:
                checking.diagnose = real
            print(f"check {name:<18} with diagnostics {with_ * 1e3:8.1f} ms   without "
                  f"{without * 1e3:8.1f} ms   (+{(with_ - without) * 1e3:.1f} ms)")
        ck = load(str(tmp / "r50_ema.pt"))
        entries = select(ck)
        t = median_time(lambda: diagnostics.analyze(ck, entries), args.repeat)
        print(f"diagnostics alone, model + EMA (106 BatchNorm layers): {t * 1e3:.1f} ms")

        a = load(str(tmp / "r50.pt"))
        for other in ("r50_frozen_ft.pt", "r50_copy.pt"):
            b = load(str(tmp / other))
            on = median_time(lambda: diff(a, b), args.repeat)
            off = median_time(lambda: diff(a, b, notes=False), args.repeat)
            notes = [n.id for n in diff(a, b).notes]
            print(f"diff r50.pt {other:<18} notes {on * 1e3:7.1f} ms   without {off * 1e3:7.1f} "
                  f"ms   (+{(on - off) * 1e3:.1f} ms) {notes}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
