"""The worker pool: balanced groups in file order, and reports that do not depend on --jobs."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import bufinspect
from bufinspect import parallel


@pytest.fixture
def many(tmp_path):
    torch.manual_seed(0)
    sd = {f"layer{i}.weight": torch.randn(64, 32 + i) for i in range(40)}
    sd.update({f"layer{i}.bn.running_var": torch.rand(64) for i in range(40)})
    sd["layer3.bn.num_batches_tracked"] = torch.tensor(7)
    sd["big"] = torch.randn(300_000).to(torch.bfloat16)  # spans several 4 MiB... and one worker
    sd["big"][5] = float("inf")
    path = tmp_path / "many.pt"
    torch.save(sd, path)
    st = tmp_path / "many.safetensors"
    save_file(sd, str(st))
    return path, st


def test_partition_covers_everything_in_file_order(many):
    entries = bufinspect.load(str(many[0])).entries
    for groups in (1, 2, 3, 7, 200):
        parts = parallel.partition(entries, groups)
        assert len(parts) == groups
        flat = [e for p in parts for e in p]
        assert sorted(map(id, flat)) == sorted(map(id, entries))  # each entry exactly once
        offsets = [e.data.offset for e in flat]
        assert offsets == sorted(offsets)  # contiguous runs, in file order
    total = sum(e.nbytes for e in entries)
    small = [e for e in entries if e.key != "big"]
    sizes = [sum(e.nbytes for e in p) for p in parallel.partition(small, 2)]
    assert max(sizes) - min(sizes) <= max(e.nbytes for e in small)
    assert total > 0


def test_map_entries_keeps_group_order(many):
    entries = bufinspect.load(str(many[1])).entries
    keys = parallel.map_entries(entries, lambda g: [e.key for e in g], 4)
    want = [[e.key for e in p] for p in parallel.partition(entries, 4) if p]
    assert len(want) > 1 and keys == want


@pytest.mark.parametrize("which", [0, 1])
@pytest.mark.parametrize("pool", ["thread", "process"])
def test_stats_do_not_depend_on_jobs(cli, many, which, pool, monkeypatch):
    monkeypatch.setenv("BUFINSPECT_POOL", pool)
    path = many[which]
    outs = []
    for jobs in ("1", "2", "5"):
        r = cli("show", path, "--stats", "--jobs", jobs, "--format", "json")
        assert r.exit_code == 0, r.stderr
        outs.append(r.stdout)
    assert outs[0] == outs[1] == outs[2]
    # and they are torch's own numbers
    import json

    doc = json.loads(outs[1])
    big = next(e for e in doc["entries"] if e["key"] == "big")
    assert big["stats"]["inf"] == 1
    sd = torch.load(many[0], weights_only=True)
    w = sd["layer5.weight"]
    st = next(e for e in doc["entries"] if e["key"] == "layer5.weight")["stats"]
    assert st["min"] == w.min().item() and st["max"] == w.max().item()
    assert st["std"] == pytest.approx(w.double().std().item(), rel=1e-9)
