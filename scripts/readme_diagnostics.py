"""Regenerate the README's "What it finds" examples: build each situation with a real
torchvision ResNet-18 (a few CPU training steps), run bufinspect on it, print the output.

    python scripts/readme_diagnostics.py [WORKDIR]

Needs torchvision (its compiled ops are not needed: if they fail to load against this torch,
their meta registrations are stubbed out).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch
from torch import nn

try:
    import torchvision
except (RuntimeError, OSError):  # compiled ops built for another torch
    for name in [k for k in sys.modules if k.startswith("torchvision")]:
        del sys.modules[name]
    sys.modules["torchvision._meta_registrations"] = types.ModuleType("_meta_registrations")
    import torchvision

NORMS = nn.modules.batchnorm._NormBase
MODELS = '''\
import sys
import types

import torch

try:
    import torchvision
except (RuntimeError, OSError):  # compiled ops built for another torch: not needed here
    for name in [k for k in sys.modules if k.startswith("torchvision")]:
        del sys.modules[name]
    sys.modules["torchvision._meta_registrations"] = types.ModuleType("_meta_registrations")
    import torchvision


class Classifier(torchvision.models.ResNet):
    """ResNet-18 that later gained a persistent buffer (per-class logit scales)."""

    def __init__(self, num_classes=10):
        super().__init__(torchvision.models.resnet.BasicBlock, [2, 2, 2, 2],
                         num_classes=num_classes)
        self.register_buffer("logit_scale", torch.ones(num_classes))


def resnet18():
    return torchvision.models.resnet18(num_classes=10)


def classifier():
    return Classifier()


def classifier_100():
    return Classifier(num_classes=100)
'''


def train(model: nn.Module, steps: int, seed: int, norms: str = "train") -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01,
                          momentum=0.9)
    model.train(norms != "eval")
    if norms == "frozen":
        for m in model.modules():
            if isinstance(m, NORMS):
                m.eval()
    for _ in range(steps):
        loss = model(torch.randn(8, 3, 32, 32, generator=g)).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.resnet18(num_classes=10)


def run(*args: str) -> None:
    cmd = ["bufinspect", *args]
    print(f"$ {' '.join(cmd)}")
    env = dict(os.environ, COLUMNS="100")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    print(done.stdout.rstrip("\n"))
    if done.returncode == 2:
        print(done.stderr.rstrip("\n"))
    print(f"$ echo $?\n{done.returncode}\n")


def main(work: Path) -> None:
    os.chdir(work)
    (work / "models.py").write_text(MODELS)
    sys.path.insert(0, str(work))
    from models import Classifier

    # 1. trained with the whole model in eval mode
    torch.save(train(resnet(), 3, seed=1, norms="eval").state_dict(), "run1_epoch3.pt")
    # 2. a hand-written EMA that averages parameters() only, next to the model
    m = resnet()
    ema = copy.deepcopy(m)
    for step in range(3):
        train(m, 1, seed=10 + step)
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), m.parameters()):
                pe.lerp_(pm, 0.1)
    torch.save({"model": m.state_dict(), "model_ema": ema.state_dict(), "epoch": 3},
               "run2_last.pt")
    # 3. a DDP checkpoint of the model before it gained `logit_scale`
    torch.save({"model": {"module." + k: v for k, v in m.state_dict().items()}, "epoch": 3},
               "ddp_epoch3.pt")
    # 4. the classifier with its logit scales, loaded by code that predates them
    c = train(Classifier(), 1, seed=5)
    torch.save(c.state_dict(), "classifier_v2.pt")
    # 5. fine-tuning with frozen BatchNorm
    base = train(resnet(), 3, seed=20)
    torch.save(base.state_dict(), "pretrained.pt")
    for mod in base.modules():
        if isinstance(mod, NORMS):
            mod.requires_grad_(False)
    torch.save(train(base, 3, seed=21, norms="frozen").state_dict(), "finetuned.pt")

    run("check", "run1_epoch3.pt")
    run("check", "run2_last.pt")
    run("check", "ddp_epoch3.pt", "--model", "models:classifier")
    run("check", "ddp_epoch3.pt", "--model", "models:classifier_100", "--ignore", "key-prefix",
        "--format", "json")
    run("check", "classifier_v2.pt", "--model", "models:resnet18")
    run("diff", "pretrained.pt", "finetuned.pt")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]).resolve())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
