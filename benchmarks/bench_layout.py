"""Time the human table of a 50,000-row section at several widths (issue #14's layout engine).

Prints, per terminal width, the median of 5 runs of `render.tables.print_table` (plan + lines +
write, unstyled as a >PLAIN_ROWS section is) and, for reference, the plain aligned columns the
renderer used before the layout engine (no width fitting). Keys are 60-75 characters, so at 80
and 60 columns they are shortened (and checked distinct).

    python benchmarks/bench_layout.py [ROWS]
"""

from __future__ import annotations

import io
import statistics
import time

from rich.console import Console

from bufinspect.render import tables
from bufinspect.render.layout import KEY, LABEL, NUM, Column


def plain(console, header, rows, numeric=("size",)):
    """The pre-layout plain table: widths from the longest cell, nothing fitted."""
    widths = [max(len(h), *map(len, col)) for h, col in zip(header, zip(*rows))]
    just = [str.rjust if h in numeric else str.ljust for h in header]
    line = lambda cells: "  ".join(j(c, w) for j, c, w in zip(just, cells, widths)).rstrip()  # noqa: E731
    console.file.write("\n".join(line(r) for r in rows) + "\n")


def median(fn, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(n: int) -> None:
    rows = [[f"model.encoder.layers.{i // 40 + 1000}.block_{i % 40}.attention_projection.norm"
             ".running_mean", "[64]", "float32", "cpu", "256 B", "yes"] for i in range(n)]
    cols = [Column("key", KEY, 0), Column("shape", LABEL, 2), Column("dtype", LABEL, 1),
            Column("device", LABEL, 4), Column("size", NUM, 3), Column("persistent", LABEL, 5)]
    header = [c.name for c in cols]
    print(f"{n} rows; median of 5")
    for width in (200, 120, 80, 60):
        fitted = median(lambda: tables.print_table(
            Console(width=width, file=io.StringIO(), color_system=None), cols, rows))
        print(f"  {width:>3} columns: layout {fitted:.3f} s")
    old = median(lambda: plain(Console(width=200, file=io.StringIO()), header, rows))
    print(f"  pre-layout plain columns (any width, nothing fitted): {old:.3f} s")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rows", nargs="?", type=int, default=50_000)
    main(ap.parse_args().rows)
