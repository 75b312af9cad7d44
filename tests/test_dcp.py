"""torch.distributed.checkpoint folders: listed from a restricted read of `.metadata`, data
streamed from the items inside `.distcp` files, all without importing torch in bufinspect."""

from __future__ import annotations

import io
import os
import pickle
import warnings

import jsonschema
import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import filesystem
from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, Metadata, MetadataIndex,
                                                   TensorProperties, TensorStorageMetadata)

from helpers import Payload
from helpers import listing, state_dict, stats
from helpers import schema
from helpers import dcp_save  # noqa: F401


@pytest.fixture
def saved(tmp_path):
    sd = state_dict()
    single = tmp_path / "single.pt"
    torch.save(sd, single)
    folder = tmp_path / "dcp"
    dcp_save(sd, folder)
    return sd, single, folder


def test_lists_and_stats_like_torch_save(cli_json, saved):
    sd, single, folder = saved
    one = cli_json("show", single, "--stats")
    many = cli_json("show", folder, "--stats")
    jsonschema.validate(many, schema())
    assert many["format"] == "dcp"
    assert {k: v[:2] for k, v in listing(many).items()} == {
        k: (tuple(v.shape), str(v.dtype)[6:]) for k, v in sd.items()}
    assert list(listing(many)) == list(sd)  # save order kept
    assert stats(many) == stats(one)
    # the saved device is recorded inside each item
    assert {e["device"] for e in many["entries"]} == {"cpu"}


def test_nested_state_and_byte_items(cli_json, tmp_path):
    sd = state_dict()
    dcp_save({"model": sd, "epoch": 3, "extra": {"note": "x"}}, tmp_path)
    doc = cli_json("show", tmp_path)
    assert doc["containers"] == [{"path": "model", "kind": "state_dict"}]
    assert {e["key"] for e in doc["entries"]} == set(sd)
    assert doc["metadata"]["dcp.bytes_items"] == "2"
    buffers = {e["key"] for e in doc["entries"] if e["role"] == "buffer"}
    assert "stem.1.running_mean" in buffers and "stem.1.num_batches_tracked" in buffers


def _chunked(folder, full: torch.Tensor, split_dim: int, parts: int) -> None:
    """A DCP folder whose one tensor is saved in chunks across two files, as FSDP ranks do."""
    chunks, storage = [], {}
    folder.mkdir()
    blobs: dict[str, bytearray] = {"__0_0.distcp": bytearray(), "__1_0.distcp": bytearray()}
    start = 0
    for i, piece in enumerate(full.chunk(parts, split_dim)):
        offs = [0] * full.dim()
        offs[split_dim] = start
        start += piece.shape[split_dim]
        chunks.append(ChunkStorageMetadata(offsets=torch.Size(offs), sizes=piece.shape))
        buf = io.BytesIO()
        torch.save(piece.contiguous(), buf)
        name = f"__{i % 2}_0.distcp"
        blob = blobs[name]
        storage[MetadataIndex("w", torch.Size(offs), i)] = filesystem._StorageInfo(
            name, len(blob), len(buf.getvalue()))
        blob += buf.getvalue()
    for name, blob in blobs.items():
        (folder / name).write_bytes(bytes(blob))
    md = Metadata(state_dict_metadata={"w": TensorStorageMetadata(
        TensorProperties(dtype=full.dtype), full.shape, chunks)},
        planner_data={"w": ("w",)}, storage_data=storage)
    with open(folder / ".metadata", "wb") as f:
        pickle.dump(md, f, protocol=4)


@pytest.mark.parametrize("split_dim", [0, 1])
def test_chunked_tensor(cli_json, tmp_path, split_dim):
    torch.manual_seed(1)
    full = torch.randn(6, 10)
    full[2, 3] = float("nan")
    folder = tmp_path / "chunked"
    _chunked(folder, full, split_dim, 3)
    # the crafted folder is a genuine DCP checkpoint: torch's own loader reassembles it
    back = {"w": torch.zeros_like(full)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(back, checkpoint_id=str(folder))
    assert torch.equal(back["w"].nan_to_num(7.0), full.nan_to_num(7.0))

    doc = cli_json("show", folder, "--stats")
    (e,) = doc["entries"]
    assert (e["shape"], e["dtype"]) == ([6, 10], "float32")
    single = tmp_path / "w.pt"
    torch.save({"w": full}, single)
    want = cli_json("show", single, "--stats")["entries"][0]["stats"]
    got = e["stats"]
    assert got["nan"] == 1 and got["min"] == want["min"] and got["max"] == want["max"]
    assert got["mean"] == pytest.approx(want["mean"], rel=1e-12)
    assert got["std"] == pytest.approx(want["std"], rel=1e-12)
    if split_dim == 0:  # row chunks: element order is the tensor's own
        from bufinspect import load
        from bufinspect.formats import stream

        (entry,) = load(str(folder)).entries
        assert stream.read_array(entry).tobytes() == full.numpy().tobytes()


def test_planted_metadata_never_runs(cli, tmp_path):
    sentinel = tmp_path / "ran"
    folder = tmp_path / "evil"
    folder.mkdir()
    with open(folder / ".metadata", "wb") as f:
        pickle.dump(Payload(str(sentinel)), f, protocol=4)
    r = cli("show", folder)
    assert r.exit_code == 2 and "refusing" in r.stderr and "posix.system" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not sentinel.exists()


def test_planted_item_never_runs(cli, saved, tmp_path):
    """A tensor item pointing at a pickle that calls os.system is refused, not run."""
    sd, single, folder = saved
    sentinel = tmp_path / "ran"
    evil = io.BytesIO()
    torch.save(Payload(str(sentinel)), evil)
    data = folder / "__0_0.distcp"
    at = data.stat().st_size
    data.write_bytes(data.read_bytes() + evil.getvalue())
    with open(folder / ".metadata", "rb") as f:
        md = pickle.load(f)  # our own file, written by torch above
    idx = next(i for i in md.storage_data if i.fqn == "head.weight")
    md.storage_data[idx] = filesystem._StorageInfo("__0_0.distcp", at, len(evil.getvalue()))
    with open(folder / ".metadata", "wb") as f:
        pickle.dump(md, f, protocol=4)
    r = cli("show", folder)
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert "posix.system" in r.stderr and "head.weight" in r.stderr, r.stderr
    assert not sentinel.exists()


def test_data_file_outside_folder_refused(cli, saved):
    sd, single, folder = saved
    raw = (folder / ".metadata").read_bytes()
    bad = raw.replace(b"\x8c\x0c__0_0.distcp", b"\x8c\x0c../0_0.distc")
    assert bad != raw
    (folder / ".metadata").write_bytes(bad)
    r = cli("show", folder)
    assert r.exit_code == 2 and "outside the folder" in r.stderr, r.stderr


def test_listing_does_not_import_torch(saved):
    import subprocess
    import sys

    sd, single, folder = saved
    code = ("import sys, bufinspect; bufinspect.load(sys.argv[1]); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code, str(folder)], check=True,
                   env={**os.environ, "PYTHONPATH": os.getcwd()})


@pytest.mark.parametrize("split_dim", [0, 1])
def test_diff_chunked_against_single_file(cli_json, tmp_path, monkeypatch, split_dim):
    """Row chunks stream in step with a plain file; column chunks are not in the tensor's
    element order, so they are reassembled before comparing (never paired element by element
    in file order)."""
    import bufinspect
    from bufinspect.model import Status
    from bufinspect.formats import stream

    torch.manual_seed(3)
    full = torch.randn(6, 10)
    _chunked(tmp_path / "dcp", full, split_dim, 3)
    torch.save({"w": full}, tmp_path / "same.pt")
    moved = full.clone()
    moved[4, 7] += 0.5
    torch.save({"w": moved}, tmp_path / "moved.pt")
    if split_dim == 0:  # streamed in step: never read whole
        monkeypatch.setattr(stream, "read_array", lambda e: pytest.fail("read whole"))
    got = bufinspect.diff(str(tmp_path / "dcp"), str(tmp_path / "same.pt"), scope="all").entries[0]
    assert got.status is Status.EQUAL and got.max_abs == 0.0
    got = bufinspect.diff(str(tmp_path / "dcp"), str(tmp_path / "moved.pt"), scope="all").entries[0]
    assert got.status is Status.CHANGED and got.mismatched == 1
    assert got.max_abs == pytest.approx((full - moved).abs().max().item(), rel=1e-12)
    # the same chunking on both sides pairs chunk with chunk
    _chunked(tmp_path / "dcp2", moved, split_dim, 3)
    got = bufinspect.diff(str(tmp_path / "dcp"), str(tmp_path / "dcp2"), scope="all").entries[0]
    assert got.mismatched == 1 and got.max_abs == pytest.approx(0.5, rel=1e-6)
