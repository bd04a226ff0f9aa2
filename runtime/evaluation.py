"""Evaluation of a bundle on labelled images, through the runtime alone (no TensorFlow).

Figures (:mod:`.metrics`) over the model's classes, and faithfulness scores per CAM method
(:mod:`.faithfulness`). The HTML and Markdown that present them are in :mod:`.report`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .cam import softmax
from .dataset import LabelledImages, batches
from .faithfulness import Faithfulness, MapScores, forward_passes, random_map, score_maps
from .metrics import classification_figures
from .model import SceneCam
from .options import find_layer

RANDOM_BASELINE = "random map (baseline)"

#: Called after each image of the faithfulness run with (done, total).
Progress = Callable[[int, int], None]


@dataclass
class Evaluation:
    figures: dict[str, Any]
    predictions: np.ndarray  # (N,) class indices into the model's classes
    confidences: np.ndarray  # (N,) probability of the predicted class


#: The split training uses unless told otherwise: validation share and seed.
DEFAULT_VAL_FRACTION = 0.15
DEFAULT_SEED = 1337


def recorded_split(
    cam: SceneCam, val_fraction: float | None = None, seed: int | None = None
) -> tuple[float, int]:
    """The validation share and seed of the bundle's training split: those given, else the
    ones its manifest records, else training's defaults (0.15, 1337). A model trained on
    every image records no split: the split of the run its accuracy estimate came from
    (``evaluation.estimate_from``) is used, else the defaults."""
    split = (cam.manifest.training or {}).get("split") or {}
    if cam.manifest.trained_on_every_image:
        estimate = (cam.manifest.evaluation or {}).get("estimate_from") or {}
        split = (estimate.get("training") or {}).get("split") or {}
    if val_fraction is None:
        val_fraction = float(split.get("val_fraction", DEFAULT_VAL_FRACTION))
    if seed is None:
        seed = int(split.get("seed", DEFAULT_SEED))
    return val_fraction, seed


def evaluate(
    cam: SceneCam, data: LabelledImages, batch_size: int = 64, progress: Progress | None = None
) -> Evaluation:
    """Run ``data`` (model-sized uint8 images, labelled with the model's class indices; see
    :func:`.dataset.align_classes`) through the bundle and compute the figures.
    ``progress`` hears (images done, total) after each batch."""
    if list(cam.class_names) != list(data.class_names):
        raise ValueError(
            f"the model's classes {list(cam.class_names)} differ from the data's {data.class_names}"
        )
    preds, confs = [], []
    for s in batches(len(data), batch_size):
        probs = softmax(cam.logits(data.images[s]).astype(np.float64))
        preds.append(probs.argmax(axis=1))
        confs.append(probs.max(axis=1))
        if progress is not None:
            progress(s.stop, len(data))
    predictions = np.concatenate(preds) if preds else np.zeros(0, np.int64)
    confidences = np.concatenate(confs) if confs else np.zeros(0)
    figures = classification_figures(data.labels, predictions, data.class_names)
    return Evaluation(figures, predictions, confidences)


def faithfulness_subset(data: LabelledImages, images: int, seed: int = 0) -> np.ndarray:
    """The fixed random subset of ``data`` the faithfulness scores use (sorted indices)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(len(data))[:images])


def estimate_faithfulness_seconds(
    cam: SceneCam, data: LabelledImages, methods: list[str], images: int, steps: int = 16
) -> float:
    """Seconds the faithfulness run will take, from one timed batch of the perturbation size.

    The run is dominated by forward passes: each image and method costs ``steps`` deletion
    and insertion images plus two (see :func:`.faithfulness.forward_passes`)."""
    n = min(images, len(data))
    if n == 0:
        return 0.0
    per_map = forward_passes(steps)
    probe = np.repeat(data.images[:1], per_map, axis=0)
    cam.logits(probe)  # the first call pays for memory planning; time the second
    start = time.perf_counter()
    cam.logits(probe)
    seconds_per_map = time.perf_counter() - start
    return seconds_per_map * n * (len(methods) + 1)  # + the random baseline


def faithfulness_scores(
    cam: SceneCam,
    data: LabelledImages,
    methods: list[str],
    images: int = 100,
    steps: int = 16,
    seed: int = 0,
    max_channels: int = 64,
    progress: Progress | None = None,
    layer: str | None = None,
) -> dict[str, MapScores]:
    """Each image's deletion/insertion AUC, drop and increase in confidence per method, on up to
    ``images`` images of ``data`` (a fixed random subset), explaining each prediction; plus a
    random-map baseline row (at ``layer``'s map size). ``progress`` hears of every image
    scored; ``layer`` is the explained layer (None: the model's default)."""
    rng = np.random.default_rng(seed)
    chosen = faithfulness_subset(data, images, seed)
    batch = [data.images[i] for i in chosen]
    names = [data.sources[i] for i in chosen]
    total = len(batch) * (len(methods) + 1)
    done = 0
    # the perturbed images go through what answers (with --tta, the image and its mirror)
    forward = cam.logits

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    table: dict[str, MapScores] = {}
    for method in methods:
        options = cam.explain_options(method=method, max_channels=max_channels, layer=layer)
        explained = [
            e
            for s in batches(len(batch), 16)
            for e in cam.predict(batch[s], names[s], explain=options)
        ]
        table[method] = score_maps(
            forward,
            ((img, e.heatmap, e.index) for img, e in zip(batch, explained, strict=True)),
            steps,
            on_image=tick,
        )
    h, w = (find_layer(cam.layers, layer) if layer else cam.layers[0]).shape[:2]
    predicted = [r.index for s in batches(len(batch), 64) for r in cam.predict(batch[s], names[s])]
    table[RANDOM_BASELINE] = score_maps(
        forward,
        (
            (img, random_map((h, w), img.shape[:2], rng), t)
            for img, t in zip(batch, predicted, strict=True)
        ),
        steps,
        on_image=tick,
    )
    return table


def summaries(scores: dict[str, MapScores]) -> dict[str, Faithfulness]:
    """The table of :func:`faithfulness_scores`: each method's means over the images."""
    return {name: s.summary() for name, s in scores.items()}


def faithfulness_rows(table: dict[str, Faithfulness]) -> list[dict[str, Any]]:
    return [{"method": name, **asdict(f)} for name, f in table.items()]
