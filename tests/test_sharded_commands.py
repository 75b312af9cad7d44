"""diff and check read sharded HF folders and DCP folders as one checkpoint, with the same
results as the unsharded file."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from helpers import dcp_save
from helpers import save_sharded, state_dict


def _statuses(doc):
    return {e["key"]: e["status"] for e in doc["entries"]}


def _planted():
    sd = state_dict()
    var = next(k for k in sd if k.endswith("running_var"))
    sd[var] = sd[var].clone()
    sd[var][0] = float("nan")
    return sd, var


def test_diff_sharded_and_dcp_equal_their_single_file(cli_json, tmp_path):
    sd = state_dict()
    save_file(sd, str(tmp_path / "single.safetensors"))
    torch.save(sd, tmp_path / "single.pt")
    (tmp_path / "hf").mkdir()
    save_sharded(sd, tmp_path / "hf", max_shard_size=6000)
    dcp_save(sd, tmp_path / "dcp")
    for a, b in [("hf", "single.safetensors"), ("dcp", "single.pt"), ("hf", "dcp")]:
        doc = cli_json("diff", tmp_path / a, tmp_path / b, "--all")
        assert doc["identical"] is True, (a, b)
        assert set(_statuses(doc)) == set(sd) and set(_statuses(doc).values()) == {"equal"}


def test_diff_sharded_reports_what_the_single_file_reports(cli_json, tmp_path):
    before = state_dict()
    after, var = _planted()
    save_file(before, str(tmp_path / "a.safetensors"))
    save_file(after, str(tmp_path / "b.safetensors"))
    for name, sd in (("a", before), ("b", after)):
        (tmp_path / name).mkdir()
        save_sharded(sd, tmp_path / name, max_shard_size=6000)
    single = cli_json("diff", tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--all",
                      code=1)
    sharded = cli_json("diff", tmp_path / "a", tmp_path / "b", "--all", code=1)
    assert _statuses(sharded) == _statuses(single)
    assert _statuses(sharded)[var] == "changed"


def test_check_sharded_and_dcp_find_what_the_single_file_finds(cli_json, tmp_path):
    sd, var = _planted()
    torch.save(sd, tmp_path / "single.pt")
    (tmp_path / "hf").mkdir()
    save_sharded(sd, tmp_path / "hf", max_shard_size=6000)
    dcp_save(sd, tmp_path / "dcp")

    def findings(path):
        doc = cli_json("check", path, "--device", "cpu", code=1)
        return {(f["id"], tuple(f["keys"])) for f in doc["findings"] if f["id"] in ("nan", "inf")}

    single = findings(tmp_path / "single.pt")
    assert ("nan", (var,)) in single
    assert findings(tmp_path / "hf") == single
    assert findings(tmp_path / "dcp") == single


def test_check_jobs_give_the_same_report(cli, tmp_path):
    sd, _ = _planted()
    (tmp_path / "hf").mkdir()
    save_sharded(sd, tmp_path / "hf", max_shard_size=6000)
    outs = {j: cli("check", tmp_path / "hf", "--device", "cpu", "--jobs", j, "--format", "json")
            for j in ("1", "2", "5")}
    assert {r.exit_code for r in outs.values()} == {1}
    assert outs["1"].stdout == outs["2"].stdout == outs["5"].stdout
