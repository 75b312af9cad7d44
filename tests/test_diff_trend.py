"""trend: a series of real training checkpoints, sparkline rows sorted by drift, --plot."""

from __future__ import annotations

import sys

import pytest
import torch


class BNNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn1 = torch.nn.BatchNorm2d(4)
        self.bn2 = torch.nn.BatchNorm2d(4, momentum=0.01)  # drifts ten times slower

    def forward(self, x):
        return self.bn2(self.bn1(self.conv(x)))


@pytest.fixture
def series(tmp_path):
    torch.manual_seed(0)
    net = BNNet()
    paths = []
    for epoch in range(4):
        p = tmp_path / f"epoch{epoch}.pt"
        torch.save(net.state_dict(), p)
        paths.append(p)
        net.train()
        for _ in range(2):
            net(torch.randn(4, 3, 8, 8) * (2 + epoch) + epoch)
    return paths


def test_trend_rows_match_torch(series, cli_json):
    import json
    from pathlib import Path
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(__file__).resolve().parent.parent / "bufinspect" / "schema"
                         / "bufinspect-1.json").read_text())
    plain = cli_json("trend", *series)
    jsonschema.validate(plain, schema)
    assert plain["metric"] == "max_abs"
    doc = cli_json("trend", *series, "--metric", "rel_l2")
    assert doc["command"] == "trend" and doc["metric"] == "rel_l2"
    rows = {r["key"]: r for r in doc["rows"]}
    first = torch.load(series[0], weights_only=True)
    for key in ("bn1.running_var", "bn2.running_mean"):
        want = [0.0]
        for p in series[1:]:
            b = torch.load(p, weights_only=True)[key].double()
            want.append(((first[key].double() - b).norm() / b.norm()).item())
        assert rows[key]["values"] == pytest.approx(want, rel=1e-9)
    totals = [r["total"] for r in doc["rows"]]
    assert totals == sorted(totals, reverse=True)
    # the fast BatchNorm drifts more than the slow one
    assert rows["bn1.running_var"]["total"] > rows["bn2.running_var"]["total"]
    assert rows["bn1.num_batches_tracked"]["values"][-1] > 0


def test_trend_table_has_sparklines(series, cli):
    r = cli("trend", *series, "--metric", "max_abs")
    assert r.exit_code == 0
    line = next(l for l in r.stdout.splitlines() if "bn1.running_var" in l)
    assert any(c in line for c in "▁▂▃▄▅▆▇█")
    lines = [l for l in r.stdout.splitlines() if "running" in l]
    assert "bn1." in lines[0]  # sorted by total drift


def test_trend_usage_errors(series, cli):
    assert cli("trend", series[0]).exit_code == 2
    assert cli("trend", *series, "--metric", "nope").exit_code == 2


def test_plot_writes_png(series, cli, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "drift.png"
    r = cli("trend", *series, "--plot", out)
    assert r.exit_code == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib(series, cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    r = cli("trend", *series, "--plot", tmp_path / "drift.png")
    assert r.exit_code == 2
    assert "pip install 'bufinspect[plot]'" in r.stderr and len(r.stderr.splitlines()) == 1
    assert not (tmp_path / "drift.png").exists()
