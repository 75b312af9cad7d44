"""Build the torch.nn / torch.ao layer signature table by introspecting the installed torch.

A build-time tool, not shipped in the package: used by `scripts/make_layer_table.py` (which writes
`bufinspect/data/layers.json`, shipped so that listing never imports torch) and by the test that
checks the shipped table is current.
Every layer class is built on the `meta` device (no memory), with a few constructor variants
(each boolean flag toggled, a few extra options), and every module in the built tree records its
own parameter and persistent buffer names, dimensions, dtype kinds and equal-shape groups.
"""

from __future__ import annotations

import inspect
import itertools
import re
import warnings
from typing import Any

_DIGITS = re.compile(r"\d+")

# constructor options that change which tensors a layer holds, beyond its boolean flags
_EXTRA = {
    "LSTM": [{"input_size": 3, "hidden_size": 5, "proj_size": 2, "num_layers": 2,
              "bidirectional": True}],
    "MultiheadAttention": [{"kdim": 3, "vdim": 5}],
    # fused QAT conv + BN: `bias=None` by default (not a boolean flag to toggle)
    **{f"ConvBn{r}{d}d": [{"bias": True}] for r in ("", "ReLU") for d in (1, 2, 3)},
}
# classes whose constructor takes *args: their real arguments, with the flags to toggle
_RNN = ({"input_size": 3, "hidden_size": 5, "num_layers": 2}, ("bias", "bidirectional"))
_EXPLICIT = {"RNN": _RNN, "LSTM": _RNN, "GRU": _RNN}
_INT_SETS = ([3, 5, 7, 11, 13, 17], [4, 4, 4, 4, 4, 4], [2, 2, 2, 2, 2, 2], [8, 4, 2, 2, 2, 2])
_SKIP_ARGS = {"device", "dtype", "factory_kwargs"}


def pattern(name: str) -> str:
    """A tensor name with digit runs replaced by `#` (`weight_ih_l1` -> `weight_ih_l#`)."""
    return _DIGITS.sub("#", name)


def _classes() -> list[tuple[str, type]]:
    import torch.ao.nn.intrinsic.qat as iqat
    import torch.ao.nn.qat as qat
    import torch.ao.quantization as aoq
    import torch.ao.quantization.fake_quantize as fq
    import torch.ao.quantization.observer as obs
    from torch import nn

    out = []
    for mod in (nn, qat, iqat, obs, fq, aoq):
        for name in sorted(dir(mod)):
            cls = getattr(mod, name)
            if (isinstance(cls, type) and issubclass(cls, nn.Module) and not name.startswith("_")
                    and "Lazy" not in name and not inspect.isabstract(cls)):
                out.append((f"{mod.__name__}.{name}", cls))
    seen, unique = set(), []
    for full, cls in out:
        if cls not in seen:
            seen.add(cls)
            unique.append((full, cls))
    return unique


def _variants(cls: type) -> list[dict[str, Any]]:
    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return []
    required, flags = [], []
    if cls.__name__ in _EXPLICIT:
        base, names = _EXPLICIT[cls.__name__]
        out = [{**base, **dict(c)} for c in itertools.product(*[[(n, True), (n, False)]
                                                                for n in names])]
        return out + _EXTRA.get(cls.__name__, [])
    for p in list(sig.parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in _SKIP_ARGS:
            continue
        if p.default is inspect.Parameter.empty:
            required.append(p.name)
        elif isinstance(p.default, bool):
            flags.append((p.name, p.default))
    out = []
    for ints in _INT_SETS:
        base = dict(zip(required, ints))
        # fused QAT conv + BN (ConvBn2d, ...: _metadata version 2) need a qconfig; the other QAT
        # modules hold a plain Conv's or Linear's keys at version 1 and add nothing
        if "qconfig" in sig.parameters and cls.__name__.startswith("ConvBn"):
            import torch.ao.quantization as aoq

            base["qconfig"] = aoq.get_default_qat_qconfig("fbgemm")
        if len(base) < len(required):
            continue
        toggles = [[(n, d), (n, not d)] for n, d in flags]
        combos = itertools.product(*toggles) if len(flags) <= 4 else (
            [(n, d) for n, d in flags],
            *([(m, d if m != n else not d) for m, d in flags] for n, _ in flags))
        for combo in combos:
            out.append({**base, **dict(combo)})
        for extra in _EXTRA.get(cls.__name__, []):
            out.append({**base, **extra})
    return out


def _kind(dtype: Any) -> str:
    if dtype.is_floating_point or dtype.is_complex:
        return "float"
    if str(dtype).removeprefix("torch.").startswith(("qint", "quint")):
        return "quantized"
    return "bool" if str(dtype) == "torch.bool" else "int"


def _signatures(root: Any, label: str) -> list[dict[str, Any]]:
    """One signature per module of `root` whose state dict holds exactly its own tensors."""
    sd = root.state_dict()
    out = []
    for prefix, m in root.named_modules():
        own_sd = {k.rpartition(".")[2]: v for k, v in sd.items()
                  if k.rpartition(".")[0] == prefix and hasattr(v, "shape")}
        roles = {n: "parameter" for n, p in m._parameters.items() if p is not None}
        roles.update({n: "buffer" for n, b in m._buffers.items()
                      if b is not None and n not in m._non_persistent_buffers_set})
        if not roles or set(roles) != set(own_sd) or any(
                k.rpartition(".")[0] == prefix and k.rpartition(".")[2] not in roles for k in sd):
            continue
        tensors: dict[str, list[Any]] = {}
        for n in sorted(own_sd):
            desc = [roles[n], own_sd[n].dim(), _kind(own_sd[n].dtype)]
            if tensors.setdefault(pattern(n), desc) != desc:
                break  # layers of one pattern disagree: no usable signature
        else:
            same: dict[tuple[str, str], bool] = {}
            for a in own_sd:
                for b in own_sd:
                    if pattern(a) < pattern(b) and _DIGITS.findall(a) == _DIGITS.findall(b):
                        k = (pattern(a), pattern(b))
                        same[k] = same.get(k, True) and own_sd[a].shape == own_sd[b].shape
            pairs = sorted(k for k, ok in same.items() if ok)
            out.append({"class": type(m).__name__ if prefix else label,
                        "version": getattr(type(m), "_version", 1),
                        "tensors": tensors, "same_shape": [list(p) for p in pairs]})
    return out


def _wrapped(make: Any, label: str) -> list[dict[str, Any]]:
    import torch
    from torch import nn

    out = []
    with torch.device("meta"):
        for layer in (lambda: nn.Linear(3, 5), lambda: nn.Conv2d(3, 5, 2),
                      lambda: nn.Linear(3, 5, bias=False), lambda: nn.Embedding(7, 3),
                      lambda: nn.Conv1d(3, 5, 2), lambda: nn.Conv3d(3, 5, 2)):
            try:
                out += _signatures(make(layer()), label + ":" + type(layer()).__name__)
            except Exception:  # a wrapper that cannot build on meta is simply not in the table
                pass
    return out


def introspect() -> dict[str, Any]:
    """Return the signature table for the installed torch (importing torch: seconds)."""
    import torch
    from torch import nn

    found: list[dict[str, Any]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for full, cls in _classes():
            for kwargs in _variants(cls):
                try:
                    with torch.device("meta"):
                        m = cls(**kwargs)
                    sigs = _signatures(m, cls.__name__)
                except Exception:  # classes that need other arguments, or cannot live on meta
                    continue
                for s in sigs:
                    if s["class"] == cls.__name__:
                        s["class"] = full.rpartition(".")[2]
                found += sigs
        sn = nn.utils.spectral_norm
        found += _wrapped(lambda m: sn(m) if m.weight.dim() > 1 else sn(m, dim=0), "spectral_norm")
        found += _wrapped(nn.utils.parametrizations.spectral_norm, "parametrizations.spectral_norm")
        found += _wrapped(nn.utils.parametrizations.weight_norm, "parametrizations.weight_norm")
        found += _wrapped(nn.utils.weight_norm, "weight_norm")
        from torch.nn.utils import prune
        found += _wrapped(lambda m: prune.identity(m, "weight"), "prune")
        found += _wrapped(lambda m: prune.identity(prune.identity(m, "weight"), "bias")
                          if m.bias is not None else m, "prune")
        found += _quantized()
        found += _LAYOUTS
    # one signature per (version, tensors); equal shapes only where every variant agrees
    merged: dict[str, dict[str, Any]] = {}
    for s in found:
        key = repr((s["version"], sorted(s["tensors"].items())))
        entry = merged.setdefault(key, {"classes": [], "version": s["version"],
                                        "tensors": s["tensors"],
                                        "same_shape": s["same_shape"]})
        entry["same_shape"] = [p for p in entry["same_shape"] if p in s["same_shape"]]
        if s["class"] not in entry["classes"]:
            entry["classes"].append(s["class"])
    table = []
    for s in merged.values():
        s["classes"].sort()
        table.append(s)
    table = _optional_bias(_any_rank(table))
    table.sort(key=lambda s: (s["classes"][0], repr(s["tensors"]), s["version"]))
    return {"torch": torch.__version__.split("+")[0], "signatures": table}


# Layouts that introspection of torch alone does not produce. Role "unknown": the layout does not
# decide that tensor (it is a parameter in one layer with these keys and a buffer in another).
_LAYOUTS: list[dict[str, Any]] = [
    # torchvision.ops.FrozenBatchNorm2d, transformers' *FrozenBatchNorm2d (all four are buffers)
    # and BatchNorm saved before num_batches_tracked existed (weight and bias parameters): the
    # running statistics are buffers in every layer with this layout
    {"class": "FrozenBatchNorm2d", "version": 1,
     "tensors": {"weight": ["unknown", 1, "float"], "bias": ["unknown", 1, "float"],
                 "running_mean": ["buffer", 1, "float"], "running_var": ["buffer", 1, "float"]},
     "same_shape": [["bias", "running_mean"], ["bias", "running_var"], ["bias", "weight"],
                    ["running_mean", "running_var"], ["running_mean", "weight"],
                    ["running_var", "weight"]]},
]


def _quantized() -> list[dict[str, Any]]:
    """Converted (torch.ao.nn.quantized) layers: their state dicts hold packed weights that are
    neither parameters nor buffers (role "unknown") and `scale` / `zero_point`, which bufinspect
    reports as buffers (state the layer restores on load, like a registered buffer)."""
    import torch
    import torch.ao.nn.intrinsic.quantized as iq
    import torch.ao.nn.quantized as nnq

    out = []
    makers = [(nnq.Conv1d, (3, 5, 2)), (nnq.Conv2d, (3, 5, 2)), (nnq.Conv3d, (3, 5, 2)),
              (nnq.ConvTranspose1d, (3, 5, 2)), (nnq.ConvTranspose2d, (3, 5, 2)),
              (nnq.ConvTranspose3d, (3, 5, 2)), (iq.ConvReLU1d, (3, 5, 2)),
              (iq.ConvReLU2d, (3, 5, 2)), (iq.ConvReLU3d, (3, 5, 2)), (nnq.Linear, (3, 5)),
              (iq.LinearReLU, (3, 5)), (nnq.Quantize, (0.1, 2, torch.quint8))]
    for cls, args in makers:
        flag = None if cls is nnq.Quantize else "bias_" if "Linear" in cls.__name__ else "bias"
        for bias in ((True, False) if flag else (None,)):
            try:
                m = cls(*args, **({flag: bias} if flag else {}))
            except Exception:  # a build without the quantized engine: left out of the table
                continue
            own = {k: v for k, v in m.state_dict().items()
                   if "." not in k and isinstance(v, torch.Tensor)}
            tensors = {pattern(k): ["buffer" if k in ("scale", "zero_point") else "unknown",
                                    v.dim(), _kind(v.dtype)] for k, v in sorted(own.items())}
            out.append({"class": "quantized." + cls.__name__,
                        "version": getattr(cls, "_version", 1), "tensors": tensors,
                        "same_shape": []})
    return out


def _any_rank(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A parametrization's originals have the rank of whatever tensor was parametrized: the
    ParametrizationList rows keep no dimension (null), one row per key set."""
    out: dict[str, dict[str, Any]] = {}
    for s in table:
        if s["classes"] == ["ParametrizationList"]:
            s = {**s, "tensors": {k: [r, None, kind] for k, (r, _, kind) in s["tensors"].items()},
                 "same_shape": []}
        key = repr((s["version"], sorted(s["tensors"].items()), s["classes"]))
        out.setdefault(key, s)
    return list(out.values())


def _optional_bias(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A layer's `bias` parameter is optional (`bias=False`): rows that hold one say so, and the
    row of the same layers without it is folded in, instead of one row per combination."""
    def without_bias(s: dict[str, Any]) -> str:
        tensors = {k: v for k, v in s["tensors"].items() if k != "bias"}
        return repr((s["version"], sorted(tensors.items())))

    with_bias = {}
    for s in table:
        if s["tensors"].get("bias", [None])[0] == "parameter" and len(s["tensors"]) > 1:
            s["optional"] = ["bias"]
            with_bias.setdefault(without_bias(s), []).append(s)
    out = []
    for s in table:
        rows = [] if "bias" in s["tensors"] else with_bias.get(without_bias(s), [])
        if any(set(s["classes"]) <= set(r["classes"]) for r in rows):
            continue  # the same layers, bias=False: covered by the row with an optional bias
        out.append(s)
    return out
