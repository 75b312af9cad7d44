from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_checkpoints"
sys.path.insert(0, str(SAMPLES))  # sample_modules, for live modules and pickled-module samples

from realworld_helpers import stub_torchvision_registrations  # noqa: E402

stub_torchvision_registrations()  # a CUDA torchvision wheel beside a CPU torch (transformers, timm)


@pytest.fixture
def samples() -> Path:
    return SAMPLES


@pytest.fixture
def cli():
    from bufinspect.cli import app

    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return run


@pytest.fixture
def cli_json(cli):
    def run(*args: str, code: int = 0):
        result = cli(*args, "--format", "json")
        assert result.exit_code == code, result.stderr + result.stdout
        return json.loads(result.stdout)

    return run


def torch_listing(path) -> dict[str, tuple[tuple[int, ...], str, str]]:
    """What torch itself reports: key -> (shape, dtype, saved device), tags kept by map_location."""
    import torch

    locations: dict[int, str] = {}

    def keep(storage, location):
        locations[storage.data_ptr()] = location
        return storage

    obj = torch.load(path, map_location=keep, weights_only=True)
    out = {}

    def walk(o, prefix):
        if isinstance(o, torch.Tensor):
            out[prefix] = (tuple(o.shape), str(o.dtype).removeprefix("torch."),
                           locations.get(o.untyped_storage().data_ptr(), "cpu"))
        elif isinstance(o, dict):
            for k, v in o.items():
                walk(v, f"{prefix}/{k}" if prefix else str(k))

    walk(obj, "")
    return out


def _tree_digest(root: Path) -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """The hostile corpus (tests/hostile/make_corpus.py), built once, on first use: (folder,
    {name: Case}). After the session, fail loudly if any of it changed or a sentinel appeared."""
    from hostile import make_corpus

    out = tmp_path_factory.mktemp("hostile")
    cases = {c.name: c for c in make_corpus.build(out)}
    built = make_corpus.manifest_lines(list(cases.values()))
    listed = make_corpus.MANIFEST.read_text().splitlines()
    assert built == listed, ("tests/hostile/cases.txt is stale: run "
                             "`python tests/hostile/make_corpus.py --manifest`")
    before = _tree_digest(out)
    yield out, cases
    after = _tree_digest(out)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"the hostile corpus changed (or a sentinel appeared): {changed}"


@pytest.fixture(scope="session", autouse=True)
def samples_never_change():
    """Nothing lost: sample_checkpoints/ hashes the same after the whole suite as before it."""
    before = _tree_digest(SAMPLES)
    yield
    assert _tree_digest(SAMPLES) == before, "a test or bufinspect changed sample_checkpoints/"


@pytest.fixture(autouse=True)
def workers_on_small_files(monkeypatch):
    """Test files are small: `--jobs N` would run one worker (`parallel.useful_jobs`), and the
    tests that compare reports across --jobs would not reach the worker paths. Here any entry
    size is worth a worker; tests/test_parallel.py checks the rule itself."""
    from bufinspect import parallel

    monkeypatch.setattr(parallel, "MIN_BYTES_PER_ENTRY", 0)
