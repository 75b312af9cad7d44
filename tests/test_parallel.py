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


def test_diff_does_not_depend_on_jobs(cli, tmp_path):
    """The sweep's steps split across threads; per-step accumulators merged in file order give
    the same JSON (metrics, saved envelope) for 1, 2 and 5 workers, and torch's own numbers."""
    import json

    torch.manual_seed(1)
    a = {f"block{i}.bn.running_mean": torch.randn(256) for i in range(30)}
    a.update({f"block{i}.bn.num_batches_tracked": torch.tensor(100 + i) for i in range(30)})
    a["big.weight"] = torch.randn(3_000_000)  # 12 MB: three 4 MiB steps
    b = {k: v.clone() for k, v in a.items()}
    for i in (2, 17, 29):  # a train step moved a few BatchNorms
        b[f"block{i}.bn.running_mean"] += 0.01 * torch.randn(256)
        b[f"block{i}.bn.num_batches_tracked"] += 1
    b["big.weight"][2_500_000:2_600_000] += 1e-3  # only the last step differs
    pa, pb = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(a, pa)
    torch.save(b, pb)
    outs, saved = [], []
    for jobs in ("1", "2", "5"):
        m = tmp_path / f"m{jobs}.json"
        r = cli("diff", pa, pb, "--all", "--jobs", jobs, "--format", "json", "--save-metrics", m)
        assert r.exit_code == 1, r.stderr
        outs.append(r.stdout)
        saved.append(m.read_text())
    assert outs[0] == outs[1] == outs[2]
    assert saved[0] == saved[1] == saved[2]
    got = {e["key"]: e for e in json.loads(outs[0])["entries"]}
    big = got["big.weight"]
    x, y = a["big.weight"].double(), b["big.weight"].double()
    assert big["status"] == "changed"
    assert big["max_abs"] == pytest.approx((x - y).abs().max().item(), rel=1e-12)
    assert big["mismatched"] == int(((x - y).abs() > 1e-8 + 1e-5 * y.abs()).sum())
    assert big["cosine"] == pytest.approx(torch.nn.functional.cosine_similarity(x, y, 0).item(),
                                          rel=1e-12)
    assert got["block17.bn.num_batches_tracked"]["old"] == 117
    assert got["block17.bn.num_batches_tracked"]["new"] == 118
    assert got["block3.bn.running_mean"]["status"] == "equal"


def test_workers_only_where_bytes_dominate(many, monkeypatch):
    """A piece costs the same Python whatever its size: `--jobs` splits only entries that are
    large on average (100,000 tiny tensors ran slower on two threads than on one). The report is
    the same either way."""
    monkeypatch.setattr(parallel, "MIN_BYTES_PER_ENTRY", 64 << 10)
    entries = bufinspect.load(str(many[1])).entries
    small = [e for e in entries if e.key != "big"]
    assert parallel.useful_jobs(small, 4) == 1  # 8 KiB or so each
    assert parallel.useful_jobs([e for e in entries if e.key == "big"], 4) == 4
    assert parallel.useful_jobs(entries, 1) == 1 and parallel.useful_jobs([], 3) == 3
    serial = bufinspect.show(str(many[1]), stats=True, jobs=1).to_dict()
    assert bufinspect.show(str(many[1]), stats=True, jobs=2).to_dict() == serial
    assert bufinspect.check(str(many[1]), jobs=2).to_dict() == bufinspect.check(
        str(many[1]), jobs=1).to_dict()
