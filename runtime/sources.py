"""Turning command-line arguments into a list of inputs, once, for every command.

An argument is a file, a folder (its images, recursively, sorted), or a glob pattern. What
cannot be expanded (a missing path, a pattern that matches nothing) stays in the list as an
error, so a command reports it in order and goes on with the rest. Only regular files are
inputs: a FIFO, device or socket named or matched is an error item (opening a FIFO would
block forever), and a folder's scan skips them.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .fileio import not_regular_reason

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)


def image_files(folder: Path) -> list[Path]:
    """The images under ``folder``, recursively, by suffix, in a stable (sorted) order: the
    one folder scan behind every command's inputs and the class-per-folder data sets. Only
    regular files (and links to them) count."""
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


@dataclass(frozen=True)
class SourceItem:
    """One input path, or the reason an argument gave no input."""

    path: str
    error: str | None = None


def iter_sources(arguments: Iterable[str | os.PathLike[str]]) -> Iterator[SourceItem]:
    for argument in arguments:
        text = os.fsdecode(argument)
        path = Path(text)
        if path.is_dir():
            found = image_files(path)
            if not found:
                yield SourceItem(text, "folder holds no images")
            yield from (SourceItem(os.fsdecode(p)) for p in found)
        elif os.path.lexists(text) or not glob.has_magic(text):
            # An existing file (even a broken link) or a plain missing path: decoding reports it.
            yield _item(text)
        else:
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                yield SourceItem(text, "no files match this pattern")
            yield from (_item(m) for m in matches)


def _item(path: str) -> SourceItem:
    return SourceItem(path, not_regular_reason(path))
