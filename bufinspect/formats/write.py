"""The one place bufinspect writes files: metrics (`diff --save-metrics`), plots (`trend
--plot`), role annotations (a safetensors header rewrite, or a `.bufinspect.json` sidecar).

Rules, each from an attack that worked before:
- an output may not be an input: not the same name, not the same file under another name
  (a hard link: same device and inode), not inside an input folder (`diff A B --save-metrics A`
  replaced checkpoint A; `trend a.pt b.pt --plot a.pt` overwrote a.pt);
- never write through a symlink: an output name that is a link is refused (`annotate` followed
  `victim.pt.bufinspect.json -> elsewhere` and wrote there);
- the bytes go into a temporary file created exclusively (O_EXCL, mode 0600, a random name)
  in the output's own folder, which then replaces the output in one rename: a planted
  `victim.safetensors.bufinspect-tmp -> elsewhere` link is never opened, a reader never sees
  half a file, and a failure leaves the old file as it was.
"""

from __future__ import annotations

import os
import stat
import tempfile
from typing import Callable, Iterable, BinaryIO

from bufinspect.errors import UsageError


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def check_output(path: str, inputs: Iterable[str] = (), *, replace_input: str | None = None
                 ) -> None:
    """Refuse `path` as an output (UsageError naming it) if it is, or is inside, one of
    `inputs`, or is a symlink or not a regular file. `replace_input`: the one input this write
    is meant to replace (annotate rewrites its own safetensors file)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise UsageError(f"cannot write here ({exc.strerror or exc})", path) from None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise UsageError("the output is a symlink; refusing to write through it", path)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError("the output exists and is not a regular file; refusing to write "
                             "it", path)
    real = os.path.realpath(path)
    for inp in inputs:
        if replace_input is not None and os.path.realpath(inp) == os.path.realpath(
                replace_input):
            continue
        real_in = os.path.realpath(inp)
        try:
            ist = os.stat(inp)
        except OSError:
            ist = None
        if real == real_in or (st is not None and ist is not None and _same_file(st, ist)):
            raise UsageError(f"the output is the input {inp}; refusing to overwrite a "
                             "checkpoint", path)
        if ist is not None and stat.S_ISDIR(ist.st_mode) \
                and os.path.commonpath([real, real_in]) == real_in:
            raise UsageError(f"the output lies inside the input folder {inp}; refusing to "
                             "write there", path)


def write_atomic(path: str, data: bytes | str | Callable[[BinaryIO], None], *,
                 inputs: Iterable[str] = (), replace_input: str | None = None) -> None:
    """Write `data` (bytes, text, or a function that writes into the file) to `path` safely:
    see the module docstring. The old file, if any, keeps its permission bits."""
    inputs = list(inputs)
    check_output(path, inputs, replace_input=replace_input)
    folder = os.path.dirname(path) or "."
    base = os.path.basename(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".bufinspect-tmp", dir=folder)
    except OSError as exc:
        raise UsageError(f"cannot write here ({exc.strerror or exc})", path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        try:
            mode = stat.S_IMODE(os.lstat(path).st_mode)
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        check_output(path, inputs, replace_input=replace_input)  # again, just before the swap
        os.replace(tmp, path)  # a rename replaces a name; it never follows a link there
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def files_of(checkpoints: Iterable) -> list[str]:
    """Every path a set of loaded checkpoints was read from (the paths the user gave, shards,
    DCP data files): none of them may be an output."""
    out: dict[str, None] = {}
    for ck in checkpoints:
        out[ck.path] = None
        for c in ck.containers:
            for e in c.entries:
                d = e.data
                if d is not None:
                    out[d.file] = None
                    for p in d.parts:
                        out[p.file] = None
    return list(out)
