"""Checkpoint pairs where every tensor changed a little: two checkpoints a training step apart.

`make_pair(dir, dtype, size_gb, fmt)` writes A (LLM-like: per layer four 4096-wide matrices, a
norm vector and a bias) and B = A + 1e-3 * randn on every float tensor, in `.pt` or
`.safetensors`, one checkpoint in memory at a time (B is A perturbed in place after A is
saved). Run it in a child process so the measuring process stays small.
"""

from __future__ import annotations

import sys
from pathlib import Path


def make_state(dtype: str, size_gb: float, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    dt = getattr(torch, dtype)
    sd, total, layer = {}, 0, 0
    while total < size_gb * 1e9:
        p = f"model.layers.{layer}"
        for name, rows in (("self_attn.q_proj", 4096), ("self_attn.o_proj", 4096),
                           ("mlp.up_proj", 8192), ("mlp.down_proj", 8192)):
            t = torch.randn(rows, 4096, generator=g, dtype=torch.float32) * 0.02
            sd[f"{p}.{name}.weight"] = t.to(dt)
            total += t.numel() * sd[f"{p}.{name}.weight"].element_size()
        sd[f"{p}.input_layernorm.weight"] = (1 + 0.01 * torch.randn(4096, generator=g)).to(dt)
        sd[f"{p}.mlp.up_proj.bias"] = (0.01 * torch.randn(8192, generator=g)).to(dt)
        layer += 1
    return sd


def perturb(sd, seed: int = 1) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    for k, t in sd.items():
        step = 1e-3 * torch.randn(t.shape, generator=g, dtype=torch.float32)
        sd[k] = (t.float() + step).to(t.dtype)


def save(sd, path: Path) -> None:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save(sd, path)


def make_pair(out: Path, dtype: str, size_gb: float, fmt: str) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    tag = f"{dtype}_{size_gb:g}gb"
    a, b = out / f"every_a_{tag}.{fmt}", out / f"every_b_{tag}.{fmt}"
    if not (a.exists() and b.exists()):
        sd = make_state(dtype, size_gb)
        save(sd, a)
        perturb(sd)
        save(sd, b)
    return a, b


if __name__ == "__main__":  # python _every.py OUT DTYPE SIZE_GB FMT
    print(*make_pair(Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]))


# ---- measuring (used by bench_diff.py --every and bench_scale.py --every) --------------------

NAIVE_DIFF = r"""
import sys, torch
from safetensors.torch import load_file

def load(p):
    return load_file(p) if p.endswith(".safetensors") else torch.load(p, weights_only=True)

a, b = load(sys.argv[1]), load(sys.argv[2])
changed = 0
for k in a.keys() | b.keys():
    if k not in a or k not in b or a[k].shape != b[k].shape or a[k].dtype != b[k].dtype:
        changed += 1
    elif not torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-8, equal_nan=True):
        changed += 1
print(changed, "changed")
"""

NAIVE_STATS = r"""
import sys, torch
from safetensors.torch import load_file
p = sys.argv[1]
sd = load_file(p) if p.endswith(".safetensors") else torch.load(p, weights_only=True)
for k, t in sd.items():
    f = t.float()
    print(k, f.min().item(), f.max().item(), f.mean().item(), f.std().item(),
          f.isnan().sum().item(), f.isinf().sum().item(), (f == 0).sum().item())
"""


def run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, float]:
    """(wall s, CPU s of the process and its threads, peak RSS MB) of one child."""
    import os
    import subprocess
    import time

    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
    p.stderr.close()
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed: {err[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def median_run(cmd: list[str], repeats: int, env: dict[str, str] | None = None
               ) -> tuple[float, float, float]:
    """Medians of wall and CPU seconds over `repeats` runs, and the largest peak RSS."""
    import statistics

    runs = [run(cmd, env) for _ in range(repeats)]
    return (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs),
            max(r[2] for r in runs))


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable"):
            return int(line.split()[1]) * 1024
    return 0
