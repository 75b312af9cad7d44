"""The one way a reader opens a file by name: regular files only, and inside a folder when the
name came from that folder (a shard list, an index, DCP metadata).

`mkfifo x.pt; bufinspect show x.pt` blocked forever in `open()`: a FIFO's open waits for a
writer, and reading a character device never ends. Here every open is non-blocking and the
descriptor is checked with `fstat` before a byte is read, so a FIFO, socket or device is refused
at once. A name read from a folder (`b.safetensors`, `__0_0.distcp`, a DCP `relative_path`) may
not resolve outside that folder: a symlink planted there would otherwise make bufinspect read
(and report on) a file the user never named.
"""

from __future__ import annotations

import contextlib
import os
import stat
from typing import BinaryIO, Iterator

from bufinspect.errors import InputError

_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK:
          "a block device", stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"}


def inside(path: str, folder: str) -> bool:
    """True when `path`, links resolved, lies inside `folder` (links resolved)."""
    root = os.path.realpath(folder)
    real = os.path.realpath(path)
    return real != root and os.path.commonpath([real, root]) == root


def contain(path: str, folder: str, where: str | None = None) -> None:
    """Refuse `path` unless it resolves inside `folder` (InputError naming `where`)."""
    if not inside(path, folder):
        raise InputError(f"{os.path.relpath(path, folder)} resolves outside the folder "
                         "(a symlink?); refusing to read it", where or folder)


def open_fd(path: str, *, within: str | None = None, where: str | None = None) -> int:
    """A read-only descriptor for the regular file `path` (InputError for anything else)."""
    if within is not None:
        contain(path, within, where)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) \
        | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise InputError("no such file or folder", path) from None
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror or exc})", path) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
            raise InputError(f"{kind}, not a regular file; refusing to read it", path)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file(path: str, *, within: str | None = None, where: str | None = None) -> BinaryIO:
    """`open(path, "rb")` for a regular file only (see `open_fd`)."""
    return os.fdopen(open_fd(path, within=within, where=where), "rb")


def is_regular(path: str) -> bool:
    """True for a regular file (links followed); False for FIFOs, devices, folders, nothing."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def size_of(f: BinaryIO) -> int:
    return os.fstat(f.fileno()).st_size


@contextlib.contextmanager
def reported_as(folder: str) -> Iterator[None]:
    """Errors about files inside `folder` name `folder` (the path the user gave), with the
    inner file's relative name leading the message."""
    try:
        yield
    except InputError as exc:
        if exc.path is None or exc.path == folder:
            raise
        inner = exc.path
        if inner.startswith(folder.rstrip(os.sep) + os.sep):
            inner = inner[len(folder.rstrip(os.sep)) + 1:]
        raise type(exc)(f"{inner}: {exc.message}", folder) from None
