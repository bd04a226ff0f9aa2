"""How to explain: the options every explaining entry point shares, as one record."""

from __future__ import annotations

from dataclasses import dataclass

from .cam import DEFAULT_MAX_CHANNELS, TargetSpace


@dataclass(frozen=True)
class ExplainOptions:
    """How to explain: a fixed target class (None: each image's prediction), the CAM
    method, the target space and the overlay's blending weight."""

    target: int | None
    method: str
    target_space: TargetSpace
    alpha: float
    max_channels: int = DEFAULT_MAX_CHANNELS  # Score-CAM: channels it masks the image with
