"""Terminal safety: names from files (keys, devices, class names, metadata) reach every human
format as inert, visible text; JSON keeps them exact; error lines stay one inert line.
The lead extends FORMATS/COMMANDS when diff/check renderers land."""

from __future__ import annotations

import json
import re
import struct

import pytest
import torch
from safetensors.torch import save_file

# human output formats of `show`; diff/check formats join here once they exist
HUMAN_FORMATS = ["table", "markdown"]

NASTY = {
    "ctrl": "a\x00b\x07c\x08d\re",
    "newline": "two\nlines",
    "ansi": "esc\x1b[31mred\x1b[0m",
    "osc_link": "\x1b]8;;http://evil.example\x1b\\click\x1b]8;;\x1b\\",
    "c1_csi": "c1\x9b31mred",
    "del": "del\x7fx",
    "rich_markup": "x[bold red]loud[/bold red][link=file:///etc/passwd]y[/link]",
    "bidi": "bidi\u202egnp.exe",
    "isolates": "iso\u2066x\u2069\u2067y\u2069",
    "marks": "lrm\u200erlm\u200f\u061calm",
    "line_separator": "ls\u2028ps\u2029end",
    "zero_width": "zw\u200bj\u200dnj\u200cbom\ufeffend",
    "markdown": "pipe|tick`<script>*_",
}
# characters that must never reach a terminal raw: C0/C1 controls, DEL, bidi controls, line and
# paragraph separators, zero-width and byte-order marks
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("nasty")
    keys = {f"{name}.{text}": torch.zeros(1) for name, text in NASTY.items()}
    save_file(keys, str(d / "nasty.safetensors"), metadata={f"m{k}": v for k, v in NASTY.items()})
    torch.save({"model": dict(keys)}, d / "nasty.pt")
    return d, sorted(keys)


def _lines_ok(out: str, keys: list[str]) -> None:
    assert not RAW.search(out), repr(RAW.search(out).group())
    for line in out.splitlines():  # one printed row per key: no key may start a new line
        assert line.count("two") <= 1


@pytest.mark.parametrize("fmt", HUMAN_FORMATS)
@pytest.mark.parametrize("name", ["nasty.safetensors", "nasty.pt"])
def test_names_render_inert(cli, files, name, fmt):
    d, keys = files
    r = cli("show", d / name, "--format", fmt, "--explain")
    assert r.exit_code == 0, r.stderr
    _lines_ok(r.stdout, keys)
    shown = r.stdout.replace("\\\\", "\\")  # markdown doubles backslashes; both read the same
    assert "two\\x0alines" in shown  # visible, not interpreted
    assert "\\x1b[31mred" in shown or "\\x1b\\[31mred" in shown
    assert "\\u202e" in shown and "\\u2028" in shown and "\\u061c" in shown
    if fmt == "table":
        assert "[bold red]loud[/bold red]" in r.stdout  # markup shown literally, not applied
    else:
        assert "pipe\\|tick\\`&lt;script&gt;" in r.stdout
        for table in r.stdout.split("\n\n"):  # every row of a table has the header's columns
            rows = [ln for ln in table.splitlines() if ln.startswith("|")]
            assert len({len(re.findall(r"(?<!\\)\|", ln)) for ln in rows}) <= 1, table


@pytest.mark.parametrize("name", ["nasty.safetensors", "nasty.pt"])
def test_json_keeps_names_exact(cli, files, name):
    d, keys = files
    r = cli("show", d / name, "--format", "json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert sorted(e["key"] for e in doc["entries"]) == keys
    assert "\x1b" not in r.stdout  # escaped by JSON itself (\\u001b), exact once parsed


def test_class_names_from_pickles_render_inert(cli, tmp_path):
    """A pickled module whose class name carries escapes (STACK_GLOBAL takes any string)."""
    cls = "evil\x1b[2J\u202e"
    pkl = (b"\x80\x04" + b"\x8c\x08__main__" + b"\x8c" + bytes([len(cls.encode())])
           + cls.encode() + b"\x93" + b")\x81" + b"}(\x8c\x0b_parameters}\x8c\x08_modules}u"
           + b"b.")
    import zipfile

    p = tmp_path / "m.pt"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("m/data.pkl", pkl)
    for fmt in HUMAN_FORMATS:
        r = cli("show", p, "--format", fmt)
        assert r.exit_code == 0, r.stderr
        assert not RAW.search(r.stdout) and "\\x1b[2J" in r.stdout.replace("\\[", "[")


def test_error_lines_stay_inert(cli, tmp_path):
    key = "k\x1b[31m\n\u202e"
    body = json.dumps({key: {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}}).encode()
    p = tmp_path / "bad.safetensors"
    p.write_bytes(struct.pack("<Q", len(body)) + body + b"\0" * 4)
    r = cli("show", p)
    assert r.exit_code == 2
    assert len(r.stderr.strip().splitlines()) == 1 and not RAW.search(r.stderr), r.stderr
