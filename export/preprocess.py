"""Pixel scaling that lives outside a model, baked into the exported graph.

``--preprocess`` takes ``none``, ``0..1``, ``-1..1``, ``caffe`` (BGR order, ImageNet means
subtracted: Keras's ResNet50/VGG ``preprocess_input``), ``torch`` (0..1, then ImageNet
mean/std: DenseNet's) or explicit per-channel values ``mean=M1,M2,...;std=S1,S2,...`` on the
0..255 scale. The bundle's graph then takes raw uint8 pixels and scales them itself, and the
manifest records what it does. No TensorFlow here: the CLI parses the option before it
imports the export.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ExportError

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
NAMES = ("none", "0..1", "-1..1", "caffe", "torch")


@dataclass(frozen=True)
class Preprocess:
    """x' = (x[..., order] - mean) / std per channel, on 0..255 pixels."""

    name: str
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    bgr: bool = False

    @property
    def is_identity(self) -> bool:
        return self.name == "none"

    def arrays(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) as float32 arrays of ``channels`` values."""
        mean = np.broadcast_to(np.asarray(self.mean or (0.0,), np.float32), (channels,))
        std = np.broadcast_to(np.asarray(self.std or (1.0,), np.float32), (channels,))
        return mean.copy(), std.copy()

    def check(self, channels: int) -> None:
        if self.bgr and channels != 3:
            raise ExportError(f"--preprocess {self.name} needs 3 input channels, not {channels}")
        for what, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (0, 1, channels):
                raise ExportError(
                    f"--preprocess gives {len(values)} {what} values for {channels} channels"
                )

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The same scaling in numpy, for float (N, H, W, C) pixels (the export's check)."""
        if self.is_identity:
            return x
        mean, std = self.arrays(x.shape[-1])
        if self.bgr:
            x = x[..., ::-1]
        return (x - mean) / std

    def to_manifest(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "bgr": self.bgr,
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
        }


def parse(text: str | None) -> Preprocess:
    """A :class:`Preprocess` from the option's text (``None``: nothing given, identity)."""
    if text is None or text == "none":
        return Preprocess("none")
    if text == "0..1":
        return Preprocess(text, (0.0,), (255.0,))
    if text == "-1..1":
        return Preprocess(text, (127.5,), (127.5,))
    if text == "caffe":
        return Preprocess(text, _CAFFE_MEAN_BGR, (1.0,), bgr=True)
    if text == "torch":
        return Preprocess(
            text, tuple(255 * m for m in _IMAGENET_MEAN), tuple(255 * s for s in _IMAGENET_STD)
        )
    parts = dict(p.split("=", 1) for p in text.split(";") if "=" in p)
    if set(parts) == {"mean", "std"} and text.count("=") == 2:
        try:
            mean = tuple(float(v) for v in parts["mean"].split(","))
            std = tuple(float(v) for v in parts["std"].split(","))
        except ValueError:
            mean = std = ()
        if mean and std and all(s > 0 for s in std):
            return Preprocess("mean/std", mean, std)
    raise ExportError(
        f"--preprocess {text!r} is not one of {', '.join(NAMES)} or 'mean=M1,M2,..;std=S1,S2,..' "
        "(positive std, 0..255 scale)"
    )
