"""Files the runtime writes: the dataset cache written atomically, the umask read once, and
the suite's own cache kept out of the user's home."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scenecam_edge import dataset, fileio

from .conftest import TEST_CACHE


def _folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


def test_dataset_cache_is_written_atomically(tmp_path: Path, monkeypatch):
    """An interrupted cache write leaves nothing in the cache folder (no partial file a later
    run could trip on); a finished one is fsync-ed, has the usual permissions, and loads."""
    folder = _folder(tmp_path / "data")
    cache = tmp_path / "cache"
    real_savez = np.savez

    def interrupted(file, **arrays):
        file.write(b"PK\x03\x04 half an archive")
        raise KeyboardInterrupt

    monkeypatch.setattr(dataset.np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        dataset.load_dataset(folder, (8, 8), cache_dir=cache)
    assert list(cache.iterdir()) == []

    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(dataset.np, "savez", real_savez)
    monkeypatch.setattr(fileio.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    first = dataset.load_dataset(folder, (8, 8), cache_dir=cache)
    (written,) = cache.iterdir()
    assert synced, "the cache file was not fsync-ed"
    assert stat.S_IMODE(written.stat().st_mode) == 0o666 & ~fileio._umask()
    monkeypatch.setattr(dataset, "load_image", None)  # a second load must not decode
    again = dataset.load_dataset(folder, (8, 8), cache_dir=cache)
    assert np.array_equal(first.images, again.images) and first.sources == again.sources


def test_umask_is_read_once_without_setting_it(tmp_path: Path, monkeypatch):
    """Reading the umask by setting it races other threads creating files: after the first
    read, writes never call os.umask again."""
    expected = fileio._umask()
    calls: list[int] = []
    monkeypatch.setattr(fileio.os, "umask", lambda mask: calls.append(mask) or 0o777)

    def write(i: int) -> None:
        fileio.write_bytes_atomic(tmp_path / f"{i}.bin", b"x")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == []
    modes = {stat.S_IMODE((tmp_path / f"{i}.bin").stat().st_mode) for i in range(8)}
    assert modes == {0o666 & ~expected}


def test_the_suite_caches_outside_the_home(monkeypatch):
    from pathlib import Path as P

    assert dataset.default_cache_dir() == P(TEST_CACHE)
    assert not str(dataset.default_cache_dir()).startswith(str(P.home() / ".cache"))
    monkeypatch.delenv(dataset.CACHE_ENV)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert dataset.default_cache_dir() == P.home() / ".cache" / "scenecam-edge"
    monkeypatch.setenv("XDG_CACHE_HOME", str(P("/xdg")))
    assert dataset.default_cache_dir() == P("/xdg") / "scenecam-edge"
