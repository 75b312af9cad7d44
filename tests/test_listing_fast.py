"""The listing fast paths of #16 keep every refusal: duplicate safetensors keys (the header is
parsed without the duplicate hook when its keys can be counted), and zip local headers read
from a map."""

from __future__ import annotations

import json
import struct

import pytest

from bufinspect.errors import InputError
from bufinspect.formats import safetensors_fmt

T = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
J = json.dumps(T, separators=(",", ":"))


def _file(tmp_path, text: str):
    raw = text.encode()
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 4)
    return path


@pytest.mark.parametrize("text", [
    '{"a":%s,"a":%s}' % (J, J),  # a tensor twice
    '{"a":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}}',  # a field twice
    '{"a" :%s,"a":%s}' % (J, J),  # spaced: the hook
    '{"a\\u0041":%s,"aA":%s}' % (J, J),  # escaped
    '{"__metadata__":{"k":"v","k":"w"},"a":%s}' % J,
])
def test_duplicate_keys_are_refused(tmp_path, text):
    path = _file(tmp_path, text)
    with pytest.raises(InputError, match="duplicate key"):
        with open(path, "rb") as f:
            safetensors_fmt.parse_header(str(path), f, path.stat().st_size)


def test_plain_header_parses(tmp_path):
    text = '{"__metadata__":{"format":"pt"},"a":%s}' % J
    path = _file(tmp_path, text)
    with open(path, "rb") as f:
        header, meta, start = safetensors_fmt.parse_header(str(path), f, path.stat().st_size)
    assert list(header) == ["a"] and meta == {"format": "pt"} and start == 8 + len(text)


def test_zip_member_past_the_end_is_refused(tmp_path):
    """A storage whose local header lies past the end of the file: one line, no traceback."""
    torch = pytest.importorskip("torch")
    import bufinspect

    path = tmp_path / "t.pt"
    torch.save({"w": torch.ones(4)}, path)
    bufinspect.load(str(path))  # the map is opened and closed without trouble
    from bufinspect.formats import torch_zip

    arc = torch_zip.ZipArchive(str(path))
    try:
        name = next(n for n in arc.infos if n.endswith("data/0"))
        info = arc.infos[name]
        arc.infos[name] = info._replace(header_offset=arc.size - 10)
        with pytest.raises(InputError, match="corrupt zip header"):
            arc.data_span(name)
    finally:
        arc.close()


# ---- the one-pass safetensors header (validation and entries together) -----------------------

def _header_file(tmp_path, tensors: dict, data: int):
    raw = json.dumps(tensors).encode()
    path = tmp_path / "h.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * data)
    return path


def _entries(path):
    with open(path, "rb") as f:
        return safetensors_fmt.header_entries(str(path), f, path.stat().st_size)[3]


def _t(begin: int, end: int, shape=None) -> dict:
    return {"dtype": "F32", "shape": shape if shape is not None else [(end - begin) // 4],
            "data_offsets": [begin, end]}


def test_entries_come_in_file_order_whatever_the_header_order(tmp_path):
    path = _header_file(tmp_path, {"a": _t(8, 12), "b": _t(0, 8), "c": _t(12, 16)}, 16)
    assert [e.key for e in _entries(path)] == ["b", "a", "c"]
    with open(path, "rb") as f:  # parse_header: the same validation, the header as parsed
        header, _, start = safetensors_fmt.parse_header(str(path), f, path.stat().st_size)
    assert list(header) == ["a", "b", "c"]
    assert [e.data.offset - start for e in _entries(path)] == [0, 8, 12]


def test_an_empty_tensor_at_a_neighbours_offset_is_no_overlap(tmp_path):
    # tied offsets: the empty one sorts first by (begin, end), whatever the header order
    path = _header_file(tmp_path, {"big": _t(0, 8), "empty": _t(0, 0, [0]), "z": _t(8, 8, [0])},
                        8)
    assert [e.key for e in _entries(path)] == ["big", "empty", "z"]  # stable: header order


def test_an_empty_tensor_inside_another_is_an_overlap(tmp_path):
    path = _header_file(tmp_path, {"big": _t(0, 8), "inside": _t(4, 4, [0])}, 8)
    with pytest.raises(InputError, match="'big' and 'inside' overlap"):
        _entries(path)


def test_overlap_is_found_out_of_header_order(tmp_path):
    path = _header_file(tmp_path, {"late": _t(8, 16), "early": _t(0, 12, [3])}, 16)
    with pytest.raises(InputError, match="'early' and 'late' overlap"):
        _entries(path)


@pytest.mark.parametrize("info, message", [
    ({"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 99]},
     "offsets outside the file"),  # the offsets are judged before the element count
    ({"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 4]},
     "more than 2\\*\\*63 elements"),
    ({"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}, "invalid shape"),
    ({"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}, "invalid shape"),
    ({"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}, "need 8 bytes but offsets give 4"),
    ({"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}, None),  # packed: ceil(1.5) bytes
    ({"dtype": "F4", "shape": [3], "data_offsets": [0, 1]}, "need 2 bytes but offsets give 1"),
    ({"dtype": "X9", "shape": [1], "data_offsets": [0, 4]}, "unknown dtype 'X9'"),
])
def test_header_fields_are_judged_in_order(tmp_path, info, message):
    path = _header_file(tmp_path, {"t": info}, 8)
    if message is None:
        (e,) = _entries(path)
        assert e.dtype == "f4" and e.data is None and e.nbytes == 2
        return
    with pytest.raises(InputError, match=message):
        _entries(path)


# ---- roles completed in place by `load` -------------------------------------------------------

def test_load_completes_roles_in_place_like_a_copy(tmp_path):
    """`bufinspect.load` has `roles.assign` complete the entries it just read in place; the roles
    are those a copying assign gives, on real modules saved three ways."""
    torch = pytest.importorskip("torch")
    import bufinspect
    from bufinspect import formats, roles
    from safetensors.torch import save_file

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8),
                              torch.nn.Flatten(), torch.nn.LazyLinear(4))
    net(torch.zeros(1, 3, 8, 8))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.zeros(2, 3, 8, 8)).sum().backward()
    opt.step()
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "train.pt")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()},
              str(tmp_path / "sd.safetensors"))
    for name in ("sd.pt", "train.pt", "sd.safetensors"):
        path = str(tmp_path / name)
        loaded = bufinspect.load(path)
        copied = roles.assign(formats.read(path))
        assert [(e.container, e.key, e.role, e.evidence, e.persistent) for e in loaded.entries] \
            == [(e.container, e.key, e.role, e.evidence, e.persistent) for e in copied.entries]
        assert any(e.role is not bufinspect.Role.UNKNOWN for e in loaded.entries)


def test_an_entry_object_met_twice_is_copied(tmp_path):
    """Should a reader ever place one entry object in two state dicts, completing it in place
    would show the second inference the first one's role as the reader's own: both are copied,
    and each place is decided on its own."""
    import dataclasses

    from bufinspect import roles
    from bufinspect.model import Checkpoint, Container, ContainerKind, Entry, Format, Role

    counter = Entry("", "bn.num_batches_tracked", Role.UNKNOWN, "none", (), "int64", None, 8)
    a = Container("a", ContainerKind.STATE_DICT, (counter,))
    ck = Checkpoint(path="x", format=Format.SAFETENSORS, size=0,
                    containers=(a, dataclasses.replace(a, path="b")))
    done = roles.assign(ck, in_place=True)
    first, second = (c.entries[0] for c in done.containers)
    assert first is not counter and second is not counter and counter.role is Role.UNKNOWN
    assert first.role is second.role is Role.BUFFER
    assert first.evidence == second.evidence == "dtype:int64"
    alone = Checkpoint(path="x", format=Format.SAFETENSORS, size=0, containers=(a,))
    assert roles.assign(alone, in_place=True).entries[0] is counter  # completed where it is
    assert counter.role is Role.BUFFER
