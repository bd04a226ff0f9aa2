"""Synthetic pictures for tests, benchmarks and examples that must run without a data set:
smooth sine waves with noise. Random-weight models give structured Grad-CAM maps on them
(pure noise gives flat maps), and a seed makes them the same on every machine."""

from __future__ import annotations

import numpy as np

#: Spatial frequencies (radians per pixel) the waves are drawn from, and the noise's spread.
FREQUENCY = (0.1, 0.6)
NOISE = 25.0


def wave_image(
    rng: np.random.Generator,
    size: int,
    channels: int = 3,
    *,
    phase: float = 0.0,
    frequency: tuple[float, float] = FREQUENCY,
    noise: float = NOISE,
) -> np.ndarray:
    """One uint8 (size, size, channels) wave with noise, drawn from ``rng``; ``phase`` shifts
    the wave (a class offset gives each class its own look)."""
    yy, xx = np.mgrid[0:size, 0:size]
    f = rng.uniform(*frequency, size=2)
    base = 128 + 100 * np.sin(f[0] * xx + f[1] * yy + rng.uniform(0, 6) + phase)
    speckle = rng.normal(0, noise, size=(size, size, channels))
    return np.clip(base[..., None] + speckle, 0, 255).astype(np.uint8)


def wave_images(
    n: int,
    size: int = 32,
    channels: int = 3,
    seed: int = 0,
    *,
    frequency: tuple[float, float] = FREQUENCY,
    noise: float = NOISE,
) -> np.ndarray:
    """``n`` waves, uint8 (n, size, size, channels), the same for the same seed."""
    rng = np.random.default_rng(seed)
    return np.stack(
        [wave_image(rng, size, channels, frequency=frequency, noise=noise) for _ in range(n)]
    )
