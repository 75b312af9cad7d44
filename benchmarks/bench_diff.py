"""Benchmark `bufinspect diff` against the script a user would otherwise write.

Generates (never commits) two ~1 GB checkpoints resembling a ResNet-style model - big conv and
linear weights, BatchNorm buffers - where B is A after a few perturbed BN buffers and some changed
weights, in .pt and .safetensors, under benchmarks/_work/ (git-ignored). Then prints, per format,
the median of 3 warm-cache runs of:

  - `bufinspect diff A B --all` (subprocess: wall time and peak RSS of the whole process), with
    the default workers (one thread per core) and with `--jobs 1`
  - the naive script: torch.load both, torch.allclose per key
  - `cat A B > /dev/null`
  - `bufinspect --version` (start-up)

and the ratios against the targets: >= 15x faster than naive, peak RSS <= 256 MB,
(diff - start-up) <= 1.5x cat. bufinspect's modules are byte-compiled first (this machine sets
PYTHONDONTWRITEBYTECODE=1; see `_measure.warm_bytecode`).

    python benchmarks/bench_diff.py [--size-gb 1.0] [--keep]

`--every` measures the case people run instead: two checkpoints a training step apart, every
tensor changed by ~1e-3 (`_every.py` makes them under benchmarks/data/, deleted at the end unless
`--keep`), fp32 and bf16, .pt and .safetensors, 1 and 4 GB (`--pairs` picks some), with `cat`
of both, `diff --all --format json --jobs 2` with the compiled kernel and with the numpy path
(`BUFINSPECT_NO_KERNEL=1`), and the naive torch.load + allclose script, all in one run. Wall and
CPU seconds are medians; CPU seconds (user + system, all threads) are steadier than wall on
this shared machine. Writes the `bench_diff_every` section of RESULTS.md.

    python benchmarks/bench_diff.py --every [--pairs float32:pt:1,bfloat16:safetensors:4]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "_work"

NAIVE = r"""
import sys, torch
a = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
b = torch.load(sys.argv[2], map_location="cpu", weights_only=True)
changed = 0
for k in a.keys() | b.keys():
    if k not in a or k not in b or a[k].shape != b[k].shape or a[k].dtype != b[k].dtype:
        changed += 1
    elif not torch.allclose(a[k].double() if not a[k].is_floating_point() else a[k],
                            b[k].double() if not b[k].is_floating_point() else b[k],
                            rtol=1e-5, atol=1e-8, equal_nan=True):
        changed += 1
print(changed, "changed")
"""

NAIVE_ST = NAIVE.replace("torch.load(sys.argv[1], map_location=\"cpu\", weights_only=True)",
                         "load_file(sys.argv[1])").replace(
    "torch.load(sys.argv[2], map_location=\"cpu\", weights_only=True)", "load_file(sys.argv[2])"
).replace("import sys, torch", "import sys, torch\nfrom safetensors.torch import load_file")


PHASES = r"""
import sys, time
t0 = time.perf_counter()
import numpy
t1 = time.perf_counter()
import bufinspect
from bufinspect.analysis.diff import diff
ca, cb = bufinspect.load(sys.argv[1]), bufinspect.load(sys.argv[2])
t2 = time.perf_counter()
diff(ca, cb, scope="all", device="cpu", jobs=int(sys.argv[3]))
t3 = time.perf_counter()
print(f"{t1 - t0:.3f} {t2 - t1:.3f} {t3 - t2:.3f}")
"""


def make_state(size_gb: float, seed: int = 0):
    """A ResNet-like state dict of about `size_gb` GB (float32)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    sd = {}
    target = size_gb * 1e9
    total = 0
    stage = 0

    def bn(name: str, c: int) -> None:
        sd[f"{name}.weight"] = torch.rand(c, generator=g) + 0.5
        sd[f"{name}.bias"] = torch.randn(c, generator=g) * 0.1
        sd[f"{name}.running_mean"] = torch.randn(c, generator=g) * 0.1
        sd[f"{name}.running_var"] = torch.rand(c, generator=g) + 0.5
        sd[f"{name}.num_batches_tracked"] = torch.tensor(10000)

    sd["conv1.weight"] = torch.randn(64, 3, 7, 7, generator=g) * 0.05
    bn("bn1", 64)
    widths = (256, 512, 1024, 2048)
    while total < target * 0.9:
        w = widths[min(stage // 3, 3)]
        mid = w // 4
        p = f"layer{stage // 3 + 1}.{stage % 3}"
        for i, (co, ci, k) in enumerate(((mid, w, 1), (mid, mid, 3), (w, mid, 1)), start=1):
            sd[f"{p}.conv{i}.weight"] = torch.randn(co, ci, k, k, generator=g) * 0.02
            bn(f"{p}.bn{i}", co)
        total = sum(t.numel() * t.element_size() for t in sd.values())
        stage += 1
    rest = int((target - total) / 4 / 2048)
    sd["fc.weight"] = torch.randn(max(rest, 1000), 2048, generator=g) * 0.01
    sd["fc.bias"] = torch.zeros(sd["fc.weight"].shape[0])
    return sd


def perturb(sd):
    """B: a few BN layers saw more training steps, and three weights were updated."""
    import torch

    g = torch.Generator().manual_seed(1)
    out = dict(sd)
    bns = [k[: -len(".running_mean")] for k in sd if k.endswith(".running_mean")]
    for name in bns[1:6]:
        out[f"{name}.running_mean"] = sd[f"{name}.running_mean"] + 0.01 * torch.randn(
            sd[f"{name}.running_mean"].shape, generator=g)
        out[f"{name}.running_var"] = sd[f"{name}.running_var"] * 1.01
        out[f"{name}.num_batches_tracked"] = sd[f"{name}.num_batches_tracked"] + 100
    weights = [k for k in sd if k.endswith("conv2.weight")]
    for k in weights[2:5]:
        out[k] = sd[k] + 1e-3 * torch.randn(sd[k].shape, generator=g)
    return out


def generate(size_gb: float) -> dict[str, tuple[Path, Path]]:
    import torch
    from safetensors.torch import save_file

    WORK.mkdir(parents=True, exist_ok=True)
    tag = f"{size_gb:g}gb"
    pairs = {"pt": (WORK / f"a_{tag}.pt", WORK / f"b_{tag}.pt"),
             "safetensors": (WORK / f"a_{tag}.safetensors", WORK / f"b_{tag}.safetensors")}
    if all(p.exists() for pair in pairs.values() for p in pair):
        return pairs
    a = make_state(size_gb)
    b = perturb(a)
    for sd, pt, st in ((a, pairs["pt"][0], pairs["safetensors"][0]),
                       (b, pairs["pt"][1], pairs["safetensors"][1])):
        torch.save(sd, pt)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    return pairs


def timed(cmd: list[str], *, stdout=subprocess.DEVNULL) -> tuple[float, int, int]:
    """(wall seconds, peak RSS in KiB, exit code) of a command, via /usr/bin/time."""
    with tempfile.NamedTemporaryFile("r") as f:
        if shutil.which("time") or os.path.exists("/usr/bin/time"):
            full = ["/usr/bin/time", "-f", "%e %M", "-o", f.name, *cmd]
            rc = subprocess.run(full, stdout=stdout, stderr=subprocess.DEVNULL).returncode
            wall, rss = f.read().split()[-2:]
            return float(wall), int(rss), rc
    raise SystemExit("needs /usr/bin/time")


def median_of(n: int, cmd: list[str]) -> tuple[float, int, int]:
    runs = [timed(cmd) for _ in range(n)]
    return (statistics.median(r[0] for r in runs), max(r[1] for r in runs), runs[-1][2])


def wall(cmd: str, n: int = 3) -> float:
    import time

    out = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(cmd, shell=True, check=True)
        out.append(time.perf_counter() - t)
    return statistics.median(out)


EVERY_PAIRS = ("float32:pt:1,float32:safetensors:1,bfloat16:pt:1,bfloat16:safetensors:1,"
               "float32:safetensors:4,bfloat16:safetensors:4")


def every(args) -> None:
    """The every-tensor-changed pairs (see the module docstring)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import _every
    from _measure import env, fmt_s, machine, warm_bytecode, write_section

    warm_bytecode()
    data = ROOT / "benchmarks" / "data"
    py = [sys.executable, "-m", "bufinspect"]
    fused, plain = env(), env(BUFINSPECT_NO_KERNEL="1")
    n = args.runs
    tiny = data / "tiny.pt"
    data.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", "import torch, sys; torch.save({'w': torch.ones(8)},"
                    " sys.argv[1])", str(tiny)], check=True)
    start = _every.median_run([*py, "--version"], 5, fused)
    same = _every.median_run([*py, "diff", tiny, tiny, "--format", "json"], 5, fused)
    head = (f"start-up: `bufinspect --version` {fmt_s(start[0])}, `diff` of two identical "
            f"small files {fmt_s(same[0])} (medians of 5)")
    print(machine())
    print(head)
    rows = ["| pair (every tensor changed by ~1e-3) | `cat` of both | diff, C kernel | ratio "
            "[beyond start-up] | CPU s: cat / diff | peak RSS | diff, numpy path | naive "
            "`torch.load` + `allclose` | naive / diff |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    try:
        for spec in args.pairs.split(","):
            dtype, fmt, gb = spec.split(":")
            a, b = (Path(p) for p in subprocess.run(
                [sys.executable, str(ROOT / "benchmarks" / "_every.py"), str(data), dtype, gb,
                 fmt], check=True, capture_output=True, text=True).stdout.split())
            size = a.stat().st_size + b.stat().st_size
            _every.run(["cat", a, b])  # warm the page cache
            cat = _every.median_run(["cat", a, b], n)
            cmd = [*py, "diff", a, b, "--all", "--format", "json", "--jobs", "2"]
            d = _every.median_run(cmd, n, fused)
            d_np = _every.median_run(cmd, 1, plain)
            if args.quick and float(gb) > 1:
                naive_s, ratio = "skipped (--quick)", "-"
            elif _every.mem_available() > 1.3 * size:
                naive = _every.run([sys.executable, "-c", _every.NAIVE_DIFF, a, b])
                naive_s, ratio = fmt_s(naive[0]), f"{naive[0] / d[0]:.1f}x"
            else:
                naive_s, ratio = "skipped (memory)", "-"
            row = (f"| {gb} GB {dtype} .{fmt} ({size / 1e9:.1f} GB) | {fmt_s(cat[0])} | "
                   f"{fmt_s(d[0])} | {d[0] / cat[0]:.2f}x [{(d[0] - start[0]) / cat[0]:.2f}x] | "
                   f"{cat[1]:.2f} / {d[1]:.2f} | {d[2]:.0f} MB | {fmt_s(d_np[0])} "
                   f"({d_np[0] / cat[0]:.1f}x) | {naive_s} | {ratio} |")
            rows.append(row)
            print(row, flush=True)
            if not args.keep:
                a.unlink()
                b.unlink()
    finally:
        tiny.unlink(missing_ok=True)
    load = os.getloadavg()
    write_section("bench_diff_every", "\n".join([
        "## diff, every tensor changed (`python benchmarks/bench_diff.py --every`)", "",
        "Two checkpoints a training step apart (B = A + 1e-3 * randn on every tensor; LLM-like "
        "4096-wide matrices plus small norm/bias vectors); `diff --all --format json --jobs 2`, "
        f"warm page cache, medians of {n} (the numpy path and the naive script: 1 run). "
        "`[beyond start-up]` subtracts `bufinspect --version`. CPU s: user + system seconds "
        "of all threads, the steadier figure on this shared machine.", "",
        machine(), f"Load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
        "(1 / 5 / 15 min) on 2 cores.", "", head, "", *rows, ""]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--every", action="store_true", help="the every-tensor-changed pairs")
    ap.add_argument("--pairs", default=EVERY_PAIRS, help="DTYPE:FMT:GB,... for --every")
    ap.add_argument("--quick", action="store_true", help="--every: no naive run over 1 GB")
    args = ap.parse_args()
    if args.every:
        return every(args)
    pairs = generate(args.size_gb)
    env_py = [sys.executable, "-m", "bufinspect"]
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _measure import warm_bytecode

    warm_bytecode()
    cores = len(os.sched_getaffinity(0))
    print(f"# bench_diff: {args.size_gb:g} GB per checkpoint, median of {args.runs}, warm cache, "
          f"{os.cpu_count()} CPUs")
    start, start_rss, _ = median_of(args.runs, [*env_py, "--version"])
    print(f"start-up  `bufinspect --version`: {start:.2f} s, {start_rss / 1024:.0f} MB")
    for fmt, (a, b) in pairs.items():
        size = a.stat().st_size + b.stat().st_size
        wall(f"cat {a} {b} > /dev/null", 1)  # warm the cache
        cat = wall(f"cat {a} {b} > /dev/null", args.runs)
        d, d_rss, rc = median_of(args.runs, [*env_py, "diff", str(a), str(b), "--all"])
        assert rc == 1, f"bufinspect diff exit {rc}, expected 1 (differences)"
        d1, d1_rss, _ = median_of(args.runs, [*env_py, "diff", str(a), str(b), "--all",
                                              "--jobs", "1"])
        dj, dj_rss, _ = median_of(args.runs, [*env_py, "diff", str(a), str(b), "--all",
                                              "--format", "json"])
        script = NAIVE if fmt == "pt" else NAIVE_ST
        n, n_rss, _ = median_of(args.runs, [sys.executable, "-c", script, str(a), str(b)])
        print(f"\n## {fmt} pair, {size / 1e9:.2f} GB")
        print(f"cat a b > /dev/null      : {cat:6.2f} s  ({size / cat / 1e9:.1f} GB/s)")
        print(f"bufinspect diff --all    : {d:6.2f} s  peak RSS {d_rss / 1024:6.0f} MB  "
              f"({cores} threads, the default)")
        print(f"  ... --jobs 1           : {d1:6.2f} s  peak RSS {d1_rss / 1024:6.0f} MB  "
              f"(--jobs {cores} is {d1 / d:.2f}x faster)")
        print(f"  ... --format json      : {dj:6.2f} s  peak RSS {dj_rss / 1024:6.0f} MB  "
              f"(no rich tables to import and lay out: {(dj - start) / cat:.2f}x cat beyond "
              "start-up)")
        print(f"naive torch.load+allclose: {n:6.2f} s  peak RSS {n_rss / 1024:6.0f} MB")
        speed = n / d
        beyond = (d - start) / cat
        print(f"speed-up vs naive        : {speed:5.1f}x   (target >= 15x: "
              f"{'met' if speed >= 15 else 'MISSED'})")
        print(f"peak RSS                 : {d_rss / 1024:5.0f} MB (target <= 256 MB: "
              f"{'met' if d_rss / 1024 <= 256 else 'MISSED'}); naive uses "
              f"{n_rss / d_rss:.0f}x more")
        print(f"(diff - start-up) / cat  : {beyond:5.2f}x  (target <= 1.5x: "
              f"{'met' if beyond <= 1.5 else 'MISSED'})")
        phases = [subprocess.run([sys.executable, "-c", PHASES, str(a), str(b), str(cores)],
                                 check=True, capture_output=True, text=True).stdout.split()
                  for _ in range(args.runs)]
        imp, meta, sweep = (statistics.median(float(p[i]) for p in phases) for i in range(3))
        cat2 = wall(f"cat {a} {b} > /dev/null", args.runs)
        print(f"in-process phases        : import numpy {imp:.2f} s, read metadata of both "
              f"{meta:.2f} s, data sweep ({cores} threads) {sweep:.2f} s = {sweep / cat2:.2f}x cat "
              f"({cat2:.2f} s, measured right after)")
    if not args.keep:
        for pair in pairs.values():
            for p in pair:
                p.unlink()


if __name__ == "__main__":
    main()
