"""Compare two checkouts of bufinspect on the same files, runs alternating (both see the same
machine load): listing, diff (identical, few changed, every tensor changed), check, --stats.

    git worktree add /tmp/before <commit>
    python benchmarks/bench_ab.py /tmp/before .        [--runs 7]

Prints the median wall time of whole processes per command and the after/before ratio. Data
(~450 MB, a ResNet-like state dict and two variants) is written once under benchmarks/data/.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "ab"

# runs bufinspect from a given root, bypassing an editable install of another checkout
RUNNER = """
import sys
root = sys.argv[1]
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path.insert(0, root)
sys.argv = ["bufinspect"] + sys.argv[2:]
import bufinspect
assert bufinspect.__file__.startswith(root), bufinspect.__file__
from bufinspect.cli import main
main()
"""


def make_data() -> None:
    import torch

    if not (DATA / "tiny.pt").exists():  # start-up: two identical small files
        DATA.mkdir(parents=True, exist_ok=True)
        torch.save({"w": torch.ones(8), "bn.running_var": torch.ones(4)}, DATA / "tiny.pt")
    if (DATA / "c.pt").exists():
        return

    DATA.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    sd = {}
    for i in range(60):
        sd[f"layer{i}.conv.weight"] = torch.randn(256, 256, 3, 3) * 0.01
        sd[f"layer{i}.bn.weight"] = torch.ones(256)
        sd[f"layer{i}.bn.bias"] = torch.zeros(256)
        sd[f"layer{i}.bn.running_mean"] = torch.randn(256)
        sd[f"layer{i}.bn.running_var"] = torch.rand(256)
        sd[f"layer{i}.bn.num_batches_tracked"] = torch.tensor(5)
    sd["fc.weight"] = torch.randn(1000, 2048) * 0.01
    torch.save(sd, DATA / "a.pt")
    torch.save({k: v + 0.01 if "running" in k else v.clone() for k, v in sd.items()},
               DATA / "b.pt")
    torch.save({k: v + 1e-3 * torch.randn_like(v) if v.is_floating_point() else v.clone()
                for k, v in sd.items()}, DATA / "c.pt")


CASES = [("--version", ["--version"]),
         ("diff tiny identical", ["diff", "tiny.pt", "tiny.pt", "--format", "json"]),
         ("show (json)", ["show", "a.pt", "--format", "json"]),
         ("show (table)", ["show", "a.pt"]),
         ("diff identical", ["diff", "a.pt", "a.pt", "--all", "--format", "json"]),
         ("diff few changed", ["diff", "a.pt", "b.pt", "--all", "--format", "json"]),
         ("diff all changed", ["diff", "a.pt", "c.pt", "--all", "--format", "json"]),
         ("check", ["check", "a.pt", "--format", "json", "--no-config"]),
         ("show --stats", ["show", "a.pt", "--stats", "--format", "json"])]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--only", action="append", default=[], metavar="NAME",
                    help="run only the cases whose name starts with NAME (repeatable)")
    args = ap.parse_args()
    make_data()
    roots = {"before": str(Path(args.before).resolve()), "after": str(Path(args.after).resolve())}
    for root in roots.values():
        subprocess.run([sys.executable, "-m", "compileall", "-q", f"{root}/bufinspect"],
                       check=True)
    print(f"median of {args.runs} alternating runs; load average "
          f"{open('/proc/loadavg').read().split()[0]}")
    for name, cmd in CASES:
        if args.only and not any(name.startswith(o) for o in args.only):
            continue
        times: dict[str, list[float]] = {k: [] for k in roots}
        for _ in range(args.runs):
            for k, root in roots.items():
                t = time.perf_counter()
                r = subprocess.run([sys.executable, "-c", RUNNER, root, *cmd], cwd=DATA,
                                   capture_output=True)
                times[k].append(time.perf_counter() - t)
                assert r.returncode in (0, 1), r.stderr.decode()[-500:]
        b, a = statistics.median(times["before"]), statistics.median(times["after"])
        print(f"{name:18} before {b:6.3f} s   after {a:6.3f} s   after/before {a / b:5.2f}")


if __name__ == "__main__":
    main()
