"""Longer fuzzing than CI runs: mutate real samples and hostile-corpus files, feed them to
`bufinspect.load`, and stop on any exception that is not a BufinspectError, on a payload that
ran, or on an input that takes longer than --timeout seconds. Not run in CI.

    python scripts/fuzz.py                       # plain random mutation loop, 60 s
    python scripts/fuzz.py --seconds 3600 --seed 7
    python scripts/fuzz.py --atheris             # coverage-guided, if `pip install atheris` works

A failing input is written to fuzz-crashes/ (or --out) with the exception beside it.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import bufinspect  # noqa: E402


class Hang(BaseException):
    pass


def _alarm(*_):
    raise Hang()


def seeds(work: Path) -> list[tuple[str, bytes]]:
    """Real samples plus the hostile corpus (regenerated into `work`)."""
    from hostile import make_corpus

    out = [(p.name, p.read_bytes()) for p in sorted((ROOT / "sample_checkpoints").iterdir())
           if p.suffix in (".pt", ".safetensors")]
    for c in make_corpus.build(work / "corpus"):
        if c.path.is_file() and not c.bomb:
            out.append((c.path.name, c.path.read_bytes()))
    return out


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if not out:
            break
        at = rng.randrange(len(out))
        kind = rng.random()
        if kind < 0.4:
            out[at] ^= 1 << rng.randrange(8)
        elif kind < 0.6:
            out[at] = rng.choice([0, 0xFF, 0x80, 0x7F, ord("("), ord("R"), ord("b"), ord(".")])
        elif kind < 0.75:
            out[at:at] = rng.randbytes(rng.randint(1, 16))
        elif kind < 0.9:
            del out[at: at + rng.randint(1, 64)]
        else:
            src = rng.randrange(len(out))
            out[at:at] = out[src: src + rng.randint(1, 256)]
    return bytes(out)


def check(path: Path, timeout: int, sentinels: Path) -> str | None:
    """None when `load` behaves; otherwise what went wrong."""
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout)
    try:
        bufinspect.load(str(path))
    except bufinspect.BufinspectError:
        pass
    except Hang:
        return f"still running after {timeout} s"
    except BaseException:
        return traceback.format_exc()
    finally:
        signal.alarm(0)
    if any(sentinels.iterdir()):
        return "a payload ran: " + ", ".join(p.name for p in sentinels.iterdir())
    return None


def save(out: Path, name: str, data: bytes, why: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{int(time.time())}-{name}"
    (out / stem).write_bytes(data)
    (out / f"{stem}.txt").write_text(why)
    print(f"FOUND {out / stem}: {why.strip().splitlines()[-1]}", flush=True)


def plain(args: argparse.Namespace, work: Path) -> int:
    rng = random.Random(args.seed)
    corpus = seeds(work)
    sentinels = work / "corpus" / "sentinels"
    target = work / "input"
    end = time.time() + args.seconds
    runs = found = 0
    while time.time() < end:
        name, data = rng.choice(corpus)
        data = mutate(rng, data)
        target = target.with_suffix(Path(name).suffix or ".pt")
        target.write_bytes(data)
        why = check(target, args.timeout, sentinels)
        runs += 1
        if why:
            found += 1
            save(args.out, name, data, why)
    print(f"{runs} inputs, {found} problems, {runs / args.seconds:.0f}/s", flush=True)
    return 1 if found else 0


def with_atheris(args: argparse.Namespace, work: Path) -> int:
    import atheris  # noqa: F401 - only with --atheris

    corpus = seeds(work)
    sentinels = work / "corpus" / "sentinels"

    def one(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        name, base = corpus[fdp.ConsumeIntInRange(0, len(corpus) - 1)]
        blob = mutate(random.Random(fdp.ConsumeInt(4)), base) if fdp.ConsumeBool() \
            else fdp.ConsumeBytes(fdp.remaining_bytes())
        target = (work / "input").with_suffix(Path(name).suffix or ".pt")
        target.write_bytes(blob)
        why = check(target, args.timeout, sentinels)
        if why:
            save(args.out, name, blob, why)
            raise RuntimeError(why)

    atheris.instrument_all()
    atheris.Setup([sys.argv[0], f"-max_total_time={args.seconds}"], one)
    atheris.Fuzz()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "little"))
    ap.add_argument("--timeout", type=int, default=20, help="per input, seconds")
    ap.add_argument("--out", type=Path, default=Path("fuzz-crashes"))
    ap.add_argument("--atheris", action="store_true")
    args = ap.parse_args()
    print(f"seed {args.seed}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bufinspect-fuzz-") as tmp:
        return (with_atheris if args.atheris else plain)(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
