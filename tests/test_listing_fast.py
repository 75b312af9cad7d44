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
