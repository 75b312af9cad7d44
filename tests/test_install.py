"""The package as users get it: `pip install .` and the built wheel, each in a fresh venv with no
system site packages. Neither may bring torch (or a CUDA or triton wheel), and the commands must
give there, byte for byte, the JSON they give here with torch installed.

Each test builds a venv and installs into it (10-30 s): marked slow, run by .ci/run all the same.
`.ci/run` hands over the wheel it built and checked with twine (BUFINSPECT_WHEEL); run alone, the
test builds one with `pip wheel`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

import fresh_venv
from bufinspect import _torch

pytestmark = pytest.mark.slow

ROOT = fresh_venv.ROOT
S = "sample_checkpoints/"
SAMPLES = sorted(S + p.name for p in (ROOT / "sample_checkpoints").iterdir()
                 if p.suffix in (".pt", ".safetensors"))
BN = [S + "bn_before.pt", S + "bn_after_train.pt", S + "bn_after_eval.pt"]

# every command that reads data, on the samples (relative paths: the documents name them)
CASES = (
    [["show", p] for p in SAMPLES]
    + [["show", "--stats", p] for p in (BN[1], S + "cnn.safetensors", S + "train_adam.pt",
                                          S + "buffer_zoo_module.pt")]
    + [["diff", BN[0], BN[1]], ["diff", "--all", BN[0], BN[2]], ["diff", "--params", BN[1], BN[2]],
       ["diff", "--all", S + "cnn_state_dict.pt", S + "cnn.safetensors"],
       ["diff", "--all", S + "cnn_state_dict.pt", S + "cnn_state_dict_legacy.pt"]]
    + [["check", *SAMPLES], ["check", "--strict", S + "buffer_zoo_module.pt"],
       ["check", "--expect-dtype", "float16", S + "cnn_cuda1.pt"]]
    + [["trend", *BN], ["trend", "--all", *BN], ["trend", "--metric", "rel_l2", *BN]]
)
# torch may see a GPU where these tests run: both sides are asked for the CPU path (where torch
# has a GPU the documents differ by design: "device", and missing-device, which needs torch)
NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}


def _with_torch(cli, args: list[str]):
    """The command in this process, where torch is installed."""
    assert _torch.installed(), "the test extra installs torch: the comparison needs it"
    return cli(*args, "--format", "json")


def _compare(python: Path, cli, monkeypatch, cases=CASES) -> None:
    monkeypatch.chdir(ROOT)
    for k, v in NO_GPU.items():
        monkeypatch.setenv(k, v)
    exe = str(python.parent / "bufinspect")
    for args in cases:
        light = subprocess.run([exe, *args, "--format", "json"], capture_output=True, text=True,
                               cwd=ROOT, env=fresh_venv.clean_env(**NO_GPU), timeout=300)
        here = _with_torch(cli, args)
        assert light.returncode == here.exit_code, (args, light.stderr, here.stderr)
        assert json.loads(light.stdout)["schema"] == "bufinspect/1", args
        assert light.stdout == here.stdout, args
        assert light.stderr == here.stderr, args


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory) -> Path:
    """`pip install .` of the checkout into a fresh venv; its python."""
    tmp = tmp_path_factory.mktemp("light")
    src = fresh_venv.project_copy(tmp / "src")
    python = fresh_venv.make(tmp / "venv")
    fresh_venv.pip_install(python, ".", cwd=src)
    return python


def test_pip_install_dot_is_light(light_venv):
    fresh_venv.assert_light(light_venv)
    got = fresh_venv.distributions(light_venv)
    assert {"bufinspect", "typer", "rich", "numpy", "safetensors"} <= got


def test_light_core_gives_the_same_json_as_with_torch(light_venv, cli, monkeypatch):
    _compare(light_venv, cli, monkeypatch)


_API = """
import sys, bufinspect
from bufinspect.render import to_json
ck = bufinspect.load("sample_checkpoints/bn_after_train.pt")
docs = [bufinspect.show("sample_checkpoints/bn_after_train.pt", stats=True).to_dict(),
        bufinspect.diff("sample_checkpoints/bn_before.pt", ck.path).to_dict(),
        bufinspect.check(["sample_checkpoints/cnn_cuda1.pt"]).to_dict(),
        bufinspect.trend(["sample_checkpoints/bn_before.pt", ck.path]).to_dict(),
        [[e.key, e.role.value, e.evidence] for e in ck.entries]]
print(to_json(docs))
print("torch" in sys.modules)
"""


def test_light_core_api(light_venv, monkeypatch):
    """The Python API in the light venv gives what it gives here, torch never imported."""
    r = subprocess.run([str(light_venv), "-c", _API], capture_output=True, text=True, cwd=ROOT,
                       env=fresh_venv.clean_env(**NO_GPU), timeout=300)
    assert r.returncode == 0, r.stderr
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    here = io.StringIO()
    with contextlib.redirect_stdout(here):
        exec(_API, {})
    light, torch_imported = r.stdout.rstrip("\n").rsplit("\n", 1)
    assert torch_imported == "False"
    assert light == here.getvalue().rstrip("\n").rsplit("\n", 1)[0]


def test_light_core_names_the_extra(light_venv, tmp_path):
    """In a real venv without torch: one line naming the extra, exit 2, for each torch feature."""
    exe = str(light_venv.parent / "bufinspect")
    runs = {
        "--model": ["show", S + "cnn_state_dict.pt", "--model", "sample_modules:SmallCNN"],
        "--device cuda": ["check", S + "bn_before.pt", "--device", "cuda"],
        "torch.distributed": ["diff", BN[0], BN[1], "--distributed"],
    }
    for feature, args in runs.items():
        r = subprocess.run([exe, *args], capture_output=True, text=True, cwd=ROOT, timeout=300,
                           env=fresh_venv.clean_env(RANK="0", WORLD_SIZE="1"))
        assert r.returncode == 2 and r.stdout == "", (args, r.stderr)
        line, = r.stderr.splitlines()
        assert feature in line and line.endswith("pip install 'bufinspect[torch]'"), line


def _wheel(tmp: Path) -> Path:
    given = os.environ.get("BUFINSPECT_WHEEL")
    if given:
        return Path(given)
    src = fresh_venv.project_copy(tmp / "src")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir",
                        str(tmp / "dist"), str(src)], capture_output=True, text=True,
                       env=fresh_venv.clean_env(), timeout=900)
    if r.returncode != 0:
        fresh_venv.skip_if_offline(Path(sys.executable))
    assert r.returncode == 0, r.stderr[-3000:]
    wheel, = (tmp / "dist").glob("bufinspect-*.whl")
    return wheel


def test_built_wheel_works_without_torch(tmp_path, cli, monkeypatch):
    """The wheel holds the package data and runs show, diff and check (schema-valid JSON)."""
    wheel = _wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    for member in ("bufinspect/_torch.py", "bufinspect/formats/stream.py",
                   "bufinspect/data/layers.json", "bufinspect/schema/bufinspect-1.json"):
        assert member in names, member
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = [line for line in zipfile.ZipFile(wheel).read(meta).decode().splitlines()
                if line.startswith("Requires-Dist:")]
    torch_reqs = sorted(r for r in requires if r.split()[1].startswith("torch"))
    assert torch_reqs == ['Requires-Dist: torch>=2.10; extra == "test"',
                          'Requires-Dist: torch>=2.10; extra == "torch"'], requires
    python = fresh_venv.make(tmp_path / "venv")
    fresh_venv.pip_install(python, str(wheel))
    fresh_venv.assert_light(python)
    schema = json.loads(resources.files("bufinspect").joinpath("schema/bufinspect-1.json")
                        .read_text())
    exe = str(python.parent / "bufinspect")
    cases = [["show", S + "buffer_zoo_module.pt"], ["show", S + "cnn.safetensors"],
             ["diff", BN[0], BN[1]], ["check", *SAMPLES]]
    for args in cases:
        r = subprocess.run([exe, *args, "--format", "json"], capture_output=True, text=True,
                           cwd=ROOT, env=fresh_venv.clean_env(**NO_GPU), timeout=300)
        assert r.returncode in (0, 1), (args, r.stderr)
        jsonschema.validate(json.loads(r.stdout), schema)
    _compare(python, cli, monkeypatch, cases)
