"""`show --stats`, `diff` and `check` under torchrun (2 ranks, gloo, loopback) print the
single-process report, with the single-process exit code."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from conftest import ROOT

pytestmark = pytest.mark.slow  # starts torch.distributed ranks (seconds each)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MASTER_ADDR": "127.0.0.1"}
    env.pop("OPENBLAS_NUM_THREADS", None)  # as a user's shell has it
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        env.pop(name, None)
    return env


def _exit_codes(stderr: str) -> dict[str, int]:
    """Rank -> exit code of each failed worker in torchrun's summary (torch 2.x layout); a
    signal is negative (torchrun stops the other ranks once one fails)."""
    found = re.findall(r"rank\s*:\s*(\d+).*\n\s*exitcode\s*:\s*(-?\d+)", stderr)
    return {rank: int(code) for rank, code in found}


def _only_rank0_failed(stderr: str) -> bool:
    codes = _exit_codes(stderr)
    return codes.pop("0", None) == 1 and all(c < 0 for c in codes.values())


def _single_and_torchrun(args: list[str], cwd, single_extra=(), ranks_extra=()):
    """The CLI run once as one process and once under torchrun with 2 ranks."""
    single = subprocess.run([sys.executable, "-m", "bufinspect", *args, *single_extra],
                            env=_env(), capture_output=True, text=True, timeout=120, cwd=cwd)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node",
           "2", "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           "-m", "bufinspect", *args, *ranks_extra]
    run = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120, cwd=cwd)
    return single, run


def test_torchrun_two_ranks_match_single_process(tmp_path):
    torch.manual_seed(0)
    sd = {f"block{i}.conv.weight": torch.randn(16, 8, 3, 3) for i in range(12)}
    sd.update({f"block{i}.bn.running_mean": torch.randn(16) for i in range(12)})
    sd["head.weight"] = torch.randn(1000, 64).to(torch.bfloat16)
    torch.save(sd, tmp_path / "ck.pt")
    single, run = _single_and_torchrun(["show", "ck.pt", "--stats", "--format", "json"],
                                       tmp_path, ranks_extra=["--jobs", "1"])
    assert single.returncode == 0, single.stderr
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout) == json.loads(single.stdout)
    assert run.stdout == single.stdout  # byte for byte: one report, from rank 0 only


class ConvBNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 1024)
        self.proj = nn.Linear(1024, 512)  # 2 MiB: streamed in chunks, not packed

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.proj(self.head(x.mean((2, 3))))


def test_torchrun_diff_matches_single_process(tmp_path):
    torch.manual_seed(0)
    net = ConvBNNet()
    torch.save(net.state_dict(), tmp_path / "before.pt")
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(4, 3, 8, 8))
        net.proj.weight[0, :3] += 1e-3  # one chunk of a big tensor differs: the norms' 2nd pass
        net.bn2.running_var[0] = 0.0  # max_rel becomes inf
        net.bn2.running_mean[1] = float("nan")  # a NaN appears
        net.bn1.running_mean[2] = float("inf")
        net.conv1.bias[0] += 5e-7  # close, not changed
    torch.save(net.state_dict(), tmp_path / "after.pt")
    single, run = _single_and_torchrun(["diff", "before.pt", "after.pt", "--all", "--format",
                                        "json", "--save-metrics"], tmp_path,
                                       ["single.json"], ["ranks.json"])
    assert single.returncode == 1, single.stderr
    assert run.returncode == 1, run.stderr[-3000:]  # torchrun's code when rank 0 exits 1
    assert _only_rank0_failed(run.stderr), run.stderr[-3000:]  # rank 1 exits 0 (or is stopped)
    assert run.stdout == single.stdout  # byte for byte: one report, from rank 0 only
    doc = json.loads(single.stdout)
    by_key = {e["key"]: e for e in doc["entries"]}
    assert by_key["bn2.running_var"]["max_rel"] == "inf"
    assert by_key["bn2.running_mean"]["nonfinite"] == 1
    assert by_key["bn1.num_batches_tracked"]["new"] == 2
    assert by_key["conv1.bias"]["status"] == "close"
    assert by_key["proj.weight"]["status"] == "changed"
    assert by_key["conv2.weight"]["status"] == "equal"
    saved = (tmp_path / "ranks.json").read_text()
    assert saved == (tmp_path / "single.json").read_text()  # envelopes (tuples) survive too
    assert '"envelope"' in saved


class HalfStatsNet(nn.Module):
    """A half-precision BatchNorm inside a float32 net, with corrupted statistics."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)
        self.bn.running_var.data = self.bn.running_var.data.half()
        self.fc.bias.data = self.fc.bias.data.double()


def test_torchrun_check_matches_single_process(tmp_path):
    torch.manual_seed(0)
    net = HalfStatsNet()
    with torch.no_grad():
        net.bn.running_var[3] = -0.5
        net.conv.weight[0, 0, 0, 0] = float("nan")
        net.fc.weight[1, 1] = float("-inf")
    torch.save(net.state_dict(), tmp_path / "bad.pt")
    clean = ConvBNNet()
    torch.save({"model": clean.state_dict(), "epoch": 3}, tmp_path / "clean.pt")
    single, run = _single_and_torchrun(["check", "bad.pt", "clean.pt", "--format", "json"],
                                       tmp_path)
    assert single.returncode == 1, single.stderr
    assert run.returncode == 1, run.stderr[-3000:]
    assert run.stdout == single.stdout
    assert _only_rank0_failed(run.stderr), run.stderr[-3000:]
    ids = {f["id"] for f in json.loads(single.stdout)["findings"]}
    assert {"nan", "inf", "negative-variance", "mixed-param-dtypes"} <= ids


def test_results_travel_exactly():
    from bufinspect import distributed
    from bufinspect.model import Status

    values = [0.1 + 0.2, -0.0, 5e-324, 1.7976931348623157e308, math.inf, -math.inf, 3.0,
              np.float64(1 / 3), np.float32(0.1), np.int64(7), True, 1, None, "x"]
    fields = {"status": Status.CLOSE, "values": values,
              "envelope": ((1.0, 2.5, math.inf), (0.0, -0.0, 1e-300)), "old": False}
    back = distributed.loads(distributed.dumps([[0, fields]]))[0][1]
    assert back["status"] is Status.CLOSE
    assert back["envelope"] == fields["envelope"] and isinstance(back["envelope"][0], tuple)
    assert back["old"] is False and back["values"][10] is True and back["values"][11] == 1
    for got, want in zip(back["values"], values):
        assert type(got) is type(want.item() if isinstance(want, np.generic) else want)
        if isinstance(want, (float, np.floating)):
            assert math.copysign(1, got) == math.copysign(1, float(want))
            assert got == float(want)
    nan = distributed.loads(distributed.dumps(math.nan))
    assert math.isnan(nan)
    with pytest.raises(TypeError):
        distributed.dumps({"a": object()})


def test_distributed_flag_outside_torchrun_is_a_usage_error(cli, monkeypatch, samples):
    for name in ("RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    r = cli("show", samples / "cnn_state_dict.pt", "--stats", "--distributed")
    assert r.exit_code == 2 and "torchrun" in r.stderr and r.stdout == ""
    r = cli("diff", samples / "bn_before.pt", samples / "bn_after_train.pt", "--distributed")
    assert r.exit_code == 2 and "torchrun" in r.stderr and r.stdout == ""
    r = cli("check", samples / "cnn_state_dict.pt", "--distributed")
    assert r.exit_code == 2 and "torchrun" in r.stderr and r.stdout == ""
    # without the flag and outside torchrun, nothing distributed happens (and no torch import)
    r = cli("show", samples / "cnn_state_dict.pt", "--stats", "--format", "json")
    assert r.exit_code == 0
