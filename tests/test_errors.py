"""Bad input: exit 2, one line on stderr naming the file, nothing run, nothing written."""

from __future__ import annotations

import os
import pickle
import struct
import zipfile

import pytest
import torch

from conftest import SAMPLES
from helpers import Payload  # noqa: F401


def _assert_refused(cli, path, *, words: str | None = None):
    r = cli("show", path)
    assert r.exit_code == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert str(path) in lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""
    if words:
        assert words in lines[0], lines[0]


def test_missing_file(cli, tmp_path):
    _assert_refused(cli, tmp_path / "nope.pt", words="no such file")


def test_empty_file(cli, tmp_path):
    p = tmp_path / "empty.pt"
    p.write_bytes(b"")
    _assert_refused(cli, p, words="empty")


def test_random_bytes(cli, tmp_path):
    p = tmp_path / "random.pt"
    p.write_bytes(os.urandom(4096))
    _assert_refused(cli, p)


def test_truncated_zip(cli, tmp_path):
    data = (SAMPLES / "cnn_state_dict.pt").read_bytes()
    for cut in (100, len(data) // 2, len(data) - 30):
        p = tmp_path / f"cut{cut}.pt"
        p.write_bytes(data[:cut])
        _assert_refused(cli, p)


def test_truncated_legacy(cli, tmp_path):
    data = (SAMPLES / "cnn_state_dict_legacy.pt").read_bytes()
    for cut in (20, len(data) // 2, len(data) - 10):
        p = tmp_path / f"cut{cut}.pt"
        p.write_bytes(data[:cut])
        _assert_refused(cli, p)


def test_folder_that_is_not_a_checkpoint(cli, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    _assert_refused(cli, tmp_path)


@pytest.mark.parametrize("legacy", [False, True])
def test_pickle_payload_never_runs(cli, tmp_path, legacy):
    sentinel = tmp_path / "pwned"
    p = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "x": Payload(str(sentinel))}, p,
               _use_new_zipfile_serialization=not legacy)
    _assert_refused(cli, p, words="posix.system")
    r = cli("show", p, "--stats")
    assert r.exit_code == 2
    assert not sentinel.exists()


def test_payload_in_plain_pickle_zip(cli, tmp_path):
    sentinel = tmp_path / "pwned"
    p = tmp_path / "evil.pt"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps(Payload(str(sentinel)), protocol=2))
    _assert_refused(cli, p)
    assert not sentinel.exists()


def _safetensors(header: bytes, data: bytes = b"", length: int | None = None) -> bytes:
    return struct.pack("<Q", len(header) if length is None else length) + header + data


@pytest.mark.parametrize("case,blob,words", [
    ("huge-header", _safetensors(b"{}", length=1 << 40), "too large"),
    ("header-past-end", _safetensors(b'{"a":1}', length=5000), "past the end"),
    ("broken-json", _safetensors(b'{"a": [1, 2'), "invalid JSON"),
    ("offsets-past-end", _safetensors(
        b'{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', b"\0" * 8), "offsets"),
    ("size-mismatch", _safetensors(
        b'{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}', b"\0" * 8), "need 16 bytes"),
    ("not-utf8", _safetensors(b'{"\xff":1}'), "UTF-8"),
])
def test_bad_safetensors(cli, tmp_path, case, blob, words):
    p = tmp_path / f"{case}.safetensors"
    p.write_bytes(blob)
    _assert_refused(cli, p, words=words)


def test_debug_env_shows_traceback(tmp_path):
    from typer.testing import CliRunner

    from bufinspect.cli import app

    p = tmp_path / "empty.pt"
    p.write_bytes(b"")
    r = CliRunner().invoke(app, ["show", str(p)], env={"BUFINSPECT_DEBUG": "1"})
    assert r.exit_code == 2 and "Traceback" in r.stderr


def test_inputs_are_not_modified(cli, tmp_path):
    import hashlib

    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in SAMPLES.iterdir()
              if p.is_file()}
    for p in SAMPLES.iterdir():
        if p.suffix in (".pt", ".safetensors"):
            assert cli("show", p, "--stats").exit_code == 0
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in SAMPLES.iterdir()
             if p.is_file()}
    assert before == after


def test_memo_index_bomb_is_refused_fast(tmp_path):
    """A 10-byte pickle whose LONG_BINPUT names memo slot 2**30 would make the C unpickler zero
    16 GB; the heap cap turns it into a one-line error (run in a subprocess, bounded)."""
    import subprocess
    import sys

    p = tmp_path / "memo.pt"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("memo/data.pkl", b"\x80\x02K\x01r" + struct.pack("<I", 0x3FFFFFF0) + b".")
    r = subprocess.run([sys.executable, "-m", "bufinspect", "show", str(p)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and str(p) in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
