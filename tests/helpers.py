"""Helpers that several test modules share (no test module imports another): small real torch
modules, writers for sharded and DCP folders, the JSON schema, and build-time tools."""

from __future__ import annotations

import json
import os
import sys
import warnings
from importlib import resources
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file
from torch import nn

from bufinspect.model import Role

ROOT = Path(__file__).resolve().parent.parent


def layer_table():
    """scripts/layer_table.py (the build-time introspection of torch's layers)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import layer_table as module

    return module


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.float8_e4m3fn,
          torch.float8_e5m2, torch.complex64]


def planted(path):
    """Tensors of every scanned dtype with NaN, +-Inf and negatives, some larger than a chunk."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    for dt in DTYPES:
        name = str(dt).removeprefix("torch.")
        x = torch.randn(1000, generator=g)
        x[[3, 50]] = float("nan")
        x[7] = float("inf")
        x[8] = float("-inf")
        sd[f"{name}.running_var"] = x.to(dt)
    big = torch.randn(1_500_000, generator=g)  # 6 MB: streamed in two chunks
    big[[10, 1_400_000]] = float("nan")
    big[1_200_000] = -1e30
    sd["big.weight"] = big
    sd["strided.weight"] = torch.randn(64, 64, generator=g).t()  # saved as a non-contiguous view
    # finite bfloat16 takes the integer fast path: signed zeros, all-negative, all-positive
    clean = torch.randn(5000, generator=g)
    clean[0], clean[1] = -0.0, 0.0
    sd["bf16clean.running_var"] = clean.to(torch.bfloat16)
    sd["bf16neg.running_var"] = (-(torch.rand(3000, generator=g) + 0.1)).to(torch.bfloat16)
    sd["bf16pos.weight"] = torch.rand(1_200_000, generator=g).to(torch.bfloat16)  # > a chunk
    torch.save(sd, path)
    return sd


def dcp_save(obj, folder) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no process group": fine for one process
        dcp.save(obj, checkpoint_id=str(folder))


class ShardNet(nn.Module):
    """Convs with BatchNorm buffers, a bf16 head: enough tensors to spread over three shards."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 32, 3), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Linear(32, 64).to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.stem(x)).mean((2, 3))
        return self.head(x.to(torch.bfloat16))


def state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    m = ShardNet()
    m.train()
    m(torch.randn(2, 3, 8, 8))  # move running stats off their defaults
    return {k: v.detach().clone().contiguous() for k, v in m.state_dict().items()}


def save_sharded(sd: dict[str, torch.Tensor], folder, max_shard_size: int, index: bool = True,
                 prefix: str = "model") -> list[str]:
    """Split like `save_pretrained(max_shard_size=...)`: keys in order, a new shard when full."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    used = 0
    for k, v in sd.items():
        n = v.numel() * v.element_size()
        if shards[-1] and used + n > max_shard_size:
            shards.append({})
            used = 0
        shards[-1][k] = v
        used += n
    names = [f"{prefix}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, part in zip(names, shards):
        save_file(part, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    if index:
        total = sum(v.numel() * v.element_size() for v in sd.values())
        (folder / f"{prefix}.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return names


def listing(doc):
    return {e["key"]: (tuple(e["shape"]), e["dtype"], e["role"]) for e in doc["entries"]}


def stats(doc):
    return {e["key"]: e["stats"] for e in doc["entries"]}


class Zoo(nn.Module):
    """Custom state: persistent, non-persistent, int and bool buffers, a frozen parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))
        self.frozen = nn.Parameter(torch.full((4,), 0.5), requires_grad=False)
        self.register_buffer("ema", torch.zeros(4))
        self.register_buffer("cache", torch.arange(4.0), persistent=False)
        self.register_buffer("steps", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("mask", torch.tensor([True, False, True, True]))
        self.child = WeightBuffer()


class WeightBuffer(nn.Module):
    """A buffer literally named `weight` next to an oddly named parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.gain_Δ = nn.Parameter(torch.ones(3))
        self.register_buffer("weight", torch.linspace(0, 1, 3))


def matrix_model() -> nn.Module:
    """One module holding every layer of the matrix (random values, eval-ready)."""
    torch.manual_seed(0)
    from torch.ao.quantization import FakeQuantize, MinMaxObserver

    m = nn.Module()
    m.bn1 = nn.BatchNorm1d(3)
    m.bn2 = nn.BatchNorm2d(4)
    m.bn3 = nn.BatchNorm3d(5, affine=False)
    m.sync = nn.SyncBatchNorm(6)
    m.inorm = nn.InstanceNorm2d(7, affine=True, track_running_stats=True)
    m.lazy = nn.LazyBatchNorm1d()
    m.lazy(torch.randn(4, 9))  # materialize: it becomes a BatchNorm1d with 9 features
    m.ln = nn.LayerNorm(8)
    m.emb = nn.Embedding(10, 6)
    m.lstm = nn.LSTM(3, 5, num_layers=2, bidirectional=True)
    m.gru = nn.GRU(4, 6)
    m.mha = nn.MultiheadAttention(8, 2)
    m.sn = nn.utils.spectral_norm(nn.Linear(5, 7))
    m.snp = nn.utils.parametrizations.spectral_norm(nn.Linear(6, 3))
    m.obs = MinMaxObserver()
    m.obs(torch.randn(10))
    m.fq = FakeQuantize()
    m.zoo = Zoo()
    return m


def truth(model: nn.Module) -> dict[str, tuple[Role, bool | None]]:
    """key -> (role, persistent) from the live module."""
    out = {k: (Role.PARAMETER, None) for k, _ in model.named_parameters(remove_duplicate=False)}
    state = model.state_dict()
    for k, _ in model.named_buffers(remove_duplicate=False):
        out[k] = (Role.BUFFER, k in state)
    return out


def schema():
    text = resources.files("bufinspect").joinpath("schema/bufinspect-1.json").read_text()
    return json.loads(text)


class Payload:
    """Unpickling this would create a file: the sentinel must never appear."""

    def __init__(self, sentinel: str):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))
