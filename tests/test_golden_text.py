"""The human tables of `diff` and `check` on the samples, byte for byte at 100 columns (the
`show` table has its own golden in test_show.py). Regenerate deliberately, after a change meant
to alter them, with `BUFINSPECT_REGEN_GOLDEN=1 python -m pytest tests/test_golden_text.py`."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

import bufinspect

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
S = "sample_checkpoints/"


def _reports():
    return {
        "diff_bn_train": lambda: bufinspect.diff(S + "bn_before.pt", S + "bn_after_train.pt"),
        "diff_bn_eval_all": lambda: bufinspect.diff(S + "bn_before.pt", S + "bn_after_eval.pt",
                                                    scope="all"),
        "check_several": lambda: bufinspect.check(
            [S + "cnn_cuda1.pt", S + "train_adam.pt", S + "buffer_zoo_module.pt"],
            expect_dtype="float32", device="cpu"),
    }


@pytest.mark.parametrize("name", sorted(_reports()))
def test_table_unchanged(name, monkeypatch):
    from rich.console import Console

    from bufinspect import render

    monkeypatch.chdir(ROOT)
    out = io.StringIO()
    render.table(_reports()[name](), Console(width=100, file=out, color_system=None,
                                             highlight=False, emoji=False))
    golden = GOLDEN / f"{name}.txt"
    if os.environ.get("BUFINSPECT_REGEN_GOLDEN"):
        golden.write_text(out.getvalue())
    assert out.getvalue() == golden.read_text(), f"{name}: table changed"
