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
from .names import too_long

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)


def image_files(folder: Path, problems: list[tuple[str, str]] | None = None) -> list[Path]:
    """The images under ``folder``, recursively, by suffix, in a stable (sorted) order: the
    one folder scan behind every command's inputs and the class-per-folder data sets. Only
    regular files (and links to them) count; links to folders are not followed. A folder
    inside that cannot be read (no permission, a path over the length limit) is left out,
    and added to ``problems`` as (path, reason) when given."""
    found: list[Path] = []

    def unreadable(exc: OSError) -> None:
        if problems is not None:
            where = os.fsdecode(exc.filename) if exc.filename is not None else str(folder)
            reason = too_long(where) or f"cannot read this folder: {exc.strerror or exc}"
            problems.append((where, reason))

    for root, _, files in os.walk(folder, onerror=unreadable):
        for name in files:
            path = Path(root, name)
            if path.suffix.lower() in IMAGE_SUFFIXES and _is_file(path):
                found.append(path)
    return sorted(found)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name over the length limit: not one we can open
        return True  # kept, so that decoding names it as one bad input


@dataclass(frozen=True)
class SourceItem:
    """One input path, or the reason an argument gave no input."""

    path: str
    error: str | None = None


def iter_sources(arguments: Iterable[str | os.PathLike[str]]) -> Iterator[SourceItem]:
    for argument in arguments:
        text = os.fsdecode(argument)
        path = Path(text)
        if (reason := too_long(text)) is not None:
            yield SourceItem(text, reason)  # one bad input: the file system never sees it
        elif _is_dir(path):
            problems: list[tuple[str, str]] = []
            found = image_files(path, problems)
            if not found and not problems:
                yield SourceItem(text, "folder holds no images")
            yield from (SourceItem(os.fsdecode(p)) for p in found)
            yield from (SourceItem(where, reason) for where, reason in problems)
        elif os.path.lexists(text) or not glob.has_magic(text):
            # An existing file (even a broken link) or a plain missing path: decoding reports it.
            yield _item(text)
        else:
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                yield SourceItem(text, "no files match this pattern")
            yield from (_item(m) for m in matches)


def _is_dir(path: Path) -> bool:
    """Whether ``path`` is a folder; False where it cannot be told (no permission to look):
    the decoder then names the input and the reason."""
    try:
        return path.is_dir()
    except OSError:
        return False


def _item(path: str) -> SourceItem:
    return SourceItem(path, not_regular_reason(path))
