"""The JSON documents of every command on the bundled samples, byte for byte.

The documents are the contract scripts rely on (SPEC.md, `bufinspect/1`): a refactoring must not
change them. Regenerate deliberately, after a change that is meant to alter them, with
`BUFINSPECT_REGEN_GOLDEN=1 python -m pytest tests/test_golden_json.py` and review the diff.
"""

from __future__ import annotations

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
    assert result.stdout == golden.read_text(), f"{name}: JSON document changed"
