"""Real models from torchvision, timm, transformers, peft, Lightning and torch's own utilities,
saved in their habitual ways, with the truth taken from the live modules.

Shared by tests/test_realworld_*.py and scripts/realworld_matrix.py. Every library is optional:
`need(name)` skips the calling test when it is missing. torchvision wheels on PyPI are built for
CUDA; against a CPU torch, `import torchvision` fails registering its fake kernels
(`torchvision::nms does not exist`), so `need("torchvision")` stubs that one module first (here,
in the tests only: bufinspect itself never imports torchvision).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import sys
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest


def stub_torchvision_registrations() -> None:
    """Let a CUDA-built torchvision import against a CPU torch (see the docstring): its
    `_meta_registrations` module only registers fake kernels for its C++ ops. timm and
    transformers import torchvision whenever it is installed, so conftest calls this first."""
    if "torchvision" not in sys.modules:
        sys.modules.setdefault("torchvision._meta_registrations",
                               types.ModuleType("torchvision._meta_registrations"))


def need(name: str) -> Any:
    """Import an optional library for a test, or skip the test cleanly."""
    stub_torchvision_registrations()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except Exception as exc:  # ImportError, or a library that fails on this torch
        pytest.skip(f"{name} is not usable here ({type(exc).__name__}: {str(exc)[:80]})")


def truth(model: Any) -> dict[str, tuple[str, bool | None]]:
    """key -> (role, persistent) of every parameter and buffer of a live module."""
    out: dict[str, tuple[str, bool | None]] = {}
    for prefix, m in model.named_modules(remove_duplicate=False):
        dot = prefix + "." if prefix else ""
        for n, p in m._parameters.items():
            if p is not None:
                out[dot + n] = ("parameter", None)
        for n, b in m._buffers.items():
            if b is not None:
                out[dot + n] = ("buffer", n not in m._non_persistent_buffers_set)
    return out


@dataclass
class Score:
    """How bufinspect's roles compare with the live module for one saved file."""

    case: str
    tensors: int = 0
    wrong: list[str] = field(default_factory=list)  # definite roles that disagree with torch
    unknown: list[str] = field(default_factory=list)
    persistence: list[str] = field(default_factory=list)  # module pickles: wrong persistence
    foreign: list[str] = field(default_factory=list)  # file keys the live module does not have
    readable: bool = True
    error: str = ""
    calls: tuple = ()


def score(case: str, path: str | Path, model: Any, *, container: str | None = None,
          prefix: str = "", extra: tuple[str, ...] = (), module_state: bool = True) -> Score:
    """Load `path` with bufinspect and compare every module tensor with `model`'s truth.

    `prefix` is prepended to the model's keys (`model.` inside a Lightning module);
    `extra` lists more bufinspect show options (`--hf-config`); `module_state=False` for a file
    that holds none (an optimizer or scheduler file beside the weights): only read, not scored.
    """
    import bufinspect
    from bufinspect.errors import BufinspectError

    s = Score(case)
    rename = None
    try:
        ck = bufinspect.load(str(path))
        if "--hf-config" in extra:
            from bufinspect import annotate

            from bufinspect.annotate import hf_key_renamer as key_renamer

            hf_model = annotate.build_hf(ck.path)
            rename = key_renamer(hf_model)
            ck, _ = annotate.apply_module(ck, hf_model, "model:hf-config", rename=rename)
    except BufinspectError as exc:
        s.readable, s.error = False, exc.message
        return s
    s.calls = ck.calls
    if not module_state:
        return s
    if rename is None and hasattr(model, "base_model_prefix") and hasattr(model, "config"):
        # the truth for keys saved under hub names
        from bufinspect.annotate import hf_key_renamer as key_renamer

        rename = key_renamer(model)
    want = {prefix + k: v for k, v in truth(model).items()}
    from bufinspect.model import ContainerKind

    for c in ck.containers:
        if c.kind not in (ContainerKind.STATE_DICT, ContainerKind.MODULE):
            continue
        if container is not None and c.path != container:
            continue
        for e in c.entries:
            key = e.key if e.key in want or rename is None else rename(e.key)
            if key not in want:
                s.foreign.append(e.key)
                continue
            s.tensors += 1
            role, persistent = want[key]
            if e.role.value in ("parameter", "buffer") and e.role.value != role:
                s.wrong.append(f"{e.key}: {e.role.value} ({e.evidence}), torch says {role}")
            elif e.role.value == "unknown":
                s.unknown.append(f"{e.key} ({e.evidence})")
            if c.kind is ContainerKind.MODULE and role == "buffer" and e.persistent != persistent:
                s.persistence.append(e.key)
    return s


def train_step(model: Any, opt: Any, params: Any = None) -> None:
    """One optimizer step with a loss that reaches every trainable parameter."""
    import torch

    opt.zero_grad()
    loss = sum((p.float() ** 2).sum() for p in (params or model.parameters()) if p.requires_grad)
    loss.backward()
    opt.step()
    del torch


def save_variants(model: Any, folder: Path, name: str, *, module: bool = True,
                  train: bool = True) -> dict[str, tuple[Path, dict[str, Any]]]:
    """The habitual saves of one model: state dict, whole module, training dict with an
    optimizer and a MultiStepLR schedule. Returns kind -> (path, score keyword arguments)."""
    import torch

    out = {}
    sd = folder / f"{name}.sd.pt"
    torch.save(model.state_dict(), sd)
    out["state_dict"] = (sd, {})
    if module:
        whole = folder / f"{name}.module.pt"
        try:
            torch.save(model, whole)
            out["module"] = (whole, {})
        except RuntimeError as exc:  # parametrized modules refuse torch.save(model)
            if "parametrized" not in str(exc):
                raise
    if train:
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[30, 60])
        train_step(model, opt)
        sched.step()
        path = folder / f"{name}.train.pt"
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                    "lr_scheduler": sched.state_dict(), "epoch": 1}, path)
        out["training"] = (path, {"container": "model"})
    return out


# ---- the models ------------------------------------------------------------------------------


def torchvision_models() -> dict[str, Callable[[], Any]]:
    tv = need("torchvision")
    ops = tv.ops
    return {
        "tv_resnet18": lambda: tv.models.resnet18(),
        "tv_vit_tiny": lambda: tv.models.VisionTransformer(
            image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
            num_classes=10),
        "tv_mobilenet_v3_small": lambda: tv.models.mobilenet_v3_small(num_classes=10),
        "tv_resnet18_frozenbn": lambda: tv.models.resnet18(norm_layer=ops.FrozenBatchNorm2d),
        "tv_convnext_tiny_cfg": lambda: tv.models.ConvNeXt(
            [tv.models.convnext.CNBlockConfig(8, 16, 1),
             tv.models.convnext.CNBlockConfig(16, None, 1)],
            num_classes=10),
        "tv_swin_tiny_cfg": lambda: tv.models.SwinTransformer(
            patch_size=[4, 4], embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=[2, 2],
            num_classes=10),
    }


def timm_models() -> dict[str, Callable[[], Any]]:
    timm = need("timm")
    return {
        "timm_vit_tiny": lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False,
                                                   img_size=32, depth=2, num_classes=10),
        "timm_eva02_tiny": lambda: timm.create_model("eva02_tiny_patch14_224", pretrained=False,
                                                     img_size=28, depth=2, num_classes=10),
        "timm_resnet18": lambda: timm.create_model("resnet18", pretrained=False, num_classes=10),
        "timm_convnext_atto": lambda: timm.create_model("convnext_atto", pretrained=False,
                                                        num_classes=10),
        "timm_efficientnet_b0": lambda: timm.create_model("efficientnet_b0", pretrained=False,
                                                          num_classes=10),
    }


def hf_models() -> dict[str, Callable[[], Any]]:
    tr = need("transformers")
    small = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24)
    return {
        "hf_bert": lambda: tr.BertForMaskedLM(tr.BertConfig(vocab_size=64,
                                                            max_position_embeddings=32, **small)),
        "hf_roberta": lambda: tr.RobertaModel(tr.RobertaConfig(vocab_size=64,
                                                               max_position_embeddings=40,
                                                               **small)),
        "hf_gpt2": lambda: tr.GPT2LMHeadModel(tr.GPT2Config(vocab_size=64, n_positions=32,
                                                            n_embd=16, n_layer=1, n_head=2,
                                                            bos_token_id=0, eos_token_id=0)),
        "hf_vit": lambda: tr.ViTForImageClassification(tr.ViTConfig(image_size=32, patch_size=16,
                                                                    num_labels=3, **small)),
        "hf_whisper": lambda: tr.WhisperForConditionalGeneration(tr.WhisperConfig(
            vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1,
            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=24,
            decoder_ffn_dim=24, num_mel_bins=8, max_source_positions=16,
            max_target_positions=16, pad_token_id=1, bos_token_id=2, eos_token_id=3,
            decoder_start_token_id=2, suppress_tokens=None, begin_suppress_tokens=None)),
        "hf_wav2vec2": lambda: tr.Wav2Vec2Model(tr.Wav2Vec2Config(
            hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24,
            conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3),
            num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2)),
        "hf_llama": lambda: tr.LlamaForCausalLM(tr.LlamaConfig(
            vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)),
        "hf_detr": lambda: tr.DetrForObjectDetection(tr.DetrConfig(
            use_timm_backbone=False, use_pretrained_backbone=False,
            backbone_config=tr.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16],
                                            depths=[1, 1], layer_type="basic",
                                            out_features=["stage2"]),
            d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=24, decoder_ffn_dim=24, num_queries=4,
            num_labels=3)),
    }


@contextlib.contextmanager
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.redirect_stderr(io.StringIO()):
            yield


@functools.lru_cache(maxsize=None)
def _seed() -> None:
    import torch

    torch.manual_seed(0)


# ---- torch's own utilities -------------------------------------------------------------------


def _dcgan_discriminator() -> Any:
    from torch import nn

    return nn.Sequential(nn.Conv2d(3, 8, 4, 2, 1, bias=False), nn.LeakyReLU(0.2),
                         nn.Conv2d(8, 16, 4, 2, 1, bias=False), nn.BatchNorm2d(16),
                         nn.LeakyReLU(0.2), nn.Conv2d(16, 1, 4, 1, 0, bias=False))


def torch_utility_cases(folder: Path) -> list[tuple[str, Path, Any, dict[str, Any]]]:
    """(case, path, live module, score kwargs) for files made by torch's own utilities."""
    import torch
    from torch import nn
    from torch.nn.utils import parametrizations, prune

    out = []

    def save(name: str, obj: Any, model: Any, **kw: Any) -> None:
        path = folder / f"{name}.pt"
        torch.save(obj, path)
        out.append((name, path, model, kw))

    # prune: weight_orig is the parameter, weight_mask / bias_mask buffers
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.LazyLinear(4))
    m(torch.randn(1, 3, 8, 8))
    prune.l1_unstructured(m[0], "weight", amount=0.3)
    prune.random_unstructured(m[0], "bias", amount=0.3)
    prune.l1_unstructured(m[3], "weight", amount=0.5)
    save("prune", m.state_dict(), m)
    save("prune_module", m, m)

    # old-style spectral_norm / weight_norm on convs without a bias (DCGAN)
    d = _dcgan_discriminator()
    for i in (0, 2, 5):
        d[i] = nn.utils.spectral_norm(d[i])
    save("spectral_norm_old_nobias", d.state_dict(), d)
    g = _dcgan_discriminator()
    for i in (0, 2, 5):
        g[i] = nn.utils.weight_norm(g[i])
    save("weight_norm_old_nobias", g.state_dict(), g)

    # parametrizations of any rank: wav2vec2's positional Conv1d weight_norm over dim=2
    p = nn.Sequential(nn.Conv1d(8, 8, 5, padding=2, groups=2), nn.Conv2d(8, 4, 3),
                      nn.Linear(4, 4, bias=False), nn.Conv3d(2, 2, 1, bias=False))
    parametrizations.weight_norm(p[0], name="weight", dim=2)
    parametrizations.weight_norm(p[1])
    parametrizations.spectral_norm(p[2])
    parametrizations.weight_norm(p[3])
    save("parametrizations", p.state_dict(), p)
    opt = torch.optim.SGD(p.parameters(), lr=0.1, momentum=0.9)
    train_step(p, opt)
    save("parametrizations_train", {"model": p.state_dict(), "optimizer": opt.state_dict()}, p,
         container="model")

    # keep_vars=True: Parameter objects beside plain buffers
    k = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Linear(4, 2))
    k.register_buffer("scale", torch.ones(1))
    k[2].register_buffer("centers", torch.zeros(2))
    save("keep_vars", k.state_dict(keep_vars=True), k)

    # DCP-style optimizer state keyed by parameter name (get_state_dict)
    from torch.distributed.checkpoint.state_dict import get_state_dict

    dm = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    dm.register_buffer("ema", torch.zeros(2))
    dm[2].register_buffer("temperature", torch.ones(()))
    dopt = torch.optim.Adam(dm.parameters())
    train_step(dm, dopt)
    with quiet():
        msd, osd = get_state_dict(dm, dopt)
    save("dcp_get_state_dict", {"model": msd, "optim": osd}, dm, container="model")
    import torch.distributed.checkpoint as dcp

    with quiet():
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(folder / "dcp_folder"))
    out.append(("dcp_folder", folder / "dcp_folder", dm, {"container": "model"}))

    # optimizer alignment: a first float tensor of each module is a parameter
    am = nn.Sequential(nn.Linear(4, 4), _Scaled(4), nn.Linear(4, 4))
    aopt = torch.optim.SGD(am.parameters(), lr=0.1, momentum=0.9)
    train_step(am, aopt)
    save("alignment_train", {"model": am.state_dict(), "optimizer": aopt.state_dict()}, am,
         container="model")

    # quantization: fused QAT (ConvBn2d / ConvBnReLU2d, _metadata version 2), then converted
    q = _qat_model()
    save("qat_fused", q.state_dict(), q)
    import torch.ao.quantization as aoq

    q.eval()
    with quiet():
        converted = aoq.convert(q)
    save("quantized_converted", converted.state_dict(), converted)

    # a torchvision-style detection training dict (MultiStepLR keeps a Counter)
    tm = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    topt = torch.optim.SGD(tm.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.MultiStepLR(topt, milestones=[16, 22], gamma=0.1)
    train_step(tm, topt)
    sched.step()
    save("detection_training_dict", {"model": tm.state_dict(), "optimizer": topt.state_dict(),
                                      "lr_scheduler": sched.state_dict(), "epoch": 0}, tm,
         container="model")
    return out


def _make_scaled_class():
    import torch
    from torch import nn

    class Scaled(nn.Module):
        """A custom layer: a parameter and a same-shaped float buffer."""

        def __init__(self, n: int):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(n))
            self.register_buffer("running_gain", torch.ones(n))

        def forward(self, x):
            return x * self.gain

    return Scaled


def _Scaled(n: int) -> Any:
    return _make_scaled_class()(n)


def _qat_model() -> Any:
    import torch
    import torch.ao.quantization as aoq
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = aoq.QuantStub()
            self.features = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4),
                                                        nn.ReLU()),
                                          nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.flat = nn.Flatten()
            self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Linear(4, 3))
            self.dequant = aoq.DeQuantStub()

        def forward(self, x):
            x = self.quant(x)
            x = self.classifier(self.flat(self.pool(self.features(x))))
            return self.dequant(x)

    m = Net().train()
    with quiet():
        m = aoq.fuse_modules_qat(m, [["features.0.0", "features.0.1", "features.0.2"],
                                     ["features.1.0", "features.1.1"]])
        m.qconfig = aoq.get_default_qat_qconfig("fbgemm")
        m = aoq.prepare_qat(m)
        m(torch.randn(2, 3, 8, 8))
    return m


def peft_cases(folder: Path) -> list[tuple[str, Path, Any, dict[str, Any]]]:
    """A LoRA-wrapped tiny BERT: the wrapped model's state dict, and a training dict."""
    import torch

    tr = need("transformers")
    peft = need("peft")
    base = hf_models()["hf_bert"]()
    with quiet():
        model = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["query", "value"]))
    out = []
    path = folder / "peft_lora.sd.pt"
    torch.save(model.state_dict(), path)
    out.append(("peft_lora.state_dict", path, model, {}))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    train_step(model, opt)
    path = folder / "peft_lora.train.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)
    out.append(("peft_lora.training", path, model, {"container": "model"}))
    path = folder / "peft_lora.module.pt"
    torch.save(model, path)
    out.append(("peft_lora.module", path, model, {}))
    del tr
    return out


def lightning_cases(folder: Path) -> list[tuple[str, Path, Any, dict[str, Any]]]:
    """A LightningModule trained for two steps by a Trainer: its `.ckpt`."""
    import torch
    from torch import nn

    L = need("lightning")

    class Classifier(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.save_hyperparameters({"lr": 0.01, "widths": [8, 4]})
            self.model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
            self.register_buffer("class_weights", torch.ones(4))

        def training_step(self, batch, _):
            x, y = batch
            return nn.functional.cross_entropy(self.model(x), y, weight=self.class_weights)

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)
            return [opt], [torch.optim.lr_scheduler.MultiStepLR(opt, [1])]

    data = torch.utils.data.TensorDataset(torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,)))
    module = Classifier()
    with quiet():
        trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False,
                            enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=str(folder))
        trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    path = folder / "lightning.ckpt"
    trainer.save_checkpoint(path)
    return [("lightning.ckpt", path, module, {"container": "state_dict"})]


def accelerate_cases(folder: Path) -> list[tuple[str, Path, Any, dict[str, Any]]]:
    """`Accelerator.save_state` (model.safetensors beside optimizer.bin, scheduler.bin and the
    RNG states, each its own torch.save file) and `Accelerator.save_model`."""
    import torch
    from torch import nn

    accelerate = need("accelerate")
    with quiet():
        acc = accelerate.Accelerator(cpu=True)
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(),
                              nn.Linear(36, 2))
        opt = torch.optim.AdamW(model.parameters())
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [2])
        model, opt, sched = acc.prepare(model, opt, sched)
        acc.backward(model(torch.randn(2, 3, 5, 5)).sum())
        opt.step()
        sched.step()
        acc.save_state(str(folder / "state"))
        acc.save_model(model, str(folder / "model"))
    out = [("accelerate.save_state", folder / "state" / "model.safetensors", model, {}),
           ("accelerate.save_model", folder / "model" / "model.safetensors", model, {})]
    for extra in sorted((folder / "state").iterdir()):  # optimizer, scheduler, RNG states
        if extra.suffix in (".bin", ".pkl"):
            out.append((f"accelerate.{extra.name}", extra, model, {"module_state": False}))
    return out


def _library_cases(folder: Path, models: dict[str, Callable[[], Any]], wanted: list[str]):
    for name, make in models.items():
        if wanted and not any(w in name for w in wanted):
            continue
        with quiet():
            model = make()
        for kind, (path, kw) in save_variants(model, folder, name).items():
            yield f"{name}.{kind}", path, model, kw
        if name.startswith("hf_"):
            hf = folder / name
            model.save_pretrained(hf)
            yield f"{name}.save_pretrained", hf / "model.safetensors", model, {}
            yield f"{name}.save_pretrained+hf-config", hf / "model.safetensors", model, {
                "extra": ("--hf-config",)}


def all_cases(folder: Path, wanted: list[str] = (), on_skip: Callable[[str, str], None] = None):
    """Build every case and yield its Score (libraries that are missing are reported)."""
    import torch

    torch.manual_seed(0)
    groups = [("torchvision", lambda: _library_cases(folder, torchvision_models(), wanted)),
              ("timm", lambda: _library_cases(folder, timm_models(), wanted)),
              ("transformers", lambda: _library_cases(folder, hf_models(), wanted)),
              ("peft", lambda: peft_cases(folder)),
              ("accelerate", lambda: accelerate_cases(folder)),
              ("lightning", lambda: lightning_cases(folder)),
              ("torch", lambda: torch_utility_cases(folder))]
    for lib, make in groups:
        if wanted and lib in ("peft", "accelerate", "lightning") and not any(
                w in lib for w in wanted):
            continue
        try:
            cases = list(make())
        except pytest.skip.Exception as exc:
            if on_skip:
                on_skip(lib, str(exc))
            continue
        for case, path, model, kw in cases:
            if wanted and not any(w in case or w == lib for w in wanted):
                continue
            kw = dict(kw)
            extra = kw.pop("extra", ())
            yield score(case, path, model, extra=extra, **kw)
