"""`show --stats` under torchrun (2 ranks, gloo, loopback) prints the single-process report."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import torch

from conftest import ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_ranks_match_single_process(cli, tmp_path):
    torch.manual_seed(0)
    sd = {f"block{i}.conv.weight": torch.randn(16, 8, 3, 3) for i in range(12)}
    sd.update({f"block{i}.bn.running_mean": torch.randn(16) for i in range(12)})
    sd["head.weight"] = torch.randn(1000, 64).to(torch.bfloat16)
    path = tmp_path / "ck.pt"
    torch.save(sd, path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MASTER_ADDR": "127.0.0.1"}
    env.pop("OPENBLAS_NUM_THREADS", None)  # as a user's shell has it
    single = subprocess.run([sys.executable, "-m", "bufinspect", "show", str(path), "--stats",
                             "--format", "json"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert single.returncode == 0, single.stderr
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node",
           "2", "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           "-m", "bufinspect", "show", str(path), "--stats", "--jobs", "1", "--format", "json"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout) == json.loads(single.stdout)
    assert run.stdout == single.stdout  # byte for byte: one report, from rank 0 only


def test_distributed_flag_outside_torchrun_is_a_usage_error(cli, monkeypatch, samples):
    for name in ("RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    r = cli("show", samples / "cnn_state_dict.pt", "--stats", "--distributed")
    assert r.exit_code == 2 and "torchrun" in r.stderr and r.stdout == ""
    # without the flag and outside torchrun, nothing distributed happens (and no torch import)
    r = cli("show", samples / "cnn_state_dict.pt", "--stats", "--format", "json")
    assert r.exit_code == 0
