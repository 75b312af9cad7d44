"""The JSON documents of every command on the bundled samples, byte for byte.

The documents are the contract scripts rely on (SPEC.md, `bufinspect/1`): a refactoring must not
change them. Regenerate deliberately, after a change that is meant to alter them, with
`BUFINSPECT_REGEN_GOLDEN=1 python -m pytest tests/test_golden_json.py` and review the diff.
The bytes are the fused kernel's (bufinspect._kernel, the same on every CPU); the numpy path
that runs without it matches them up to the last digits of sums.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "json"
S = "sample_checkpoints/"
_SAMPLES = ["bn_after_eval.pt", "bn_after_train.pt", "bn_before.pt", "buffer_zoo_module.pt",
            "buffer_zoo_state_dict.pt", "cnn.safetensors", "cnn_cuda1.pt", "cnn_state_dict.pt",
            "cnn_state_dict_legacy.pt", "train_adam.pt"]

CASES: dict[str, list[str]] = {}
for _name in _SAMPLES:
    _stem = _name.replace(".", "_")
    CASES[f"show_{_stem}"] = ["show", S + _name]
    CASES[f"show_stats_{_stem}"] = ["show", S + _name, "--stats", "--jobs", "1"]
    CASES[f"check_{_stem}"] = ["check", S + _name, "--device", "cpu", "--no-config"]
CASES.update({
    "diff_bn_train": ["diff", S + "bn_before.pt", S + "bn_after_train.pt"],
    "diff_bn_train_all": ["diff", S + "bn_before.pt", S + "bn_after_train.pt", "--all"],
    "diff_bn_eval_params": ["diff", S + "bn_before.pt", S + "bn_after_eval.pt", "--params"],
    "diff_cnn_formats": ["diff", S + "cnn_state_dict.pt", S + "cnn.safetensors", "--all"],
    "diff_cnn_legacy_tol": ["diff", S + "cnn_state_dict.pt", S + "cnn_state_dict_legacy.pt",
                            "--all", "--rtol", "1e-3", "--tol", "running_var=1e-2"],
    "check_several": ["check", S + "cnn_state_dict.pt", S + "cnn_cuda1.pt", S + "train_adam.pt",
                      "--device", "cpu", "--no-config", "--expect-dtype", "float32"],
    "trend_bn": ["trend", S + "bn_before.pt", S + "bn_after_eval.pt", S + "bn_after_train.pt"],
})


@pytest.mark.parametrize("name", sorted(CASES))
def test_json_document_unchanged(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from bufinspect.cli import app

    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(app, [*CASES[name], "--format", "json"])
    assert result.exit_code in (0, 1), result.stderr
    golden = GOLDEN / f"{name}.json"
    if os.environ.get("BUFINSPECT_REGEN_GOLDEN"):
        golden.write_text(result.stdout)
    from bufinspect import kernels

    if kernels.native() is None:  # the numpy path (no compiler, or BUFINSPECT_NO_KERNEL=1):
        # the goldens hold the fused kernel's sums, whose order differs in the last digits
        _close(json.loads(result.stdout), json.loads(golden.read_text()), name)
        return
    assert result.stdout == golden.read_text(), f"{name}: JSON document changed"


def _close(got, want, where: str) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), where
        for k in want:
            _close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _close(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and isinstance(got, float):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-15), where
    else:
        assert got == want, where


def test_numpy_path_matches_the_goldens(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same documents from the numpy path, up to the last digits of sums (#16)."""
    from bufinspect import kernels

    monkeypatch.setenv(kernels.DISABLE_ENV, "1")
    kernels.reset()
    try:
        for name in ("diff_bn_train_all", "show_stats_train_adam_pt", "check_train_adam_pt"):
            test_json_document_unchanged(name, monkeypatch)
    finally:
        monkeypatch.delenv(kernels.DISABLE_ENV)
        kernels.reset()
