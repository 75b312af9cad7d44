"""The compiled pickle pre-scan (bufinspect/formats/_prescan_native.c) against the Python walk
(`_prescan.scan_python`, the reference): the same end offset, the same -1/-2, the same refusal
message, on the hostile corpus, torch.save pickles of real modules, protocol 0-5 pickles of
varied objects, bombs, and generated opcode streams, truncations and mutations. The compiled
walk must never crash or leak on any bytes.

These tests call the compiled module directly, so they also run under BUFINSPECT_NO_KERNEL=1
(which only switches `_prescan.scan` to the Python walk); they skip when it was not built.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import stat
import struct
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bufinspect.formats import _prescan
from hostile import make_corpus as P

try:
    from bufinspect.formats import _prescan_native as native
except ImportError:  # built without a compiler: only the Python walk exists
    native = None

pytestmark = pytest.mark.skipif(native is None, reason="_prescan_native was not built")


def verdict(fn, data: bytes, start: int = 0):
    try:
        return fn(data, start)
    except _prescan.Refused as exc:
        return ("refused", str(exc))


def c_scan(data: bytes, start: int = 0) -> int:
    end = native.scan(data, start)
    if type(end) is str:
        raise _prescan.Refused(end)
    return end


def same(data: bytes, start: int = 0):
    """Both walks' verdict on `data` from `start`, asserted equal."""
    want = verdict(_prescan.scan_python, data, start)
    got = verdict(c_scan, data, start)
    assert got == want, (data[:200], start)
    return want


def same_chain(data: bytes, pickles: int = 6) -> None:
    """`same` on each pickle of `data` in turn (a legacy file holds several)."""
    start = 0
    for _ in range(pickles):
        end = same(data, start)
        if not isinstance(end, int) or end <= start or end >= len(data):
            return
        start = end


def _regular_files(root: Path):
    for p in sorted(root.rglob("*")):
        st_ = os.lstat(p)
        if stat.S_ISREG(st_.st_mode) and st_.st_size <= 64 << 20:
            yield p


def _blobs(path: Path):
    """The pickles (and non-pickles) a reader could hand the pre-scan from one corpus file."""
    data = path.read_bytes()
    yield data
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            for info in z.infolist():
                if info.file_size <= 8 << 20:
                    try:
                        yield z.read(info)
                    except Exception:  # a corrupt member: the corpus is built to have them
                        continue
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError):
        return


def test_hostile_corpus_same_verdicts(corpus):
    folder, cases = corpus
    seen = 0
    for case in cases.values():
        paths = [case.path] if case.path.is_file() else list(_regular_files(case.path)) \
            if case.path.is_dir() and not case.path.is_symlink() else []
        for path in paths:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue
            for blob in _blobs(path):
                same_chain(blob)
                if len(blob) < 1 << 16:  # and cut short at a few places
                    for cut in {1, 2, len(blob) // 3, len(blob) // 2, len(blob) - 1}:
                        same(blob[:cut])
                seen += 1
    assert seen > 100


BOMBS = {
    "deep key": P.PROTO2 + P.EMPTY_DICT + P._deep_tuple(5000) + P.NONE + P.SETITEM,
    "tuple tower key": P.PROTO2 + P.EMPTY_DICT + P._tuple_tower(40) + P.NONE + P.SETITEM,
    "five tower keys": P.PROTO2 + P.EMPTY_DICT + P._tuple_tower(22) + P.POP + P.MARK
    + b"".join(P.get(22) + P.i(k) for k in range(5)) + P.SETITEMS,
    "list tower": P.PROTO2 + P._list_tower(40, 0),
    "colliding keys": P.PROTO2 + P.EMPTY_DICT + P.MARK + b"".join(
        P._colliding_int(k) + P.NONE for k in range(1, 300)) + P.SETITEMS,
    "colliding set items": P.PROTO2 + P.call(P.glob("builtins", "set"), P.lst(*(
        P._colliding_int(k) for k in range(1, 300)))),
    "colliding frozenset": P.PROTO2 + P.MARK + b"".join(
        P._colliding_int(k) for k in range(1, 300)) + b"\x91",
    "colliding tuple keys": P.PROTO2 + P.EMPTY_DICT + P.MARK + b"".join(
        P._colliding_int(k) + b"\x85" + P.NONE for k in range(1, 300)) + P.SETITEMS,
    "colliding additems": P.PROTO2 + b"\x8f" + P.MARK + b"".join(
        P._colliding_int(k) for k in range(1, 300)) + b"\x90",
    "huge LONG1 then LONG4": P.PROTO2 + b"\x8a\xff" + b"\x01" * 255 + P.POP + b"\x8b"
    + struct.pack("<i", 4096) + b"\x01" * 4096,
    "huge text int": b"I" + b"9" * 900 + b"\n",
    "long text line": b"I" + b"1" * 1001 + b"\n",
    "memo slot": P.PROTO2 + P.NONE + b"r" + struct.pack("<I", 1 << 30),
    "text memo slot": P.NONE + b"p99999999999999999999999\n",
    "negative text memo": P.NONE + b"p-99999999999999999999999\n0g-99999999999999999999999\n",
    "many items": P.PROTO2 + P.EMPTY_LIST + P.MARK + P.NONE * 1000 + P.APPENDS,
    "build depth": P.PROTO2 + P.NONE + b"q\x00" + b"".join(
        P.NONE + P.get(0) + P.BUILD + b"q\x00" + P.POP for _ in range(1100)) + P.get(0)
    + b"\x85",
    "newobj_ex doubling": P.PROTO2 + P.NONE + b"q\x00" + b"".join(
        P.NONE + P.get(0) + P.get(0) + b"\x92" + b"q\x00" + P.POP for _ in range(70))
    + P.MARK + P.get(0) + P.TUPLE,
}


@pytest.mark.parametrize("what", sorted(BOMBS))
def test_bombs_same_verdicts(what):
    blob = BOMBS[what] + P.STOP
    same(blob)
    for cut in range(0, len(blob), max(1, len(blob) // 50)):
        same(blob[:cut])


def _objects():
    shared = [1, 2]
    rec: list = [0]
    rec.append(rec)
    d: dict = {"self": None}
    d["self"] = d
    big = [(1 << 61) - 1, 1 << 60, -(1 << 60), (1 << 60) - 1, -(1 << 60) + 1, 1 << 64,
           -(1 << 64), 1 << 2000, -(1 << 2047), 2 ** 63 - 1, -(2 ** 63), -1, -2, 0, 255, 256,
           65535, 65536, -129, 2 ** 31, -(2 ** 31)]
    floats = [0.0, -0.0, 1.5, -2.25, 1e308, 5e-324, math.inf, -math.inf, 1 / 3]
    return [
        None, True, False, big, floats, "text", "ü€𝄞", b"bytes", bytearray(b"ba"),
        (), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), tuple(range(20)), ((1, 2), (3, (4, 5))),
        {1: 2, (1, 2): 3, 1.5: "x", (1 << 70): 1, ((1 << 62), 2.5): None, "k": [1, 2]},
        {1, 2, 3}, frozenset({(1, 2), 3.5}), {frozenset({1}), (1 << 90)}, [shared, shared],
        (shared, shared), rec, d, collections.OrderedDict(a=1, b=[2]), complex(1, 2),
        range(3, 10, 2), slice(1, 5), {(i, float(i)): i for i in range(50)},
        set(range(300)), [[[[[]]]]], {"a": {"b": {"c": ({"d": 1},)}}},
        [(1 << 61) - 1] * 3, {k * ((1 << 61) - 1) for k in range(1, 20)},
    ]


@pytest.mark.parametrize("protocol", range(6))
def test_pickles_of_python_objects_same_verdicts(protocol):
    for obj in _objects():
        raw = pickle.dumps(obj, protocol=protocol)
        assert same(raw) == len(raw)
        for cut in range(0, len(raw), max(1, len(raw) // 20)):
            same(raw[:cut])


def test_out_of_band_buffers_same_verdicts():
    buf = pickle.PickleBuffer(b"abc")
    ro = pickle.PickleBuffer(memoryview(b"xyz").toreadonly())
    raw = pickle.dumps([buf, ro], protocol=5, buffer_callback=lambda b: False)
    assert same(raw) == len(raw)


def _torch_pickles():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    models = {
        "mlp": nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)),
        "convbn": nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.GroupNorm(2, 4)),
        "lstm": nn.LSTM(4, 8, num_layers=2),
        "encoder": nn.TransformerEncoderLayer(16, 2, 32),
    }
    out = []
    for name, model in models.items():
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        model(torch.zeros(1, 3, 8, 8) if name == "convbn" else
              torch.zeros(2, 3, 4) if name == "lstm" else
              torch.zeros(2, 3, 16) if name == "encoder" else torch.zeros(2, 4))[0].sum().backward()
        opt.step()
        ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3,
                "rng": torch.get_rng_state(), "shape": torch.Size([2, 3]),
                "metrics": {"loss": 0.25, "hist": [0.5, float("nan")]}}
        for kw in ({}, {"_use_new_zipfile_serialization": False}, {"pickle_protocol": 4}):
            buf = io.BytesIO()
            torch.save(ckpt, buf, **kw)
            out.append(buf.getvalue())
        buf = io.BytesIO()
        torch.save(model, buf)  # the whole module (classes by reference)
        out.append(buf.getvalue())
    return out


def test_torch_save_pickles_same_verdicts():
    for blob in _torch_pickles():
        if zipfile.is_zipfile(io.BytesIO(blob)):
            with zipfile.ZipFile(io.BytesIO(blob)) as z:
                for name in z.namelist():
                    if name.endswith(".pkl"):
                        raw = z.read(name)
                        assert same(raw) == len(raw)
                        for cut in range(0, len(raw), max(1, len(raw) // 40)):
                            same(raw[:cut])
        else:
            same_chain(blob)


# ---- generated opcode streams ---------------------------------------------------------------

_SIMPLE = [bytes([c]) for c in b"(.012NQRabdelostu})]\x85\x86\x87\x88\x89\x8f\x90\x91"
                                  b"\x92\x93\x94\x81\x97\x98"]
_U32 = st.integers(0, 40).map(lambda k: struct.pack("<I", k))


def _line(text: bytes) -> bytes:
    return text + b"\n"


_NUMBER_TEXT = st.one_of(
    st.integers(-(1 << 80), 1 << 80).map(lambda v: str(v).encode()),
    st.sampled_from([b"00", b"01", b"", b"x", b" 7 ", b"1_0", b"-0", b"+3", b"12L", b"L",
                     b"9" * 700, b"1" * 1001, b"-99999999999999999999999", b"inf", b"nan",
                     b"1e999", b"2.5", b"-1e-400", b"0x10"]))
_COLLIDING = st.integers(1, 6).map(lambda k: P._colliding_int(k))

_TOKEN = st.one_of(
    st.sampled_from(_SIMPLE),
    st.sampled_from(_SIMPLE),
    st.integers(0, 255).map(lambda b: b"K" + bytes([b])),
    st.integers(0, 12).map(lambda b: b"q" + bytes([b])),
    st.integers(0, 12).map(lambda b: b"h" + bytes([b])),
    st.integers(0, 12).map(lambda b: b"r" + struct.pack("<I", b)),
    st.integers(0, 12).map(lambda b: b"j" + struct.pack("<I", b)),
    st.binary(max_size=6).map(lambda t: b"X" + struct.pack("<I", len(t)) + t),
    st.binary(max_size=6).map(lambda t: b"\x8c" + bytes([len(t)]) + t),
    st.binary(min_size=8, max_size=8).map(lambda t: b"G" + t),
    st.floats(allow_nan=False).map(lambda f: b"G" + struct.pack(">d", f)),
    st.binary(max_size=12).map(lambda t: b"\x8a" + bytes([len(t)]) + t),
    st.binary(max_size=12).map(lambda t: b"\x8b" + struct.pack("<i", len(t)) + t),
    st.integers(-5, 300).map(lambda k: b"\x8b" + struct.pack("<i", k)),
    _COLLIDING,
    _NUMBER_TEXT.map(lambda t: b"I" + _line(t)),
    _NUMBER_TEXT.map(lambda t: b"L" + _line(t)),
    _NUMBER_TEXT.map(lambda t: b"F" + _line(t)),
    _NUMBER_TEXT.map(lambda t: b"p" + _line(t)),
    _NUMBER_TEXT.map(lambda t: b"g" + _line(t)),
    st.sampled_from([P.glob("builtins", "set"), P.glob("builtins", "frozenset"),
                     P.glob("__builtin__", "set"), P.glob("collections", "OrderedDict"),
                     b"cbuiltins\nset", b"i" + _line(b"m") + _line(b"n"), b"P" + _line(b"id"),
                     b"S'x'\n", b"Vx\n", b"\x82\x01", b"\x83\x01\x00", b"\x84\x01\x00\x00\x00",
                     b"\x95" + struct.pack("<Q", 9), b"\x80\x05", b"J\x01\x00\x00\x00",
                     b"M\x01\x00", b"U\x01a", b"C\x01a", b"T\x01\x00\x00\x00a",
                     b"B\x01\x00\x00\x00a", b"\x8d\x01" + b"\x00" * 7 + b"a",
                     b"\x8e\x01" + b"\x00" * 7 + b"a", b"\x96\x01" + b"\x00" * 7 + b"a",
                     b"\x8d" + b"\xff" * 8, b"X\xff\xff\xff\xff", b"\xff", b"\x99", b"z"]),
)


@settings(max_examples=1500, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(tokens=st.lists(_TOKEN, max_size=60), stop=st.booleans(), start=st.integers(0, 3))
def test_random_opcode_streams_same_verdicts(tokens, stop, start):
    blob = b"\x80\x02" + b"".join(tokens) + (b"." if stop else b"")
    same(blob, start)


def _corpus_of_valid():
    return [pickle.dumps(o, protocol=p) for o in _objects() for p in range(6)] + [
        P.wrap(P.lst(P.i(1), P._colliding_int(3), P.tup(P.i(2), P.s("x")))),
        BOMBS["five tower keys"] + P.STOP, BOMBS["colliding set items"] + P.STOP]


_VALID = _corpus_of_valid()


@settings(max_examples=1500, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, len(_VALID) - 1), edits=st.lists(
    st.tuples(st.sampled_from(["flip", "insert", "delete", "cut", "splice"]),
              st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=4))
def test_mutated_pickles_same_verdicts(which, edits):
    blob = bytearray(_VALID[which])
    for how, at, byte in edits:
        at = at % (len(blob) + 1)
        if how == "flip" and at < len(blob):
            blob[at] = byte
        elif how == "insert":
            blob[at:at] = bytes([byte])
        elif how == "delete":
            del blob[at:at + 1 + byte % 4]
        elif how == "cut":
            del blob[at:]
        elif how == "splice":
            other = _VALID[byte % len(_VALID)]
            blob[at:at] = other[byte % max(1, len(other)):][:20]
    same(bytes(blob))


@settings(max_examples=500, deadline=None, database=None)
@given(blob=st.binary(max_size=300), start=st.integers(0, 400))
def test_random_bytes_same_verdicts(blob, start):
    same(blob, start)


def test_start_offsets_and_buffers():
    raw = pickle.dumps({"a": [1, 2]}, protocol=2)
    blob = b"junk" + raw + raw
    assert same(blob, 4) == 4 + len(raw)
    assert same(blob, 4 + len(raw)) == len(blob)
    assert same(blob, len(blob)) == -1
    assert c_scan(blob, 1 << 62) == -1
    assert _prescan.scan(bytearray(raw)) == _prescan.scan(memoryview(raw)) == len(raw)


def test_no_leaks_on_any_path():
    """Every verdict frees what the walk built (PyMem allocations are traced)."""
    inputs = [b + P.STOP for b in BOMBS.values()] + _VALID[:40] + [
        b"", b"\x80\x02(", b"\x80\x02]q\x00h\x00h\x05", b"\x80\x02N\x8a\x09" + b"\x01" * 9 + b"."]
    for blob in inputs:  # warm up caches (interned strings, free lists)
        verdict(c_scan, blob)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(20):
            for blob in inputs:
                verdict(c_scan, blob)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 64 << 10


def test_scan_uses_the_compiled_walk_unless_disabled(monkeypatch):
    """`BUFINSPECT_NO_KERNEL=1` switches to the Python walk at once (no reset needed)."""
    _prescan.native()
    monkeypatch.setenv(_prescan.DISABLE_ENV, "1")
    try:
        assert _prescan.native() is None
        monkeypatch.setenv(_prescan.DISABLE_ENV, "0")
        assert _prescan.native() is native
        _prescan.reset()
        assert _prescan.native() is native
        calls = []
        monkeypatch.setattr(native, "scan", lambda d, s: calls.append(s) or len(d), raising=False)
        assert _prescan.scan(b"\x80\x02N.") == 4 and calls == [0]
    finally:
        monkeypatch.undo()
        _prescan.reset()


# ---- generated bombs: the pieces of each attack, at sizes around each limit ------------------

def _piece(kind: str, size: int, memo: int) -> list[bytes]:
    """Items (each one pushes one value) for a container, by kind of attack."""
    if kind == "colliding ints":  # k * (2**61 - 1): all hash to 0
        return [P._colliding_int(k) for k in range(1, size)]
    if kind == "colliding tuples":
        return [P._colliding_int(k) + b"\x85" for k in range(1, size)]
    if kind == "mixed hash 1":  # 2.0**(61k) and 1 + k * (2**61 - 1) all hash to 1
        floats = [b"G" + struct.pack(">d", 2.0 ** (61 * k)) for k in range(17)]
        ints = []
        for k in range(1, size):
            v = 1 + k * ((1 << 61) - 1)
            raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            ints.append(b"\x8a" + bytes([len(raw)]) + raw)
        return floats + ints
    if kind == "deep":
        return [P._deep_tuple(size)]
    if kind == "deep list":
        return [P.EMPTY_LIST * size + P.APPEND * (size - 1)]
    if kind == "tower":
        levels = min(size % 40, 250 - memo)
        return [P._tuple_tower(levels, memo)] + [P.get(memo + levels)] * (size % 7)
    if kind == "list tower":
        levels = min(size % 40, 250 - memo)
        return [P._list_tower(levels, memo)]
    return [P.i(k) for k in range(size)]  # atoms


_KINDS = ["colliding ints", "colliding tuples", "mixed hash 1", "deep", "deep list", "tower",
          "list tower", "atoms"]


def _holder(how: str, items: list[bytes]) -> bytes:
    body = b"".join(items)
    if how == "dict":
        return P.EMPTY_DICT + P.MARK + b"".join(it + P.NONE for it in items) + P.SETITEMS
    if how == "dict op":
        return P.MARK + b"".join(it + P.NONE for it in items) + b"d"
    if how == "setitem":
        return P.EMPTY_DICT + b"".join(it + P.NONE + P.SETITEM for it in items)
    if how == "set()":
        return P.glob("builtins", "set") + P.MARK + P.EMPTY_LIST + P.MARK + body + P.APPENDS \
            + P.TUPLE + P.REDUCE
    if how == "frozenset()":
        return P.glob("builtins", "frozenset") + P.lst() + b"".join(
            it + P.APPEND for it in items) + b"\x85" + P.REDUCE
    if how == "FROZENSET":
        return P.MARK + body + b"\x91"
    if how == "ADDITEMS":
        return b"\x8f" + P.MARK + body + b"\x90"
    if how == "tuple":
        return P.MARK + body + P.TUPLE
    return P.EMPTY_LIST + P.MARK + body + P.APPENDS  # list


_HOW = ["dict", "dict op", "setitem", "set()", "frozenset()", "FROZENSET", "ADDITEMS", "tuple",
        "list"]


@settings(max_examples=400, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(parts=st.lists(st.tuples(st.sampled_from(_KINDS), st.integers(0, 270).map(
    lambda k: k if k < 240 else 1010 - 270 + k), st.sampled_from(_HOW)), min_size=1,
    max_size=4), nest=st.sampled_from(_HOW))
def test_generated_bombs_same_verdicts(parts, nest):
    """Colliding keys, deep nesting and shared towers around each limit (256 collisions, 1000
    deep), held by each kind of container, themselves held by one more."""
    items = [_holder(how, _piece(kind, size, 8 + 20 * j)) for j, (kind, size, how)
             in enumerate(parts)]
    blob = P.PROTO2 + _holder(nest, items) + P.STOP
    same(blob)


@pytest.mark.parametrize("memoizes", [0, 100, 4200, 6000])
@pytest.mark.parametrize("slot", [300, 5000, 70_000])
def test_memo_slots_sparse_then_dense(slot, memoizes):
    """A slot far beyond the ones in use is kept aside, then found once the memo's array grows
    over it (a 999-deep tuple: found, two more levels are refused; lost, the walk stops)."""
    pad = P.s("x" * 80_000) + P.POP
    deep = P._deep_tuple(999)
    head = P.PROTO2 + pad + deep + b"r" + struct.pack("<I", slot) + P.POP
    fill = (P.NONE + b"\x94" + P.POP) * memoizes
    for tail in (b"j" + struct.pack("<I", slot) + b"\x85\x85",
                 b"j" + struct.pack("<I", slot) + P.POP + P.NONE + b"\x94" + b"\x85",
                 P.NONE + b"r" + struct.pack("<I", slot) + b"j" + struct.pack("<I", slot)):
        same(head + fill + tail + P.STOP)
        same(head + fill + b"g%d\n\x85\x85" % slot + P.STOP)
