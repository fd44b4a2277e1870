"""Reading a file given on the command line: a regular file only, and bounded.

A FIFO would hang the read, /dev/zero would fill memory, a directory is a mistake: all are
refused by what `stat` says before anything is read, and again on the open descriptor
(O_NONBLOCK, so a file swapped for a FIFO in between does not hang the open either).
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

__all__ = ["STATE_LIMIT", "NotRegular", "TooLarge", "open_regular", "read_regular"]

STATE_LIMIT = 256 << 20
"""The most ztplan reads of a file in its state dir (a state of 50,000 rules is ~10 MB):
they are its own, but a FIFO or /dev/zero put in their place must not hang a run."""


class NotRegular(OSError):
    """The path is no regular file; `kind` says what it is ("a FIFO")."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class TooLarge(OSError):
    def __init__(self, size: int) -> None:
        super().__init__(f"{size} bytes")
        self.size = size


def _check(info: os.stat_result, limit: int) -> None:
    if stat.S_ISREG(info.st_mode):
        if info.st_size > limit:
            raise TooLarge(info.st_size)
        return
    if stat.S_ISDIR(info.st_mode):
        raise NotRegular("a directory")
    if stat.S_ISFIFO(info.st_mode):
        raise NotRegular("a FIFO")
    if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
        raise NotRegular("a device")
    raise NotRegular("not a regular file")


def open_regular(path: str, limit: int) -> BinaryIO:
    """The regular file `path`, opened for reading, if it holds at most `limit` bytes.
    Raises FileNotFoundError, NotRegular, TooLarge or another OSError (never blocks on a
    FIFO)."""
    _check(os.stat(path), limit)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    handle = os.fdopen(fd, "rb")
    try:
        _check(os.fstat(fd), limit)
    except BaseException:
        handle.close()
        raise
    return handle


def read_regular(path: str, limit: int) -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them. Raises
    FileNotFoundError, NotRegular, TooLarge or another OSError."""
    with open_regular(path, limit) as handle:
        info = os.fstat(handle.fileno())
        # read(n) allocates n bytes first: ask for the size stat gave (a 10 MB state did
        # not need a 256 MiB buffer), then for what the file may have grown by since.
        data = handle.read(info.st_size + 1)
        if len(data) > info.st_size:
            data += handle.read(limit + 1 - len(data))
    if len(data) > limit:
        raise TooLarge(len(data))
    return data
