"""The fused kernels (bufinspect/_kernel.c, its torch twins) against the numpy path and a
float64 reference; the CLI gives the same reports with the compiled kernel and without it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bufinspect import kernels
from bufinspect.numeric import DiffAccumulator, StatsAccumulator, _fp8_table, _table, as_float

needs_kernel = pytest.mark.skipif(kernels.native() is None,
                                  reason="bufinspect._kernel was not built (no compiler)")

rng = np.random.default_rng(3)
N = 100_003  # several blocks, odd


def _bf16(f: np.ndarray) -> np.ndarray:
    b = f.astype(np.float32).view(np.uint32)
    out = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(f), 0x7FC0, out).astype(np.uint16)


def _fp8(f: np.ndarray, dtype: str) -> np.ndarray:
    table = _fp8_table(dtype).astype(np.float64)
    finite = np.flatnonzero(np.isfinite(table))
    order = finite[np.argsort(table[finite])]
    idx = np.clip(np.searchsorted(table[order], f), 0, order.size - 1)
    out = order[idx].astype(np.uint8)
    out[np.isnan(f)] = np.flatnonzero(np.isnan(table))[0]
    if np.isinf(table).any():
        out[np.isposinf(f)] = np.flatnonzero(np.isposinf(table))[0]
    return out


def raw(f: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return _bf16(f)
    if dtype.startswith("float8"):
        return _fp8(f, dtype)
    return f.astype(np.dtype(dtype))


DTYPES = ["float32", "float64", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"]


def pair(dtype: str, nonfinite: bool):
    a = rng.standard_normal(N) * 0.5
    b = a + rng.standard_normal(N) * 1e-2
    b[::5] = a[::5]  # equal elements
    a[100:200] = 0.0
    b[150:250] = 0.0  # |b| = 0 with a difference: max_rel is inf
    if nonfinite:
        a[[7, 9, 11, 5000]] = [np.nan, np.inf, -np.inf, np.nan]
        b[[7, 9, 11, 6000]] = [np.nan, np.inf, 1.0, np.inf]  # same NaN, same Inf, odd, odd
        a[70_000] = np.nan
    return raw(a, dtype), raw(b, dtype)


def reference_diff(ra, rb, dtype, rtol, atol) -> dict:
    """The numpy path's rules, written out on whole float64 arrays."""
    x, y = as_float(ra, dtype).astype(np.float64), as_float(rb, dtype).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        d, ab = np.abs(x - y), np.abs(y)
        same = (x == y) | (np.isnan(x) & np.isnan(y))
        odd = ~same & ~np.isfinite(d)
        d[same | odd] = 0
        ab[odd | ~np.isfinite(ab)] = 0
        x = np.where(odd | same & ~np.isfinite(x), 0, x)
        y = np.where(odd | same & ~np.isfinite(y), 0, y)
        rel = np.where(d > 0, d / ab, 0)
    return {"elems": x.size, "max_abs": d.max(), "max_rel": rel.max(), "sum_abs": d.sum(),
            "sum_d2": (d * d).sum(), "aa": (x * x).sum(), "ab": (x * y).sum(),
            "bb": (y * y).sum(), "mismatched": int((d > ab * rtol + atol).sum() + odd.sum()),
            "nonfinite": int(odd.sum())}


EXACT_DIFF = ("elems", "max_abs", "max_rel", "mismatched", "nonfinite")


def assert_diff(got: dict, want: dict):
    for k, v in want.items():
        if k in EXACT_DIFF:
            assert got[k] == v, k
        else:
            assert got[k] == pytest.approx(v, rel=1e-12, abs=1e-300), k


def numpy_diff(ra, rb, dtype, rtol, atol, monkeypatch) -> dict:
    monkeypatch.setattr(kernels, "_native", None)  # the numpy path
    acc = DiffAccumulator(rtol, atol)
    for i in range(0, ra.size, 40_000):
        acc.add(ra[i: i + 40_000], rb[i: i + 40_000], dtype)
    kernels.reset()
    return {"elems": acc.diff_elems, "max_abs": acc.max_abs, "max_rel": acc.max_rel,
            "sum_abs": acc.sum_abs, "sum_d2": acc.sum_d2, "aa": acc.aa, "ab": acc.ab,
            "bb": acc.bb, "mismatched": acc.mismatched, "nonfinite": acc.nonfinite}


@pytest.mark.parametrize("nonfinite", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_numpy_path_matches_reference(dtype, nonfinite, monkeypatch):
    ra, rb = pair(dtype, nonfinite)
    assert_diff(numpy_diff(ra, rb, dtype, 1e-3, 1e-4, monkeypatch),
                reference_diff(ra, rb, dtype, 1e-3, 1e-4))


@needs_kernel
@pytest.mark.parametrize("nonfinite", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_diff_matches_reference(dtype, nonfinite):
    ra, rb = pair(dtype, nonfinite)
    want = reference_diff(ra, rb, dtype, 1e-3, 1e-4)
    got = kernels.diff_partial(ra, rb, dtype, 1e-3, 1e-4, table=_table(dtype))._asdict()
    assert_diff(got, want)
    # merged from pieces of any size, unaligned starts included: the same numbers
    acc = DiffAccumulator(1e-3, 1e-4)
    for i in range(0, N, 7777):
        acc.add(ra[i: i + 7777], rb[i: i + 7777], dtype)
    assert (acc.max_abs, acc.max_rel, acc.mismatched, acc.nonfinite) == (
        want["max_abs"], want["max_rel"], want["mismatched"], want["nonfinite"])
    assert acc.sum_d2 == pytest.approx(want["sum_d2"], rel=1e-12)


@needs_kernel
def test_tolerance_boundary_is_exact():
    """Elements exactly at |a-b| = atol + rtol*|b| are not mismatched (no FMA rounding)."""
    b = rng.standard_normal(10_000)
    a = b + (1e-8 + 1e-5 * np.abs(b))  # some land on the boundary, some a rounding off it
    want = reference_diff(a, b, "float64", 1e-5, 1e-8)
    assert kernels.diff_partial(a, b, "float64", 1e-5, 1e-8, table=_table("float64")).mismatched == want["mismatched"]


def reference_stats(r, dtype) -> dict:
    x = as_float(r, dtype).astype(np.float64)
    f = x[np.isfinite(x)]
    return {"n": f.size, "min": f.min() if f.size else math.inf,
            "max": f.max() if f.size else -math.inf, "nan": int(np.isnan(x).sum()),
            "inf": int(np.isinf(x).sum()), "zeros": int((x == 0).sum()),
            "neg": int((f < 0).sum()), "mean": f.mean() if f.size else 0.0,
            "m2": float(((f - f.mean()) ** 2).sum()) if f.size else 0.0}


DATA = {
    "weights": lambda: rng.standard_normal(N) * 0.02,
    "offset 1e4": lambda: 1e4 + rng.standard_normal(N) * 0.5,
    "zeros and signs": lambda: np.where(rng.random(N) < 0.1, -0.0, rng.standard_normal(N)),
    "nonfinite": lambda: np.where(rng.random(N) < 0.01, np.nan,
                                  np.where(rng.random(N) < 0.01, -np.inf, rng.random(N))),
    "all nan": lambda: np.full(N, np.nan),
}


@needs_kernel
@pytest.mark.parametrize("name", list(DATA))
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_stats_match_reference(dtype, name):
    r = raw(DATA[name](), dtype)
    want = reference_stats(r, dtype)
    got = kernels.stats_partial(r, dtype, table=_table(dtype))
    for k in ("n", "min", "max", "nan", "inf", "zeros", "neg"):
        assert getattr(got, k) == want[k], k
    if dtype in ("float32", "float64"):  # float64 sums
        assert got.mean == pytest.approx(want["mean"], rel=1e-12, abs=1e-15)
        assert got.m2 == pytest.approx(want["m2"], rel=1e-10, abs=1e-15)
    elif want["n"]:  # float32 partials of 256 terms: the numpy path's tolerance
        std = math.sqrt(want["m2"] / want["n"])
        assert abs(got.mean - want["mean"]) <= 1e-7 * (abs(want["mean"]) + std)
        assert got.m2 == pytest.approx(want["m2"], rel=2e-7)
    scan = kernels.stats_partial(r, dtype, moments=False, table=_table(dtype))
    assert scan[3:] == got[3:] and scan.n == got.n
    for part, moments in ((got, True), (scan, False)):  # neg left 0 when not asked for
        assert kernels.stats_partial(r, dtype, moments, _table(dtype),
                                     negatives=False) == part._replace(neg=0)


def _bf16_layouts():
    """Word patterns the bfloat16 word kernel decides on by integer compares, per 2048 block."""
    n = 32 * 2048 + 77  # over 65,536 (smaller pieces sum in float64); a partial last block
    w = _bf16(rng.standard_normal(n) * 0.02)
    yield "mixed", w
    yield "all positive", _bf16(rng.random(n) + 1e-3)
    yield "all negative", _bf16(-rng.random(n) - 1e-3)
    yield "negative zeros, positives", np.where(rng.random(n) < 0.2, 0x8000, _bf16(rng.random(n)))
    yield "positive zeros, negatives", np.where(rng.random(n) < 0.2, 0, _bf16(-rng.random(n)))
    yield "only zeros", np.where(rng.random(n) < 0.5, 0, 0x8000).astype(np.uint16)
    yield "subnormals", rng.integers(0, 0x80, n).astype(np.uint16) | (rng.integers(0, 2, n) << 15)
    yield "largest finite", np.array([0x7F7F, 0xFF7F] * (n // 2), np.uint16)  # float32 overflow
    yield "1e30 spread", _bf16(1e30 * rng.standard_normal(n))  # squares overflow float32
    yield "1e-11 spread", _bf16(1e-11 * rng.standard_normal(n))  # float32 squares ~1e-22
    yield "1e-20 spread", _bf16(1e-20 * rng.standard_normal(n))  # they would underflow
    yield "1 + 0.01 spread", _bf16(1 + 0.01 * rng.standard_normal(n))  # |mean| > std: centred
    yield "1e4 + 0.5 spread", _bf16(1e4 + 0.5 * rng.standard_normal(n))
    yield "tiny and ones", np.where(rng.random(n) < 0.01, _bf16(np.ones(n)),  # inexact squares
                                    _bf16(1e-25 * rng.standard_normal(n)))
    for pos in (0, 2047, 2048, n - 1):  # non-finite values at block edges
        for word in (0x7F80, 0xFF80, 0x7FC0, 0xFFC1):
            v = w.copy()
            v[pos] = word
            yield f"{word:#x} at {pos}", v


@needs_kernel
@pytest.mark.parametrize("name,words", list(_bf16_layouts()))
def test_bfloat16_word_kernel_matches_reference(name, words):
    """Large bfloat16 pieces run on raw words (integer extremes, float32 lane sums): the counts
    and extremes exact, the moments within the float32-partial tolerance, whatever the piece's
    start (an odd element offset) or length."""
    words = words.astype(np.uint16)
    for sl in (slice(None), slice(1, None), slice(3, -5)):
        r = words[sl]
        want = reference_stats(r, "bfloat16")
        for moments in (True, False):
            got = kernels.stats_partial(r, "bfloat16", moments)
            for k in ("n", "min", "max", "nan", "inf", "zeros", "neg"):
                assert getattr(got, k) == want[k], (name, moments, k)
            # without the count of negatives (show --stats): the same numbers, neg left 0
            assert (kernels.stats_partial(r, "bfloat16", moments, negatives=False)
                    == got._replace(neg=0)), (name, moments)
            if moments and want["n"]:
                std = math.sqrt(want["m2"] / want["n"])
                assert abs(got.mean - want["mean"]) <= 1e-7 * (abs(want["mean"]) + std), name
                assert got.m2 == pytest.approx(want["m2"], rel=2e-7, abs=1e-300), name
    # check's scan of small pieces (any size) also runs on words: the float64 loop's answer
    for size in (1, 2, 31, 32, 33, 100):
        r = words[:size]
        assert (kernels.stats_partial(r, "bfloat16", False)[3:]
                == kernels.stats_partial(r, "bfloat16", True)[3:]), (name, size)


@needs_kernel
def test_every_half_and_bfloat16_value_decodes_like_numpy():
    for dtype, words in (("float16", np.arange(65536, dtype=np.uint16).view(np.float16)),
                         ("bfloat16", np.arange(65536, dtype=np.uint16))):
        with np.errstate(invalid="ignore"):
            want = as_float(words, dtype).astype(np.float64)
        for i in range(0, 65536, 97):  # one element per call: min = max = the value
            st = kernels.stats_partial(words[i: i + 1], dtype, table=_table(dtype))
            if np.isfinite(want[i]):
                assert st.min == want[i] == st.max, (dtype, i)
            else:
                assert (st.nan, st.inf) == ((1, 0) if np.isnan(want[i]) else (0, 1)), (dtype, i)
        # and all at once: the sums see every value
        st = kernels.stats_partial(words, dtype, table=_table(dtype))
        fin = want[np.isfinite(want)]
        assert st.n == fin.size and st.mean == pytest.approx(fin.mean(), abs=1e-7 * fin.std())


@needs_kernel
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_stats_accumulator_paths_agree(dtype, monkeypatch):
    r = raw(DATA["offset 1e4"](), dtype)
    fused = StatsAccumulator("float")
    for i in range(0, N, 30_001):
        fused.add_raw(r[i: i + 30_001], dtype)
    monkeypatch.setattr(kernels, "_native", None)
    plain = StatsAccumulator("float")
    for i in range(0, N, 30_001):
        plain.add_raw(r[i: i + 30_001], dtype)
    a, b = fused.result(), plain.result()
    assert (a.min, a.max, a.nan, a.inf, a.zeros) == (b.min, b.max, b.nan, b.inf, b.zeros)
    assert a.mean == pytest.approx(b.mean, rel=1e-9) and a.std == pytest.approx(b.std, rel=1e-6)


# ---- the torch twins (the GPU path), run on torch's CPU device -------------------------------

@needs_kernel
@pytest.mark.parametrize("nonfinite", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_torch_twins_match_kernel(dtype, nonfinite):
    torch = pytest.importorskip("torch")
    from bufinspect.scan import gpu

    ra, rb = pair(dtype, nonfinite)

    def t64(r):
        return torch.from_numpy(as_float(r, dtype).astype(np.float64))

    got = gpu.diff_partial(t64(ra), t64(rb), 1e-3, 1e-4)._asdict()
    assert_diff(got, reference_diff(ra, rb, dtype, 1e-3, 1e-4))
    st = gpu.stats_from_row(gpu.stats_row(t64(ra)).tolist())
    want = kernels.stats_partial(ra, dtype, table=_table(dtype))
    assert st[:1] + st[3:] == want[:1] + want[3:]
    std = math.sqrt(want.m2 / want.n)
    assert abs(st.mean - want.mean) <= 1e-7 * (abs(want.mean) + std)
    assert st.m2 == pytest.approx(want.m2, rel=2e-7)


# ---- whole commands: compiled kernel vs numpy path, --jobs -----------------------------------

def _checkpoints(tmp_path: Path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(300, 400), torch.nn.BatchNorm1d(400),
                              torch.nn.Linear(400, 300))
    sa = {k: v.clone() for k, v in net.state_dict().items()}
    sa["big.weight"] = torch.randn(700, 1000, generator=g)
    sa["big.bf16"] = torch.randn(500, 1000, generator=g).bfloat16()
    sa["big.half"] = torch.randn(300, 1000, generator=g).half()
    sb = {}
    for k, v in sa.items():
        if v.is_floating_point():
            v = v + 1e-3 * torch.randn(v.shape, generator=g).to(v.dtype)
        sb[k] = v.clone()
    sb["big.weight"][3, 4] = float("nan")
    sb["big.bf16"][0, :10] = float("inf")
    torch.save(sa, tmp_path / "a.pt")
    save_file(sb, str(tmp_path / "b.safetensors"))
    return tmp_path / "a.pt", tmp_path / "b.safetensors"


def _close(x, y, path="$"):
    if isinstance(x, dict):
        assert x.keys() == y.keys(), path
        if isinstance(x.get("std"), float) and isinstance(y.get("std"), float):
            # the numpy stats path sums float32 partials (test_stats_kernel.py's tolerance)
            scale = 1e-7 * (abs(y["mean"]) + y["std"])
            assert x["mean"] == pytest.approx(y["mean"], abs=scale), path
            assert x["std"] == pytest.approx(y["std"], rel=1e-7), path
            x, y = ({k: v for k, v in d.items() if k not in ("mean", "std")} for d in (x, y))
        for k in x:
            _close(x[k], y[k], f"{path}.{k}")
    elif isinstance(x, list):
        assert len(x) == len(y), path
        for i, (u, v) in enumerate(zip(x, y)):
            _close(u, v, f"{path}[{i}]")
    elif isinstance(x, float) and isinstance(y, float):
        assert x == pytest.approx(y, rel=1e-9, abs=1e-15), path
    else:
        assert x == y, path


@pytest.mark.parametrize("args,code", [(["diff", "--all"], 1), (["show", "--stats"], 0),
                                       (["check"], 1)])
def test_reports_same_with_and_without_kernel(tmp_path, cli_json, monkeypatch, args, code):
    a, b = _checkpoints(tmp_path)
    files = [a, b] if args[0] == "diff" else [b]
    extra = ["--device", "cpu"] if args[0] == "check" else []
    fused = [cli_json(*args, *files, *extra, "--jobs", str(j), code=code)
             for j in (1, 3)]
    monkeypatch.setenv(kernels.DISABLE_ENV, "1")
    kernels.reset()
    try:
        assert kernels.native() is None
        plain = cli_json(*args, *files, *extra, "--jobs", "2", code=code)
    finally:
        monkeypatch.delenv(kernels.DISABLE_ENV)
        kernels.reset()
    assert fused[0] == fused[1]  # --jobs never changes a report
    _close(fused[0], plain)


@pytest.mark.slow
def test_install_without_a_compiler_succeeds(tmp_path):
    """setup.py marks the extensions optional: with no working compiler the build still
    succeeds and leaves no module behind (bufinspect then runs its numpy path and the Python
    pickle pre-scan)."""
    pytest.importorskip("setuptools", minversion="77")  # pyproject's build requirement
    root = Path(__file__).resolve().parents[1]
    env = {"CC": "false", "LDSHARED": "false", "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, str(root / "setup.py"), "-q", "build_ext",
                          "--build-lib", str(tmp_path / "lib"), "--build-temp",
                          str(tmp_path / "tmp")], cwd=root, env=env, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert not list((tmp_path / "lib").rglob("_kernel*"))
    assert not list((tmp_path / "lib").rglob("_prescan_native*"))


def test_gpu_diff_path_on_torch_cpu_matches(tmp_path, monkeypatch):
    """`diff --device cuda` runs `scan.gpu.diff_kernel`; on torch's CPU device it must give the
    CPU kernel's report (a GPU runs the same code: tests/test_diff.py's cuda test)."""
    pytest.importorskip("torch")
    import bufinspect
    from bufinspect.scan import gpu, sweep

    a, b = _checkpoints(tmp_path)
    cpu = bufinspect.diff(str(a), str(b), scope="all", device="cpu").to_dict()
    monkeypatch.setattr(sweep, "diff_kernel", lambda: gpu.diff_kernel("cpu"))
    monkeypatch.setattr(sweep, "resolve_device", lambda device: device)
    twin = bufinspect.diff(str(a), str(b), scope="all", device="cuda").to_dict()
    assert twin["device"] == "cuda:0"
    twin["device"] = cpu["device"]
    _close(twin, cpu)


# ---- raw stream pieces (memoryviews, no numpy) ------------------------------------------------

def _planted_entries(tmp_path):
    pytest.importorskip("torch")
    import bufinspect
    from helpers import planted

    planted(tmp_path / "planted.pt")  # every float dtype, NaN/Inf, a strided view, > a chunk
    return list(bufinspect.load(str(tmp_path / "planted.pt")).entries)


@pytest.mark.parametrize("kernel", [True, False])
def test_raw_pieces_give_the_same_bytes_and_numbers(tmp_path, monkeypatch, kernel):
    """`stream.pieces(raw=True)` (memoryviews the fused kernel takes as they are) yields the
    same pieces and bytes as the numpy views, and every accumulator fed them gives the same
    result, the kernel's or (without it, converted back to arrays) the numpy path's."""
    from bufinspect.formats import stream
    from bufinspect.numeric import RangeAccumulator
    from bufinspect.scan.stats import stats_kind

    if not kernel:
        monkeypatch.setattr(kernels, "_native", None)
    entries = _planted_entries(tmp_path)
    got = [(e.key, first, bytes(v)) for e, first, v in stream.pieces(entries, 1 << 20,
                                                                       prefetch=False, raw=True)]
    want = [(e.key, first, a.tobytes()) for e, first, a in stream.pieces(entries, 1 << 20,
                                                                          prefetch=False)]
    assert got == want and len(got) > len(entries) / 2

    def feed(raw: bool):
        stats: dict[str, StatsAccumulator] = {}
        ranges: dict[str, RangeAccumulator] = {}
        for e, _, arr in stream.pieces(entries, 1 << 20, prefetch=False, raw=raw):
            kind = stats_kind(e)
            if kind is not None:
                stats.setdefault(e.key, StatsAccumulator(kind)).add_raw(arr, e.dtype)
            if kind in ("float", "complex"):
                ranges.setdefault(e.key, RangeAccumulator()).add_raw(arr, e.dtype, True)
        return ({k: a.result() for k, a in stats.items()},
                {k: a.result() for k, a in ranges.items()})

    assert feed(True) == feed(False)
    kernels.reset()


@needs_kernel
def test_stats_and_check_import_no_numpy(tmp_path):
    """With the fused kernel, `show --stats` and `check` stream raw bytes into it: numpy (~0.1 s
    of start-up) is never imported for a float checkpoint."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    save_file({"w": torch.randn(300, 1000).bfloat16(), "b": torch.randn(1000)},
              str(tmp_path / "m.safetensors"))
    code = ("import sys; from bufinspect.cli import main; sys.argv = ['bufinspect'] + "
            "sys.argv[1:]\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('numpy' in sys.modules, file=sys.stderr)")
    for args in (["show", "--stats"], ["check", "--device", "cpu"]):
        res = subprocess.run([sys.executable, "-c", code, *args, str(tmp_path / "m.safetensors"),
                              "--format", "json", "--jobs", "2"], capture_output=True,
                             text=True, env={**os.environ, kernels.DISABLE_ENV: ""})
        assert res.stderr.strip().splitlines()[-1] == "False", (args, res.stderr[-2000:])
        assert json.loads(res.stdout)["command"] == args[0]
