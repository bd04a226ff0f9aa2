"""Names for files derived from inputs: safe, inside the output folder, never an input."""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

# Letters and digits of any script stay; path separators, spaces, punctuation that shells
# treat specially, control and format characters (bidi overrides) and undecodable bytes go.
_UNSAFE = re.compile(r"[^\w.-]+")
#: File-name stems are cut to this many UTF-8 bytes (file systems allow 255 per name).
MAX_STEM_BYTES = 120


def safe_stem(source: str, max_length: int = 80) -> str:
    """A file-name stem from an input path: its base name without the suffix, in NFC, with
    runs of anything but letters, digits, '.', '_' and '-' replaced by one '_', no leading
    dots, at most ``max_length`` characters and :data:`MAX_STEM_BYTES` bytes."""
    stem = unicodedata.normalize("NFC", Path(source).stem or "image")
    cleaned = _UNSAFE.sub("_", stem).lstrip(".")[:max_length]
    while len(cleaned.encode("utf-8")) > MAX_STEM_BYTES:
        cleaned = cleaned[:-1]
    return cleaned or "image"


def is_inside(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """Whether ``path`` (resolved) is ``folder`` (resolved) or lies below it."""
    try:
        root = os.path.realpath(folder)
        real = os.path.realpath(path)
    except ValueError:  # a NUL byte: no such file, so not inside anything
        return False
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


class OutputNamer:
    """Hands out distinct paths ``<dir>/<stem><suffix>`` for a run, never reusing a name and
    never naming one of the run's inputs."""

    def __init__(self, directory: Path, suffix: str, inputs: list[str]) -> None:
        self.directory = directory
        self.suffix = suffix
        self._taken: set[str] = set()
        self._inputs = {os.path.realpath(p) for p in inputs}

    def path_for(self, source: str) -> Path:
        stem = safe_stem(source)
        n = 1
        while True:
            name = f"{stem}{self.suffix}" if n == 1 else f"{stem}-{n}{self.suffix}"
            candidate = self.directory / name
            if name not in self._taken and os.path.realpath(candidate) not in self._inputs:
                self._taken.add(name)
                return candidate
            n += 1
