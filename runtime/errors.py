"""The error types the runtime raises on purpose.

Every error names the thing it is about (a file, a bundle) and the reason, so that the CLI can
print it as one line and a batch can record it and go on.
"""

from __future__ import annotations

from pathlib import Path


class SceneCamError(Exception):
    """Base class: something named by ``subject`` could not be used, for ``reason``."""

    def __init__(self, subject: str | Path, reason: str) -> None:
        self.subject = str(subject)
        self.reason = reason
        super().__init__(f"{self.subject}: {reason}")


class ImageError(SceneCamError):
    """An input could not be read as an image (missing, not an image, truncated, ...)."""


class BundleError(SceneCamError):
    """A model bundle is missing, malformed, tampered with, or does not match its graph."""


class SourceError(SceneCamError):
    """A video source (camera, file or stream) cannot be opened or read."""


class MissingExtraError(SceneCamError):
    """An optional dependency is not installed; the reason names the extra that brings it."""

    def __init__(self, package: str, extra: str, what: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            package,
            f"{what} needs {package}; install it with: pip install 'scenecam-edge[{extra}]'",
        )
