"""The .pt listing fast paths of #16 give what their reference paths give: the unpickler's
one-pass checks (`_strided`, `storage_from_pid`) against the full checks, the locator against a
plain one built from `ViewBudget` and `data_span`, the zip storage resolver against
`data_span` (also on corrupted records), and the bulk member-name check against the per-name
one. Results and error messages alike."""

from __future__ import annotations

import io
import math
import pickle

import pytest

from bufinspect.errors import InputError
from bufinspect.formats import _torch_common, _unpickle, _walk, torch_zip
from bufinspect.formats._unpickle import DTypeRef, StorageRef, StorageType, TensorRef, _Safe
from bufinspect.model import TensorData

torch = pytest.importorskip("torch")

S = StorageRef("0", "float32", "cpu", 16)
UNTYPED = StorageRef("1", None, "cpu", 64)
BIG = 1 << 31


def _outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except Exception as exc:  # the type and message are part of the behaviour
        return (type(exc).__name__, str(exc))


@pytest.mark.parametrize("args", [
    (S, 0, (4, 4), (4, 1), None, False),
    (S, 3, (), (), None, True),
    (S, 0, (16,), (1,), "float16", 1),
    (S, 0, (4, 4), (1, 4), None, 0),  # transposed
    (S, 0, (0, 5), (5, 1), None, False),
    (S, 0, (BIG - 1, 2), (2, 1), None, False),
    (S, 0, (BIG, 2), (2, 1), None, False),  # at the fast path's bound: the full checks
    (S, 0, (1 << 62, 4), (4, 1), None, False),  # more than 2**63 elements
    (S, 0, (1 << 63, 1), (1, 1), None, False),
    (S, 0, (2, 2, 2), (4, 2, 1), None, False),  # three dimensions: the full checks
    (S, 0, [4, 4], [4, 1], None, False),  # lists
    (S, 0, (4, 4), [4, 1], None, False),
    (S, 0, (4, -1), (4, 1), None, False),
    (S, 0, (4, True), (4, 1), None, False),
    (S, 0, (4, 4.0), (4, 1), None, False),
    (S, 0, (4, "4"), (4, 1), None, False),
    (S, 0, (4, 4), (4,), None, False),  # stride and size disagree
    (S, 0, (4,), (4, 1), None, False),
    (S, 0, None, (1,), None, False),
    (S, -1, (4,), (1,), None, False),
    (S, True, (4,), (1,), None, False),
    (S, 2.0, (4,), (1,), None, False),
    (S, 1 << 70, (4,), (1,), None, False),
    (UNTYPED, 0, (4,), (1,), None, False),  # no dtype at all
    (UNTYPED, 0, (4,), (1,), "", False),
    (UNTYPED, 0, (4,), (1,), "bfloat16", False),
    (StorageRef("2", "int8", "cuda:1", 100, view_offset=7), 5, (3, 3), (3, 1), None, False),
    ("not a storage", 0, (4,), (1,), None, False),
    (None, 0, (4,), (1,), "float32", False),
])
def test_strided_fast_path_matches_the_full_checks(args):
    assert _outcome(_unpickle._strided, *args) == _outcome(_unpickle._strided_checked, *args)


@pytest.mark.parametrize("pid", [
    ("storage", StorageType("float32"), "0", "cpu", 16),
    ("storage", StorageType(None), "key", "cuda:0", 0),
    ("storage", StorageType("float32"), "0", "cpu", -1),
    ("storage", StorageType("float32"), "0", "cpu", True),
    ("storage", StorageType("float32"), "0", "cpu", 1.0),
    ("storage", StorageType("float32"), 0, "cpu", 16),
    ("storage", StorageType("float32"), "0", None, 16),
    ("storage", "FloatStorage", "0", "cpu", 16),
    ("storage", DTypeRef("float32"), "0", "cpu", 16),
    ("Storage", StorageType("float32"), "0", "cpu", 16),
    ("storage", StorageType("float32"), "0", "cpu"),
    ["storage", StorageType("float32"), "0", "cpu", 16],
    "storage",
    None,
])
def test_storage_pid_fast_path_matches_the_full_checks(pid):
    assert _outcome(_unpickle.storage_from_pid, pid) == _outcome(_unpickle._storage_checked, pid)


def test_safe_wrapper_calls_its_function_and_stays_frozen():
    calls = []
    safe = _Safe("probe", lambda *a: calls.append(a) or len(a))
    assert isinstance(safe, _Safe) and safe(1, 2, 3) == 3 and calls == [(1, 2, 3)]
    with pytest.raises(pickle.UnpicklingError):
        safe.x = 1
    with pytest.raises(pickle.UnpicklingError):
        safe.__setstate__({"_fn": print})
    other = _Safe("other", lambda: "other")  # each wrapper calls its own function
    assert other() == "other" and safe() == 0
    # BUILD on an allowed rebuild function is refused, as before
    body = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}X\x03\x00\x00\x00_fnc__builtin__\n"
            b"print\nsb.")
    with pytest.raises(pickle.UnpicklingError):
        _unpickle.load(io.BytesIO(body), _unpickle.storage_from_pid)


# ---- the locator -------------------------------------------------------------------------


def _reference_locator(path, storages):
    """The locator as it was before #16's fast path: ViewBudget, lru-cached strides, a tuple
    per seen tensor."""
    spans, seen, budget = {}, {}, _torch_common.ViewBudget(path)
    itemsize = _torch_common._ITEMSIZE

    def locate(t):
        found = seen.get(id(t))
        if found is not None:
            if found[1] is not None:
                budget.charge(t.storage.key, found[1].storage_nbytes,
                              t.numel * itemsize.get(t.dtype, 0))
            return found[1]
        if t.storage is None or t.layout not in ("strided", "quantized"):
            seen[id(t)] = (t, None)
            return None
        key = t.storage.key
        where = spans[key] if key in spans else spans.setdefault(key, storages(key))
        if where is None:
            raise InputError(f"storage {_unpickle.brief(key)} is missing from the archive", path)
        offset, nbytes = where
        size = itemsize.get(t.dtype, 0)
        shape, stride = t.shape, t.stride
        numel = math.prod(shape)
        contiguous = stride == _torch_common.contiguous_strides(shape)
        if numel and size:
            last = t.storage_offset + (numel - 1 if contiguous else
                                       sum((n - 1) * s for n, s in zip(shape, stride or ())))
            if (last + 1) * size > nbytes:
                raise InputError(f"a tensor of shape {list(shape)} does not fit in its storage "
                                 f"({nbytes} bytes)", path)
        if numel * size > max(nbytes, _torch_common._MAX_VIEW_BYTES):
            raise InputError(f"a tensor of shape {list(shape)} repeats its {nbytes}-byte "
                             "storage beyond any real checkpoint; refusing it", path)
        budget.charge(key, nbytes, numel * size)
        data = TensorData(path, offset, nbytes, t.storage_offset, None if contiguous else stride)
        seen[id(t)] = (t, data)
        return data

    return locate


def _listing(path, fast: bool):
    arc = torch_zip.ZipArchive(str(path))
    try:
        raw = arc.read(arc.prefix + "data.pkl")
        obj, _ = _torch_common.unpickle(str(path), io.BytesIO(raw), _unpickle.storage_from_pid)
        locate = (_torch_common.make_locator(str(path), str(path), arc.storage_spans()) if fast
                  else _reference_locator(str(path), arc.storage_span))
        containers = _walk.containers_of(obj, str(path), locate)
        return [(c.path, e.key, e.role, e.shape, e.nbytes, e.data, e.data and vars(e.data))
                for c in containers for e in c.entries]
    finally:
        arc.close()


def _objects():
    base = torch.arange(64, dtype=torch.float32)
    four_mb = torch.ones(1 << 20)
    t = torch.ones(3, 5)
    lin = torch.nn.Linear(4, 3)
    return {
        "state_dict": {"w": torch.randn(4, 4), "b": torch.zeros(4, dtype=torch.float16),
                       "steps": torch.tensor(3), "empty": torch.zeros(0, 7),
                       "mask": torch.ones(2, 2, dtype=torch.bool)},
        "views": {"a": base[:8], "b": base[8:24].view(4, 4), "c": base.view(8, 8).t(),
                  "d": base.view(4, 4, 4)[:, 1], "e": base[::3], "f": base[60:].expand(5, 4)},
        "shared": {"enc.weight": t, "dec.weight": t, "dup": [t, t, t]},
        "params": {"weight": torch.nn.Parameter(torch.ones(2, 2)), "running": torch.ones(2)},
        "module": {"model": lin, "opt": torch.optim.SGD(lin.parameters(), lr=0.1).state_dict()},
        "meta": {"m": torch.empty(3, 3, device="meta"), "r": torch.ones(2)},
        "mixed": {"x": [torch.ones(2), {"y": torch.ones(1, dtype=torch.float64)}],
                  "n": 3, "s": torch.ones(2).to(torch.bfloat16)},
        "untyped_dtypes": {f"t{i}": torch.ones(i + 1, dtype=dt) for i, dt in enumerate(
            (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.complex64,
             torch.float8_e4m3fn))},
        # the budget: one 4 MB storage viewed 300 times (the same tensor, and 300 views)
        "listed_again": {"many": [four_mb] * 300},
        "many_views": {"views": [four_mb[: (1 << 20) - i] for i in range(300)]},
    }


@pytest.mark.parametrize("name", list(_objects()))
def test_locator_matches_the_reference(tmp_path, name):
    path = tmp_path / f"{name}.pt"
    torch.save(_objects()[name], path)
    fast, slow = _outcome(_listing, path, True), _outcome(_listing, path, False)
    assert fast == slow
    if name in ("listed_again", "many_views"):
        assert fast[0] == "InputError" and "view their storages" in fast[1]
    else:
        assert fast[0] == "ok" and fast[1]


def test_locator_matches_the_reference_on_a_large_listing(tmp_path):
    path = tmp_path / "many.pt"
    torch.save({f"layers.{i}.w": torch.full((4, 4), float(i)) for i in range(2000)}, path)
    assert _listing(path, True) == _listing(path, False)


# ---- the zip storage resolver and member names -------------------------------------------


def _spans_both(arc, key):
    fast = _outcome(arc.storage_spans(), key)
    slow = _outcome(arc.data_span, arc.prefix + "data/" + key)
    return fast, slow


@pytest.mark.parametrize("damage", ["none", "past_end", "header_near_end", "bad_signature",
                                    "compressed", "size_past_end", "missing"])
def test_storage_resolver_matches_data_span(tmp_path, damage):
    path = tmp_path / "t.pt"
    torch.save({"a": torch.ones(4), "b": torch.ones(3, dtype=torch.float64),
                "c": torch.ones(0)}, path)
    arc = torch_zip.ZipArchive(str(path))
    try:
        keys = [n.rsplit("/", 1)[1] for n in arc.infos if "/data/" in n]
        assert len(keys) == 3
        name = arc.prefix + "data/" + keys[0]
        info = arc.infos[name]
        if damage == "past_end":
            arc.infos[name] = info._replace(header_offset=arc.size + 5)
        elif damage == "header_near_end":
            arc.infos[name] = info._replace(header_offset=arc.size - 10)
        elif damage == "bad_signature":
            arc.infos[name] = info._replace(header_offset=info.header_offset + 1)
        elif damage == "compressed":
            arc.infos[name] = info._replace(compress_type=8)
        elif damage == "size_past_end":
            arc.infos[name] = info._replace(file_size=arc.size)
        elif damage == "missing":
            del arc.infos[name]
        for key in keys + ["nope", "../0"]:
            fast, slow = _spans_both(arc, key)
            assert fast == slow
            if damage == "none" and key in keys:
                member = arc.infos[arc.prefix + "data/" + key]
                assert fast[0] == "ok" and fast[1][1] == member.file_size
        if damage not in ("none", "missing"):
            assert _spans_both(arc, keys[0])[0][0] == "InputError"
    finally:
        arc.close()


@pytest.mark.parametrize("names", [
    ["a/data.pkl", "a/data/0", "a/version"],
    ["/etc/passwd", "a/data.pkl"],
    ["a/data.pkl", "a\\b"],
    ["a/../b", "a/data.pkl"],
    ["a/..b", "a/b..", "a/...", "a/data.pkl"],  # `..` inside a part is fine
    ["..", "a"],
    ["a", "b/..", "c"],
    ["a\x00/b", "c"],  # (a NUL only ever comes through zipfile)
    ["a/x", "b//c", "d/"],
    [],
])
def test_unsafe_names_match_the_per_name_check(names):
    expected = [n for n in names if n.startswith("/") or "\\" in n
                or (".." in n and ".." in n.split("/"))]
    assert torch_zip._unsafe_names(names) == expected


@pytest.mark.parametrize("keys", [
    ["/runs/epoch=2-step=30.ckpt", "b.pt"], ["a.pt", "b.pt"], ["x.weight", "y.pt"],
    ["/r/a.ckpt", 3], [3], [], ["a=1.bin"], ["w.safetensors", "c:\\x.pth"],
])
def test_keyed_by_files_matches_the_list_form(keys):
    obj = dict.fromkeys(keys)
    strs = [k for k in obj if isinstance(k, str)]
    expected = bool(strs) and all(k.endswith(_walk._FILE_KEY) for k in strs) and any(
        "/" in k or "\\" in k or "=" in k for k in strs)
    assert _walk._keyed_by_files(obj) == expected


def test_tensor_placeholders_are_slotted():
    t = TensorRef(S, 0, (4, 4), (4, 1), "float32")
    assert not hasattr(t, "__dict__") and t.numel == 16
    t.is_parameter = True  # the rebuild functions still set their fields
    with pytest.raises(AttributeError):
        t.anything = 1
    with pytest.raises(pickle.UnpicklingError):  # BUILD on a tensor is still refused
        t.__setstate__({"shape": (1 << 40,)})


# ---- the central directory read in one pass, against zipfile ------------------------------


def _zipfile_table(path):
    import zipfile

    with zipfile.ZipFile(path) as z:
        return {i.filename: (i.filename, i.header_offset, i.compress_size, i.file_size,
                             i.compress_type, i.CRC, i.flag_bits) for i in z.infolist()}


def _fast_table(path):
    import os

    fd = os.open(path, os.O_RDONLY)
    try:
        table = torch_zip._directory(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    return None if table is None else {k: tuple(v) for k, v in table.items()}


def _build_zip(members, *, zip64_end=True, zip64_extra=(), comment=b"", prefix=b"",
               damage=None):
    """A stored zip archive written by hand: (name bytes, data, flags) members; names in
    `zip64_extra` get their sizes and offset in a zip64 extra field of the central record."""
    import struct
    import zlib

    out, central = bytearray(prefix), bytearray()
    for name, data, flags in members:
        at = len(out) - len(prefix)
        crc = zlib.crc32(data)
        out += struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", 20, 0, flags, 0, 0, 0, crc,
                           len(data), len(data), len(name), 0) + name + data
        if name in zip64_extra:
            extra = struct.pack("<HHQQQ", 1, 24, len(data), len(data), at)
            sizes = (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
        else:
            extra, sizes = b"", (len(data), len(data), at)
        central += struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 45, 3, 45, 0, flags, 0, 0, 0,
                               crc, sizes[0], sizes[1], len(name), len(extra), 0, 0, 0, 0,
                               sizes[2]) + name + extra
    if damage == "record_signature":
        central[len(central) // 2: len(central) // 2 + 4] = b"PK\x01\x03"
        central[:4] = b"PK\x01\x03"
    elif damage == "name_overruns":
        central[28:30] = struct.pack("<H", 0xFFFF)
    elif damage == "version":
        central[6] = 99
    cd_at = len(out) - len(prefix)
    out += central
    count = len(members) - (1 if damage == "count" else 0)
    if zip64_end:
        end64_at = len(out) - len(prefix)
        out += struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count,
                           len(central), cd_at)
        out += struct.pack("<4sLQL", b"PK\x06\x07", 0, end64_at, 1)
    out += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, min(count, 0xFFFF),
                       min(count, 0xFFFF), len(central), cd_at, len(comment)) + comment
    return bytes(out)


NAMES = [(b"arch/data.pkl", b"\x80\x02}q\x00.", 0), (b"arch/data/0", b"\x00" * 64, 0),
         (b"arch/data/1", b"\x01" * 16, 0), (b"arch/version", b"3\n", 0)]


@pytest.mark.parametrize("case,kw,fast", [
    ("plain", {}, True),
    ("no_zip64_end", {"zip64_end": False}, True),
    ("zip64_extra", {"zip64_extra": (b"arch/data/0", b"arch/data.pkl")}, True),
    ("utf8_name", {"members": NAMES + [("arch/dätä/ü".encode(), b"x", 0x800)]}, True),
    ("cp437_name", {"members": NAMES + [(b"arch/\x81\x82", b"x", 0)]}, True),
    ("comment", {"comment": b"hello"}, False),
    ("prefix", {"prefix": b"#!/bin/sh\n" * 3}, False),
    ("duplicate", {"members": NAMES + [NAMES[1]]}, False),
    ("nul_in_name", {"members": NAMES + [(b"arch/a\x00b", b"x", 0)]}, False),
    ("record_signature", {"damage": "record_signature"}, False),
    ("name_overruns", {"damage": "name_overruns"}, False),
    ("version", {"damage": "version"}, False),
    ("count", {"damage": "count"}, False),
])
def test_directory_matches_zipfile(tmp_path, case, kw, fast):
    kw = dict(kw)
    path = tmp_path / f"{case}.zip"
    path.write_bytes(_build_zip(kw.pop("members", NAMES), **kw))
    table = _fast_table(str(path))
    assert (table is not None) == fast
    if table is not None:
        assert table == _zipfile_table(str(path))


def test_directory_matches_zipfile_on_torch_save(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({f"layers.{i}.w": torch.full((2, 3), float(i)) for i in range(500)}
               | {"ü.bias": torch.ones(1)}, path)
    table = _fast_table(str(path))
    assert table is not None and len(table) > 500
    assert table == _zipfile_table(str(path))


def test_truncated_directories_fall_back(tmp_path):
    """Every cut of a real archive's tail: the one-pass read gives zipfile's table or None
    (zipfile then reads the file or says what is wrong), never another table."""
    import zipfile

    whole = _build_zip(NAMES, zip64_extra=(b"arch/data/1",))
    for cut in range(1, 200):
        path = tmp_path / f"cut{cut}.zip"
        path.write_bytes(whole[:-cut])
        table = _fast_table(str(path))
        if table is not None:
            try:
                assert table == _zipfile_table(str(path))
            except zipfile.BadZipFile:
                pytest.fail(f"cut {cut}: a table where zipfile refuses the file")


def test_a_huge_directory_is_left_to_zipfile(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    torch.save({f"w{i}": torch.ones(2) for i in range(50)}, path)
    fast = _fast_table(str(path))
    assert fast is not None
    monkeypatch.setattr(torch_zip, "_MAX_FAST_DIRECTORY", 1000)
    assert _fast_table(str(path)) is None
    arc = torch_zip.ZipArchive(str(path))
    try:
        assert arc.zip is not None  # zipfile read the directory
        assert {k: (i.filename, i.header_offset, i.compress_size, i.file_size, i.compress_type,
                    i.CRC, i.flag_bits) for k, i in arc.infos.items()} == fast
        assert arc.storage_spans()("0") == arc.data_span(arc.prefix + "data/0")
    finally:
        arc.close()
    import bufinspect

    through_zipfile = bufinspect.show(str(path)).to_dict()
    monkeypatch.undo()
    assert bufinspect.show(str(path)).to_dict() == through_zipfile
