"""The layout engine's rules, one by one (render/layout.py)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from bufinspect.cli import app
from bufinspect.render.layout import (ELLIPSIS, KEY, LABEL, NUM, TEXT, Column, cell_len,
                                      fmt_num, plan, shorten_key, table_lines, wrap)


@pytest.mark.parametrize("value, text", [
    (0.05802, "0.05802"), (1.0, "1.000"), (3, "3"), (0.0, "0"), (-0.037634, "-0.03763"),
    (1e-5, "1.000e-5"), (12345.6, "1.235e4"), (float("nan"), "nan"), (float("-inf"), "-inf"),
    (None, "-"), (0.0001234, "0.0001234"), (123.456, "123.5"),
])
def test_four_significant_digits(value, text):
    assert fmt_num(value) == text
    assert len(fmt_num(value)) <= 10


def test_shortened_key_keeps_its_leaf():
    key = "encoder.layers.11.attention.self.query.weight"
    for width in range(len(".weight") + 2, len(key)):
        short = shorten_key(key, width)
        assert cell_len(short) <= width and short.endswith(".weight")
        assert ELLIPSIS in short or short.count(".") == key.count(".")


def test_shortened_keys_stay_distinct():
    keys = [f"layer{i}.0.bn1.running_var" for i in range(1, 5)]
    cols = [Column("tag", LABEL), Column("key", KEY), Column("n", NUM, 1)]
    rows = [["t" * 20, k, "1"] for k in keys]
    for width in range(16, 26):  # the key column's width
        p = plan(cols, rows, 20 + 2 + width + 2 + 1)
        assert not p.compact
        shown = [line.split()[1] for line, r in table_lines(cols, rows, p) if r is not None]
        assert len(set(shown)) == 4, shown
        assert all(s.endswith(".running_var") for s in shown)


def test_columns_drop_before_keys_shrink_and_key_numbers_last():
    cols = [Column("key", KEY), Column("max_abs", NUM, 1), Column("cosine", NUM, 6),
            Column("mismatched", NUM, 2)]
    rows = [["encoder.block.0.norm.running_mean", "0.05802", "1.000", "8/8"]]
    full = plan(cols, rows, 200)
    assert full.dropped == [] and full.widths[0] == len(rows[0][0])
    narrow = plan(cols, rows, 50)  # cosine and mismatched go, the key keeps its width
    assert narrow.dropped == ["cosine", "mismatched"] and narrow.widths[0] == len(rows[0][0])
    tighter = plan(cols, rows, 40)  # then the key gives way before max_abs drops
    assert "max_abs" not in tighter.dropped and tighter.widths[0] < len(rows[0][0])
    assert plan(cols, rows, 39).compact is True  # under 40 columns: entry by entry


def test_headers_never_wrap_and_numbers_never_split():
    cols = [Column("status", LABEL), Column("key", KEY), Column("mean_abs", NUM, 1),
            Column("detail", TEXT, 1)]
    rows = [["changed", "a.b.c.running_var", "-2.476e-5", "dtype float32 -> float16; " * 4]]
    for width in range(40, 120, 7):
        p = plan(cols, rows, width)
        lines = table_lines(cols, rows, p)
        assert all(cell_len(line) <= width for line, _ in lines)
        header = lines[0][0].split()
        assert header == [c.name for i, c in enumerate(cols) if i in p.kept]
        if "mean_abs" in header:
            assert "-2.476e-5" in lines[2][0]


def test_wrap_breaks_at_boundaries():
    assert wrap("layer:BatchNorm|InstanceNorm|SyncBatchNorm", 30) == [
        "layer:BatchNorm|InstanceNorm|", "SyncBatchNorm"]


def test_wide_characters_hold_the_width(tmp_path):
    """Keys in CJK take two cells a character; lines still fit the terminal."""
    keys = [f"編碼器.層{i}.正規化.running_var" for i in range(3)]
    save_file({k: torch.ones(2) for k in keys}, str(tmp_path / "cjk.safetensors"))
    for width in (40, 60, 80):
        r = CliRunner().invoke(app, ["show", str(tmp_path / "cjk.safetensors"), "--explain"],
                               env={"COLUMNS": str(width)})
        assert r.exit_code == 0
        assert all(cell_len(line) <= width for line in r.stdout.splitlines()), r.stdout
        assert all(k in r.stdout or ELLIPSIS in r.stdout or "." in r.stdout for k in keys)
    doc = json.loads(CliRunner().invoke(app, ["show", str(tmp_path / "cjk.safetensors"),
                                              "--format", "json"]).stdout)
    assert sorted(e["key"] for e in doc["entries"]) == sorted(keys)
