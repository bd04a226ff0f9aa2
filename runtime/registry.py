"""Shipped bundles: found by name inside the installed package, or any bundle by path."""

from __future__ import annotations

import difflib
import os
from importlib import resources
from pathlib import Path

from .bundle import MANIFEST
from .errors import BundleError
from .models import REPOSITORY_ONLY

#: The bundle ``SceneCam.load()`` and the CLI use when no model is named: the int8 twin of
#: ``scenes-resnet18``. On the validation split it keeps the float model's accuracy within
#: 0.3 points and its Grad-CAM maps at a correlation of 0.99 or more (both recorded in its
#: manifest, and tested), at about three times the speed and a quarter of the size.
DEFAULT_MODEL = "scenes-resnet18-int8"


def models_dir() -> Path:
    """The folder that holds the shipped bundles (``models/`` in the source tree)."""
    return Path(str(resources.files("scenecam_edge.models")))


def shipped_models() -> list[str]:
    root = models_dir()
    return sorted(p.name for p in root.iterdir() if (p / MANIFEST).is_file())


def resolve_model(model: str | os.PathLike[str] | None) -> Path:
    """A bundle folder from a shipped model's name or a path; ``None`` is the default model."""
    if model is None:
        model = DEFAULT_MODEL
    path = Path(model)
    if path.is_dir():
        return path
    name = os.fspath(model)
    if name in shipped_models():
        return models_dir() / name
    if name in REPOSITORY_ONLY:
        raise BundleError(name, not_installed(name))
    shipped = shipped_models()
    close = difflib.get_close_matches(name, sorted({*shipped, *REPOSITORY_ONLY}), n=1, cutoff=0.6)
    hint = ""
    if close and close[0] in shipped:
        hint = f"did you mean {close[0]}? "
    elif close:  # a bundle that stays in the repository: say how to reach it
        hint = f"did you mean models/{close[0]} (in the repository, loaded by path)? "
    raise BundleError(
        name,
        f"no such bundle folder, and no shipped model of that name ({hint}"
        f"shipped: {', '.join(shipped) or 'none'})",
    )


def not_installed(name: str) -> str:
    """Why a repository-only bundle is missing, and how to load it."""
    return (
        "not installed with the package (it stays in the source repository to keep the "
        f"install small); from a clone, load it by path: models/{name}"
    )
