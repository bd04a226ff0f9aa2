"""Names for files derived from inputs: safe, inside the output folder, never an input."""

from __future__ import annotations

import os
import re
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_stem(source: str, max_length: int = 80) -> str:
    """A file-name stem from an input path: its base name without the suffix, with anything
    but letters, digits, '.', '_' and '-' replaced, and no leading dots."""
    stem = Path(source).stem or "image"
    cleaned = _UNSAFE.sub("_", stem).lstrip(".")[:max_length]
    return cleaned or "image"


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
