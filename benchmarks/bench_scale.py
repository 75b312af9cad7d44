"""bufinspect against the limits: realistic checkpoints, the naive torch way, and `cat`.

Generates (under benchmarks/_work/, git-ignored, deleted at the end; ~6.5 GB of disk):
  - resnet: ResNet-like state dict, 160 conv+BatchNorm blocks (.pt, ~0.2 GB), an "after" copy
    with changed running stats, and the same state dict as a torch.distributed.checkpoint folder
  - llm-1g / llm-4g: LLM-like, 256 large bf16 matrices in sharded safetensors with an index
  - many: 50,000 small tensors (.pt)
and measures whole processes (wall, peak RSS from os.wait4): `bufinspect show`, `show --stats`
with --jobs 1 / --jobs 2 (threads) / --jobs 2 (processes), `diff` and `check` when the installed
CLI has them, the naive torch.load (or safetensors load_file) + whole-tensor ops, and `cat` of
the same bytes on a warm page cache. Writes benchmarks/RESULTS.md.

    python benchmarks/bench_scale.py [--quick]

`--every` measures `show --stats` and `check` on the bf16 checkpoints of the every-tensor-changed
pairs (`_every.py`, 1 and 4 GB .safetensors, under benchmarks/data/, deleted at the end), each
with the compiled kernel and with the numpy path (`BUFINSPECT_NO_KERNEL=1`), against `cat` and
the naive load + whole-tensor-ops script in the same run. `--listing` measures listing at
1k/10k/50k/100k tensors (see `listing`). Both write their own sections of RESULTS.md.

    python benchmarks/bench_scale.py --every | --listing
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _measure import (WORK, bufinspect, env, fmt_s, machine, measure, warm_bytecode,
                      write_section)

QUICK = "--quick" in sys.argv
REPEATS = 3

NAIVE_SHOW = r"""
import sys, torch
from safetensors.torch import load_file
for p in sys.argv[1:]:
    sd = load_file(p) if p.endswith(".safetensors") else torch.load(p, weights_only=True)
    for k, t in sd.items():
        print(k, tuple(t.shape), t.dtype, t.device)
    del sd
"""

NAIVE_STATS = r"""
import sys, torch
from safetensors.torch import load_file
for p in sys.argv[1:]:
    sd = load_file(p) if p.endswith(".safetensors") else torch.load(p, weights_only=True)
    for k, t in sd.items():
        f = t.double() if not t.is_floating_point() else t.float()
        print(k, f.min().item(), f.max().item(), f.mean().item(), f.std().item() if f.numel() > 1 else 0,
              f.isnan().sum().item(), f.isinf().sum().item(), (f == 0).sum().item())
    del sd
"""

NAIVE_DIFF = r"""
import os, sys, torch
from safetensors.torch import load_file

def load(p):
    if not os.path.isdir(p):
        return torch.load(p, weights_only=True)
    sd = {}
    for f in sorted(os.listdir(p)):
        if f.endswith(".safetensors"):
            sd.update(load_file(os.path.join(p, f)))
    return sd

a, b = load(sys.argv[1]), load(sys.argv[2])
for k in a:
    if not torch.equal(a[k], b[k]):
        print(k, (a[k].double() - b[k].double()).abs().max().item())
"""


# ---- generation (in child processes, so this process's RSS stays small) ----------------------


def _gen(kind: str, out: str, size: int) -> None:
    import torch

    g = torch.Generator().manual_seed(0)
    out_p = Path(out)
    if kind == "resnet":
        sd = {}
        c = 64
        for i in range(160):
            width = c * (1 + (i * 4) // 160)  # 64 .. 256 channels, deeper is wider
            sd[f"layer{i // 40 + 1}.{i % 40}.conv.weight"] = torch.randn(width, width, 3, 3,
                                                                         generator=g) * 0.05
            for n, v in (("weight", torch.ones(width)), ("bias", torch.zeros(width)),
                         ("running_mean", torch.randn(width, generator=g) * 0.1),
                         ("running_var", torch.rand(width, generator=g) + 0.5),
                         ("num_batches_tracked", torch.tensor(1000))):
                sd[f"layer{i // 40 + 1}.{i % 40}.bn.{n}"] = v
        sd["fc.weight"] = torch.randn(1000, 256, generator=g) * 0.01
        sd["fc.bias"] = torch.zeros(1000)
        torch.save(sd, out_p / "resnet.pt")
        for k in sd:
            if k.endswith("running_mean"):
                sd[k] = sd[k] + 0.01  # a few steps of training moved the running stats
        torch.save(sd, out_p / "resnet_after.pt")
        import warnings

        import torch.distributed.checkpoint as dcp

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.save(sd, checkpoint_id=str(out_p / "resnet_dcp"))
    elif kind == "llm":
        from safetensors.torch import save_file

        n = 256
        per = size // n // 2  # bf16 elements per matrix
        cols = 4096
        rows = max(per // cols, 1)
        shards, cur, used, limit = [], {}, 0, 1 << 30
        for i in range(n):
            t = (torch.randn(rows, cols, generator=g) * 0.02).to(torch.bfloat16)
            cur[f"model.layers.{i // 8}.mlp_{i % 8}.weight"] = t
            used += t.numel() * 2
            if used >= limit:
                shards.append(cur)
                cur, used = {}, 0
        if cur:
            shards.append(cur)
        folder = out_p / f"llm-{size >> 30}g"
        folder.mkdir()
        weight_map = {}
        for j, part in enumerate(shards):
            name = f"model-{j + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(part, str(folder / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in part})
        total = sum(t.numel() * 2 for s in shards for t in s.values())
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
        # "after": a fine-tuning step changed a few matrices of the first shard
        after = out_p / f"llm-{size >> 30}g-after"
        shutil.copytree(folder, after)
        first = shards[0]
        for k in list(first)[1:4]:
            first[k] = first[k] + (torch.randn(first[k].shape, generator=g) * 1e-3).to(
                torch.bfloat16)
        save_file(first, str(after / f"model-00001-of-{len(shards):05d}.safetensors"),
                  metadata={"format": "pt"})
    elif kind == "many":
        sd = {f"blocks.{i // 5}.p{i % 5}": torch.randn(16, generator=g) for i in range(50_000)}
        torch.save(sd, out_p / "many.pt")


def generate(kind: str, size: int = 0) -> None:
    subprocess.run([sys.executable, __file__, "--gen", kind, str(WORK), str(size)], check=True,
                   env=env())


# ---- measuring ---------------------------------------------------------------------------


def data_files(path: Path) -> list[str]:
    if path.is_dir():
        return sorted(str(p) for p in path.iterdir() if p.suffix in (".safetensors", ".distcp"))
    return [str(path)]


def nbytes(path: Path) -> int:
    return sum(Path(p).stat().st_size for p in data_files(path))


def has_command(name: str) -> bool:
    out = subprocess.run(bufinspect("--help"), capture_output=True, text=True, env=env()).stdout
    return any(line.strip().startswith(name + " ") or line.strip() == name
               for line in out.splitlines())


class Table:
    def __init__(self) -> None:
        self.rows: list[str] = []

    def add(self, case: str, what: str, size: int, wall: float, rss: float, cat: float | None,
            note: str = "") -> None:
        gbs = f"{size / wall / 1e9:.2f}" if size and wall else "-"
        ratio = f"{wall / cat:.2f}x" if cat else "-"
        row = (f"| {case} | {what} | {size / 2**30:.2f} GiB | {fmt_s(wall)} | {rss:.0f} MB | "
               f"{gbs} | {ratio} | {note} |")
        self.rows.append(row)
        print(row, flush=True)

    def markdown(self) -> str:
        head = ("| case | command | bytes | wall (median) | peak RSS | GB/s | vs cat | note |\n"
                "| --- | --- | --- | --- | --- | --- | --- | --- |\n")
        return head + "\n".join(self.rows) + "\n"


def bench_case(t: Table, case: str, path: Path, *, naive: bool, other: Path | None,
               diff: bool, check: bool, jobs_compare: bool) -> dict[str, float]:
    files = data_files(path)
    size = nbytes(path)
    reps = 1 if size > (2 << 30) else REPEATS
    cat = ["cat", *files]
    measure(cat, repeats=1)  # warm the page cache
    cat_wall, cat_rss = measure(cat, repeats=reps)
    t.add(case, "`cat` (warm cache)", size, cat_wall, cat_rss, None)
    out = {"cat": cat_wall}
    wall, rss = measure(bufinspect("show", path, "--format", "json"), repeats=5)
    t.add(case, "`bufinspect show`", 0, wall, rss, None, "metadata only")
    out["show"] = wall
    for jobs, pool in (("1", "thread"), ("2", "thread"), ("2", "process")):
        if (not jobs_compare and (jobs, pool) != ("2", "thread")) or (
                pool == "process" and size > (2 << 30)):
            continue
        wall, rss = measure(bufinspect("show", path, "--stats", "--jobs", jobs, "--format", "json"),
                            repeats=reps, extra_env={"BUFINSPECT_POOL": pool})
        t.add(case, f"`show --stats --jobs {jobs}` ({pool} pool)", size, wall, rss, cat_wall)
        out[f"stats{jobs}{pool}"] = wall
    if diff and other is not None:
        both = ["cat", *files, *data_files(other)]
        measure(both, repeats=1)
        cat2, cat2_rss = measure(both, repeats=reps)
        t.add(case, "`cat` A and B (warm cache)", size + nbytes(other), cat2, cat2_rss, None)
        for jobs in ("1", "2"):
            wall, rss = measure(bufinspect("diff", path, other, "--all", "--format", "json",
                                           "--jobs", jobs), repeats=reps)
            t.add(case, f"`bufinspect diff --all --jobs {jobs}`", size + nbytes(other), wall, rss,
                  cat2)
            out[f"diff{jobs}"] = wall
        out["cat2"] = cat2
    if check:
        for jobs in ("1", "2"):
            wall, rss = measure(bufinspect("check", path, "--format", "json", "--jobs", jobs),
                                repeats=reps)
            t.add(case, f"`bufinspect check --jobs {jobs}`", size, wall, rss, cat_wall,
                  "reads every float tensor")
            out[f"check{jobs}"] = wall
    if naive:
        wall, rss = measure([sys.executable, "-c", NAIVE_SHOW, *files], repeats=1)
        t.add(case, "naive listing: `torch.load` / `load_file`", 0, wall, rss, None, "1 run")
        if size <= (2 << 30):  # 4 minutes for 4 GB here; the 1 GB run shows the same
            wall, rss = measure([sys.executable, "-c", NAIVE_STATS, *files], repeats=1)
            t.add(case, "naive stats: load + whole-tensor ops", size, wall, rss, cat_wall,
                  "1 run")
        if other is not None and size <= (2 << 30):
            wall, rss = measure([sys.executable, "-c", NAIVE_DIFF, str(path), str(other)],
                                repeats=1)
            t.add(case, "naive diff: 2x `torch.load` + `torch.equal`", size + nbytes(other),
                  wall, rss, None, "1 run")
    return out


def main() -> int:
    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir()
    started = time.perf_counter()
    warm_bytecode()
    t = Table()
    diff, check = has_command("diff"), has_command("check")
    print(machine())
    print(f"diff command: {'yes' if diff else 'not in this CLI, skipped'}; "
          f"check command: {'yes' if check else 'not in this CLI, skipped'}")
    found: dict[str, dict[str, float]] = {}
    start, _ = measure(bufinspect("--version"), repeats=5)
    print(f"start-up (`bufinspect --version`): {fmt_s(start)}")
    try:
        generate("resnet")
        found["resnet"] = bench_case(t, "resnet .pt", WORK / "resnet.pt", naive=True,
                                     other=WORK / "resnet_after.pt", diff=diff, check=check,
                                     jobs_compare=True)
        found["resnet-dcp"] = bench_case(t, "resnet DCP", WORK / "resnet_dcp", naive=False,
                                         other=None, diff=False, check=check,
                                         jobs_compare=False)
        generate("many")
        found["many"] = bench_case(t, "50k tensors .pt", WORK / "many.pt", naive=True, other=None,
                                   diff=False, check=check, jobs_compare=False)
        for gib in ((1,) if QUICK else (1, 4)):
            generate("llm", gib << 30)
            case = f"llm {gib} GB sharded"
            found[case] = bench_case(t, case, WORK / f"llm-{gib}g", naive=True,
                                     other=WORK / f"llm-{gib}g-after", diff=diff, check=check,
                                     jobs_compare=True)
            shutil.rmtree(WORK / f"llm-{gib}g")
            shutil.rmtree(WORK / f"llm-{gib}g-after")
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    elapsed = time.perf_counter() - started
    write_results(t, found, elapsed, diff, check, start)
    return 0


def write_results(t: Table, found: dict, elapsed: float, diff: bool, check: bool,
                  start: float) -> None:
    rss = {r.split("|")[1].strip() + r.split("|")[2].strip(): r.split("|")[5].strip()
           for r in t.rows}
    lines = ["## Scale (`python benchmarks/bench_scale.py`)", "",
             "Whole processes, warm page cache; wall is the median of 3 runs (5 for "
             "listing, 1 for the naive runs and for data passes over 2 GB); peak RSS is the "
             "child's own `ru_maxrss` from `os.wait4`. GB/s is bytes read / wall; `vs cat` is "
             "wall / wall of `cat` over the same files (for diff: both checkpoints). "
             "bufinspect's modules are byte-compiled first (`_measure.warm_bytecode`: this "
             "machine sets PYTHONDONTWRITEBYTECODE=1).", "",
             "### Machine", "", machine(),
             f"Total benchmark time {elapsed:.0f} s. `diff`: "
             f"{'measured' if diff else 'not in this CLI yet (skipped)'}; `check`: "
             f"{'measured' if check else 'not in this CLI yet (skipped)'}.", "",
             "### Figures", "", t.markdown(), "### Reading them", "",
             f"Ratios are whole-process wall / `cat`; in brackets, (wall - start-up) / `cat`, "
             f"start-up being `bufinspect --version` ({fmt_s(start)}, median of 5: the "
             "interpreter and the CLI, before any checkpoint is read).", ""]

    def ratio(wall: float, cat: float) -> str:
        return f"{wall / cat:.2f}x cat [{(wall - start) / cat:.2f}x]"

    for case, f in found.items():
        parts = [f"- **{case}**: listing {fmt_s(f['show'])}"]
        if "stats1thread" in f:
            text = (f"stats --jobs 1 {ratio(f['stats1thread'], f['cat'])}, --jobs 2 (threads) "
                    f"{ratio(f['stats2thread'], f['cat'])} (speed-up "
                    f"{f['stats1thread'] / f['stats2thread']:.2f}x)")
            if "stats2process" in f:
                text += f", --jobs 2 (processes) {ratio(f['stats2process'], f['cat'])}"
            parts.append(text)
        elif "stats2thread" in f:
            parts.append(f"stats --jobs 2 {ratio(f['stats2thread'], f['cat'])}")
        if "diff1" in f:
            parts.append(f"diff --jobs 1 {ratio(f['diff1'], f['cat2'])}, --jobs 2 "
                         f"{ratio(f['diff2'], f['cat2'])} (speed-up "
                         f"{f['diff1'] / f['diff2']:.2f}x)")
        if "check1" in f:
            parts.append(f"check --jobs 1 {ratio(f['check1'], f['cat'])}, --jobs 2 "
                         f"{ratio(f['check2'], f['cat'])} (speed-up "
                         f"{f['check1'] / f['check2']:.2f}x)")
        lines.append("; ".join(parts))
    lines.append("")
    cmds = sorted({r.split("|")[2].strip() for r in t.rows if r.startswith("| llm")
                   and ("--jobs" in r) and "process" not in r})
    lines.append("Peak RSS as the LLM checkpoint grows from 1 GB to 4 GB (same command): " + "; ".join(
        f"{c} {rss.get('llm 1 GB sharded' + c, '-')} -> {rss.get('llm 4 GB sharded' + c, '-')}"
        for c in cmds) + ".")
    lines.append("")
    write_section("bench_scale", "\n".join(lines))
    print(f"wrote benchmarks/RESULTS.md ({elapsed:.0f} s)")


FLOOR_SAFETENSORS = r"""
import json, os, struct, sys
p = sys.argv[1]
files = ([os.path.join(p, f) for f in sorted(os.listdir(p)) if f.endswith(".safetensors")]
         if os.path.isdir(p) else [p])
n = 0
for f in files:
    with open(f, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        n += len(json.loads(fh.read(size)))
print(n)
"""

FLOOR_PICKLE = r"""
import io, pickle, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
raw = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))

class Stub:
    def __init__(self, *a, **k):
        pass
    def __setstate__(self, state):
        pass

class Scan(pickle.Unpickler):
    def find_class(self, module, name):
        return Stub
    def persistent_load(self, pid):
        return pid

print(len(Scan(io.BytesIO(raw)).load()))
"""

NAIVE_LIST = r"""
import os, sys, torch
from safetensors import safe_open
p = sys.argv[1]
if p.endswith(".pt"):
    sd = torch.load(p, weights_only=True, mmap=True)
    rows = [(k, tuple(t.shape), str(t.dtype)) for k, t in sd.items()]
else:
    files = ([os.path.join(p, f) for f in sorted(os.listdir(p)) if f.endswith(".safetensors")]
             if os.path.isdir(p) else [p])
    rows = []
    for f in files:
        with safe_open(f, "pt") as h:
            rows += [(k, tuple(h.get_slice(k).get_shape()), h.get_slice(k).get_dtype())
                     for k in h.keys()]
print(len(rows))
"""


def listing() -> int:
    """`bufinspect show` on checkpoints of 1k-100k tensors (MoE-like names; `_many.py`): one
    .pt, one .safetensors and a 50-shard safetensors folder each (bufinspect reads no folder
    of .pt shards), against the floor (json.loads of the headers; an unpickler that builds
    nothing, over data.pkl) and the naive listing (torch.load(mmap=True) / safe_open)."""
    import os

    import _every
    import _many

    warm_bytecode()
    data = Path(__file__).resolve().parent / "data"
    fused = env()
    start = _every.median_run([*bufinspect("--version")], 5, fused)
    print(machine())
    rows = ["| tensors | checkpoint | `show --format json` | CPU s | peak RSS | `show` (table) | "
            "floor | json vs floor | naive | naive / json |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    counts = (1000, 10_000) if QUICK else (1000, 10_000, 50_000, 100_000)
    for n in counts:
        for kind in ("pt", "st", "shards"):
            path = Path(subprocess.run(
                [sys.executable, str(Path(__file__).resolve().parent / "_many.py"),
                 str(data), str(n), kind], check=True, capture_output=True,
                text=True).stdout.strip())
            js = _every.median_run([*bufinspect("show", path, "--format", "json")],
                                   REPEATS, fused)
            table = _every.median_run([*bufinspect("show", path)], REPEATS, fused)
            floor = _every.median_run([sys.executable, "-c", FLOOR_PICKLE if kind == "pt"
                                       else FLOOR_SAFETENSORS, path], REPEATS)
            naive = _every.run([sys.executable, "-c", NAIVE_LIST, path])
            label = {"pt": ".pt", "st": ".safetensors", "shards": "50 shards"}[kind]
            row = (f"| {n:,} | {label} | {fmt_s(js[0])} | {js[1]:.2f} | {js[2]:.0f} MB | "
                   f"{fmt_s(table[0])} | {fmt_s(floor[0])} | {js[0] / floor[0]:.1f}x | "
                   f"{fmt_s(naive[0])} | {naive[0] / js[0]:.1f}x |")
            rows.append(row)
            print(row, flush=True)
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    load = os.getloadavg()
    write_section("bench_scale_listing", "\n".join([
        "## Listing many tensors (`python benchmarks/bench_scale.py --listing`)", "",
        f"Whole processes, medians of {REPEATS} (naive: 1 run); warm page cache. Floor: a "
        "process that only reads the safetensors headers with `json.loads`, or unpickles "
        "data.pkl with an unpickler that builds nothing (`FLOOR_*` in bench_scale.py), start-up "
        "included. Naive: `torch.load(mmap=True)` or `safe_open` listing every key's shape and "
        f"dtype. Start-up (`bufinspect --version`): {fmt_s(start[0])}.", "", machine(),
        f"Load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on 2 cores.",
        "", *rows, ""]))
    return 0


def every() -> int:
    """`show --stats` and `check` on bf16 checkpoints (see the module docstring)."""
    import os

    import _every

    warm_bytecode()
    data = Path(__file__).resolve().parent / "data"
    py = bufinspect()
    fused, plain = env(), env(BUFINSPECT_NO_KERNEL="1")
    start = _every.median_run([*py, "--version"], 5, fused)
    print(machine())
    rows = ["| checkpoint | `cat` | command | wall, C kernel | vs cat [beyond start-up] | "
            "CPU s: cat / command | peak RSS | numpy path | naive load + ops |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for gb in ("1", "4"):
        a, b = (Path(p) for p in subprocess.run(
            [sys.executable, str(Path(__file__).resolve().parent / "_every.py"), str(data),
             "bfloat16", gb, "safetensors"], check=True, capture_output=True,
            text=True).stdout.split())
        b.unlink()
        _every.run(["cat", a])
        cat = _every.median_run(["cat", a], REPEATS)
        naive = _every.run([sys.executable, "-c", _every.NAIVE_STATS, a])

        def naive_cell(wall: float) -> str:
            return f"{fmt_s(naive[0])} ({naive[0] / wall:.0f}x slower)"
        for what in (["show", "--stats"], ["check", "--device", "cpu"]):
            cmd = [*py, *what, a, "--format", "json", "--jobs", "2"]
            w = _every.median_run(cmd, REPEATS, fused)
            w_np = _every.median_run(cmd, 1, plain)
            row = (f"| {gb} GB bf16 .safetensors | {fmt_s(cat[0])} | `{' '.join(what)}` | "
                   f"{fmt_s(w[0])} | {w[0] / cat[0]:.2f}x [{(w[0] - start[0]) / cat[0]:.2f}x] |"
                   f" {cat[1]:.2f} / {w[1]:.2f} | {w[2]:.0f} MB | {fmt_s(w_np[0])} "
                   f"({w_np[0] / cat[0]:.1f}x) | {naive_cell(w[0])} |")
            rows.append(row)
            print(row, flush=True)
        a.unlink()
    load = os.getloadavg()
    write_section("bench_scale_every", "\n".join([
        "## bf16 statistics (`python benchmarks/bench_scale.py --every`)", "",
        f"`--format json --jobs 2`, warm page cache, medians of {REPEATS} (numpy path and "
        "naive: 1 run); the naive script loads the file and runs min/max/mean/std/NaN/Inf/zero "
        "ops per tensor. `[beyond start-up]` subtracts `bufinspect --version` "
        f"({fmt_s(start[0])}). CPU s: user + system, all threads.", "", machine(),
        f"Load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on 2 cores.",
        "", *rows, ""]))
    return 0


if __name__ == "__main__":
    import argparse

    if sys.argv[1:2] != ["--gen"]:  # (--gen is the script's own child command)
        ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
        mode = ap.add_mutually_exclusive_group()
        mode.add_argument("--every", action="store_true", help="bf16 show --stats / check")
        mode.add_argument("--listing", action="store_true", help="listing 1k-100k tensors")
        ap.add_argument("--quick", action="store_true", help="smaller sizes, fewer runs")
        ap.parse_args()
    if sys.argv[1:2] == ["--every"]:
        sys.exit(every())
    if sys.argv[1:2] == ["--listing"]:
        sys.exit(listing())
    if sys.argv[1:2] == ["--gen"]:
        _gen(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        sys.exit(0)
    sys.exit(main())
