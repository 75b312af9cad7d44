"""Sharded safetensors folders list, and stat, exactly like the unsharded file they split."""

from __future__ import annotations

import json
import os

import jsonschema
import pytest
from safetensors.torch import save_file

from helpers import schema
from helpers import ShardNet, listing, save_sharded, state_dict, stats  # noqa: F401


@pytest.fixture
def pair(tmp_path):
    sd = state_dict()
    single = tmp_path / "single.safetensors"
    save_file(sd, str(single), metadata={"format": "pt"})
    folder = tmp_path / "sharded"
    folder.mkdir()
    names = save_sharded(sd, folder, max_shard_size=6000)
    assert len(names) == 3
    return sd, single, folder


def test_index_folder_lists_and_stats_like_single_file(cli_json, pair):
    sd, single, folder = pair
    one = cli_json("show", single, "--stats")
    many = cli_json("show", folder, "--stats")
    jsonschema.validate(many, schema())
    assert many["format"] == "safetensors-sharded"
    assert listing(many) == listing(one)
    assert {k: (v[0], v[1]) for k, v in listing(many).items()} == {
        k: (tuple(v.shape), str(v.dtype)[6:]) for k, v in sd.items()}
    assert stats(many) == stats(one)
    assert many["summary"] == one["summary"]
    assert many["size"] == sum(os.path.getsize(p) for p in folder.glob("*.safetensors"))
    # statistics agree with torch's own
    w = sd["head.weight"].float()
    st = stats(many)["head.weight"]
    assert st["min"] == w.min().item() and st["max"] == w.max().item()
    assert st["mean"] == pytest.approx(w.double().mean().item(), rel=1e-9)


def test_index_file_path_reads_its_folder(cli_json, pair):
    sd, single, folder = pair
    doc = cli_json("show", folder / "model.safetensors.index.json")
    assert doc["format"] == "safetensors-sharded"
    assert listing(doc) == listing(cli_json("show", folder))


def test_folder_without_index(cli_json, tmp_path):
    sd = state_dict()
    save_sharded(sd, tmp_path, max_shard_size=6000, index=False)
    doc = cli_json("show", tmp_path, "--stats")
    assert doc["format"] == "safetensors-sharded"
    assert {k: v[:2] for k, v in listing(doc).items()} == {
        k: (tuple(v.shape), str(v.dtype)[6:]) for k, v in sd.items()}
    assert all(e["stats"] is not None for e in doc["entries"])


def _refused(cli, path, words):
    r = cli("show", path)
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and words in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("target,words", [
    (["x.safetensors"], "not a file name: list"),  # unhashable: refused before it is hashed
    (7, "not a file name: 7"),
    ("../outside.safetensors", "outside the folder"),
    ("/etc/passwd", "outside the folder"),
    ("sub/../../outside.safetensors", "outside the folder"),
    ("missing.safetensors", "missing shard"),
])
def test_index_paths_stay_inside(cli, pair, target, words):
    sd, single, folder = pair
    (folder.parent / "outside.safetensors").write_bytes(single.read_bytes())
    index = folder / "model.safetensors.index.json"
    doc = json.loads(index.read_text())
    doc["weight_map"]["head.weight"] = target
    index.write_text(json.dumps(doc))
    _refused(cli, folder, words)


def test_index_key_not_in_its_shard(cli, pair):
    sd, single, folder = pair
    index = folder / "model.safetensors.index.json"
    doc = json.loads(index.read_text())
    first = sorted(set(doc["weight_map"].values()))[0]
    doc["weight_map"]["ghost.weight"] = first
    index.write_text(json.dumps(doc))
    _refused(cli, folder, "does not hold it")


def test_index_maps_a_key_to_another_shard(cli, pair):
    sd, single, folder = pair
    index = folder / "model.safetensors.index.json"
    doc = json.loads(index.read_text())
    held: dict[str, list[str]] = {}
    for k, v in doc["weight_map"].items():
        held.setdefault(v, []).append(k)
    home = next(v for v in sorted(held) if len(held[v]) > 1)  # still read once a key moves
    other = next(v for v in sorted(held) if v != home)
    moved = held[home][-1]
    doc["weight_map"][moved] = other
    index.write_text(json.dumps(doc))
    _refused(cli, folder, f"'{moved}' is in {home} but the index does not map it there")


def test_a_key_in_two_shards(cli, tmp_path):
    folder = tmp_path / "twice"
    folder.mkdir()
    sd = state_dict()
    first = next(iter(sd))
    save_file({k: sd[k] for k in list(sd)[:3]}, str(folder / "a.safetensors"))
    save_file({first: sd[first], **{k: sd[k] for k in list(sd)[3:]}}, str(folder / "b.safetensors"))
    _refused(cli, folder, f"'{first}' is in two shards (a.safetensors and b.safetensors)")


def test_broken_index_json(cli, pair):
    sd, single, folder = pair
    (folder / "model.safetensors.index.json").write_text("{not json")
    _refused(cli, folder, "invalid JSON")


def test_corrupt_shard_names_the_shard(cli, pair):
    sd, single, folder = pair
    shard = sorted(folder.glob("*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:100])
    _refused(cli, folder, shard.name)


def test_listing_does_not_import_torch(pair):
    import subprocess
    import sys

    sd, single, folder = pair
    code = ("import sys, bufinspect; ck = bufinspect.load(sys.argv[1]); "
            "assert len(ck.entries) == int(sys.argv[2]); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code, str(folder), str(len(sd))], check=True,
                   env={**os.environ, "PYTHONPATH": os.getcwd()})
