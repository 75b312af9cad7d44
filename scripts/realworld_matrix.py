"""Build the real-model matrix (tests/realworld_helpers.py) and print, per saved file, how
bufinspect's roles compare with the live module: wrong definite roles, unknowns, readability.

    python scripts/realworld_matrix.py [-v] [NAME_SUBSTRING...]

Needs torch; torchvision, timm, transformers, peft and lightning where installed (missing
libraries are skipped and named).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import _pytest.outcomes  # noqa: E402  (need() skips through pytest's Skipped)

import realworld_helpers as rw  # noqa: E402


def main(argv: list[str]) -> int:
    verbose = "-v" in argv
    wanted = [a for a in argv if not a.startswith("-")]
    rows: list[rw.Score] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for case in rw.all_cases(folder, wanted, on_skip=lambda lib, why: print(
                f"skipped {lib}: {why}", file=sys.stderr)):
            rows.append(case)
            status = "ok" if case.readable else f"REFUSED: {case.error}"
            print(f"{case.case:46} tensors {case.tensors:5}  wrong {len(case.wrong):3}  "
                  f"unknown {len(case.unknown):4}  not in model {len(case.foreign):3}  {status}")
            if verbose:
                for line in case.wrong + case.unknown[:12] + [f"persistence: {k}" for k in
                                                               case.persistence]:
                    print("     ", line)
    calls: dict[str, int] = {}
    for r in rows:
        for name, _ in r.calls:
            calls[name] = calls.get(name, 0) + 1
    if calls:
        print("\ncalls torch.load would make (files): " + ", ".join(
            f"{n} ({c})" for n, c in sorted(calls.items(), key=lambda kv: -kv[1])))
    modules = [r for r in rows if ".module" in r.case]
    print(f"\n{len(rows)} files, {sum(r.tensors for r in rows)} tensors: "
          f"{sum(len(r.wrong) for r in rows)} wrong definite roles, "
          f"{sum(len(r.unknown) for r in rows)} unknown, "
          f"{sum(len(r.persistence) for r in rows)} wrong persistence; "
          f"whole-module pickles readable: {sum(r.readable for r in modules)} of {len(modules)}")
    return 1 if any(r.wrong for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
