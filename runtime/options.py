"""How to explain: the options every explaining entry point shares, as one record, and
their validation against a model's classes and layers."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .cam import DEFAULT_MAX_CHANNELS, TARGET_SPACES, TargetSpace, get_method
from .layers import ExplainedLayer
from .visual import DEFAULT_ALPHA


@dataclass(frozen=True)
class ExplainOptions:
    """How to explain: a fixed target class (None: each image's prediction), the CAM
    method, the target space, the overlay's blending weight and the layer (None: the
    bundle's default)."""

    target: int | None
    method: str
    target_space: TargetSpace
    alpha: float
    max_channels: int = DEFAULT_MAX_CHANNELS  # Score-CAM: channels it masks the image with
    layer: str | None = None


class UnknownLayerError(ValueError):
    """A layer name the bundle does not explain; the message lists the ones it does."""


def describe_layers(layers: Sequence[ExplainedLayer]) -> str:
    """``a (5x5, default), b (10x10)``: the layers a bundle explains, for messages."""
    return ", ".join(
        f"{layer.name} ({layer.map_size}{', default' if i == 0 else ''})"
        for i, layer in enumerate(layers)
    )


def find_layer(layers: Sequence[ExplainedLayer], name: str) -> ExplainedLayer:
    """The layer called ``name``; :class:`UnknownLayerError` listing the others."""
    for layer in layers:
        if layer.name == name:
            return layer
    raise UnknownLayerError(
        f"this model does not explain layer {name!r}; it explains {describe_layers(layers)}"
    )


def explain_options(
    class_names: Sequence[str],
    layers: Sequence[ExplainedLayer],
    target: int | str | None = None,
    method: str = "gradcam",
    target_space: TargetSpace = "logit",
    alpha: float = DEFAULT_ALPHA,
    max_channels: int = DEFAULT_MAX_CHANNELS,
    layer: str | None = None,
) -> ExplainOptions:
    """Validated explanation settings (ValueError naming what is wrong)."""
    if max_channels < 1:
        raise ValueError(f"max_channels must be at least 1, not {max_channels}")
    if target_space not in TARGET_SPACES:
        raise ValueError(f"target_space must be one of {TARGET_SPACES}, not {target_space!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], not {alpha}")
    if layer is not None and find_layer(layers, layer) is layers[0]:
        layer = None  # the default, named: the same record as not naming it
    return ExplainOptions(
        target=None if target is None else class_index(class_names, target),
        method=get_method(method).name,
        target_space=target_space,
        alpha=alpha,
        max_channels=max_channels,
        layer=layer,
    )


def class_index(class_names: Sequence[str], target: int | str) -> int:
    """A class index from an index or a class name; ValueError when it is neither."""
    if isinstance(target, str):
        if target in class_names:
            return list(class_names).index(target)
        folded = [i for i, n in enumerate(class_names) if n.casefold() == target.casefold()]
        if len(folded) == 1:  # "Sea" for "sea"; ambiguous only if names differ by case
            return folded[0]
        if target.strip().lstrip("-").isdigit():
            target = int(target)
        else:
            close = difflib.get_close_matches(
                target.casefold(), [n.casefold() for n in class_names], n=1
            )
            hint = f"did you mean {_named(class_names, close[0])}? " if close else ""
            raise ValueError(
                f"unknown class {target!r}; {hint}classes are {', '.join(class_names)}"
            )
    if isinstance(target, bool) or not isinstance(target, int | np.integer):
        raise ValueError(f"target must be a class index or name, not {target!r}")
    if not 0 <= int(target) < len(class_names):
        raise ValueError(f"class index {target} is out of range (0..{len(class_names) - 1})")
    return int(target)


def _named(class_names: Sequence[str], folded: str) -> str:
    """The class name whose case-folded form is ``folded``."""
    return next(n for n in class_names if n.casefold() == folded)
