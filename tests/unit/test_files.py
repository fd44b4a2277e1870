"""read_regular: a regular file, whole and bounded; anything else refused before a read."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest

from ztplan import files
from ztplan.files import NotRegular, TooLarge, read_regular


def test_a_file_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"x" * 100_000)
    assert read_regular(str(path), 1 << 20) == b"x" * 100_000


def test_the_buffer_is_the_files_size_not_the_limit(tmp_path: Path) -> None:
    """A 10 MB state was read into a 256 MiB buffer (read(limit + 1) allocates it first)."""
    path = tmp_path / "state.json"
    path.write_bytes(b"{}" * 500)
    tracemalloc.start()
    try:
        read_regular(str(path), files.STATE_LIMIT)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_a_file_grown_since_its_stat_is_read_whole_up_to_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"y" * 5000)
    real = os.fstat

    def smaller(fd: int) -> os.stat_result:  # the size before a writer appended
        info = list(real(fd))
        info[6] = 10
        return os.stat_result(info)

    monkeypatch.setattr(files.os, "fstat", smaller)
    assert read_regular(str(path), 1 << 20) == b"y" * 5000
    with pytest.raises(TooLarge):
        read_regular(str(path), 4000)


def test_a_fifo_and_a_device_are_refused_unread(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(NotRegular, match="a FIFO"):
        read_regular(str(tmp_path / "fifo"), 1 << 20)
    with pytest.raises(NotRegular, match="a device"):
        read_regular("/dev/zero", 1 << 20)
    with pytest.raises(NotRegular, match="a directory"):
        read_regular(str(tmp_path), 1 << 20)
