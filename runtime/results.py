"""Result records returned by the API and printed by the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from . import visual


@dataclass(frozen=True, kw_only=True)
class Classification:
    """One image's answer. ``probabilities`` maps every class name to its softmax probability."""

    source: str
    index: int
    label: str
    probabilities: dict[str, float]
    top_k: list[tuple[str, float]]
    logits: np.ndarray = field(repr=False, compare=False)

    @property
    def confidence(self) -> float:
        return self.probabilities[self.label]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record: path, label, class index, confidence, probabilities, top_k."""
        return {
            "path": self.source,
            "label": self.label,
            "index": self.index,
            "confidence": round(self.confidence, 6),
            "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
            "top_k": [[name, round(p, 6)] for name, p in self.top_k],
        }


@dataclass(frozen=True, kw_only=True)
class Explanation(Classification):
    """A classification plus the map that explains ``target`` (by default the predicted class).

    ``cam`` is the raw (h, w) map after ReLU at the features' resolution; ``heatmap`` is it
    normalised to [0, 1] and resized to ``image``, the decoded input (uint8, H x W x channels,
    at its own size; ``picture`` is it as RGB); ``colours`` is the heatmap in JET colours (RGB
    uint8) and ``overlay`` those colours blended over the picture with weight ``alpha``. Each
    is made from ``cam`` the first time it is read and then kept: a job that prints answers
    never pays for a picture of the photo's size (a float map of a 12 MP photo is 48 MB), one
    that stores only maps never pays for the colours, and the overlay is made straight from
    ``cam`` (:func:`scenecam_edge.visual.levels_at`), not through the float heatmap.
    """

    target_index: int
    target_label: str
    target_space: str
    method: str
    cam: np.ndarray = field(repr=False, compare=False)
    image: np.ndarray = field(repr=False, compare=False)
    alpha: float = field(default=visual.DEFAULT_ALPHA, repr=False, compare=False)
    rgb_bands: tuple[int, int, int] = field(default=(0, 1, 2), repr=False, compare=False)

    @property
    def picture(self) -> np.ndarray:
        """``image`` as RGB: its channels ``rgb_bands`` (the model's, from its manifest)."""
        return visual.rgb_view(self.image, self.rgb_bands)

    @cached_property
    def heatmap(self) -> np.ndarray:
        return visual.heatmap_at(self.cam, self.image.shape[0], self.image.shape[1])

    @cached_property
    def levels(self) -> np.ndarray:
        """The heatmap as colour levels (uint8, the image's size)."""
        return visual.levels_at(self.cam, self.image.shape[0], self.image.shape[1])

    @cached_property
    def colours(self) -> np.ndarray:
        return visual.colorize_levels(self.levels)

    @cached_property
    def overlay(self) -> np.ndarray:
        return visual.blend(self.picture, self.levels, self.alpha)

    def to_dict(self) -> dict[str, Any]:
        record = super().to_dict()
        record.update(target=self.target_label, target_space=self.target_space, method=self.method)
        return record
