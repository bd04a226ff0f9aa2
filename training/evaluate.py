"""Evaluation through the runtime, the way users deploy the model."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from scenecam_edge import SceneCam
from scenecam_edge.training.data import LabelledImages, batches
from scenecam_edge.training.metrics import classification_figures


def predict_arrays(cam: SceneCam, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Predicted class indices for decoded, model-sized images (N, H, W, C) uint8."""
    preds = [cam.forward(images[s])[1].argmax(axis=1) for s in batches(len(images), batch_size)]
    return np.concatenate(preds) if preds else np.zeros(0, np.int64)


def evaluate_arrays(bundle: str | os.PathLike[str], data: LabelledImages) -> dict[str, Any]:
    cam = SceneCam.load(bundle)
    if list(cam.class_names) != list(data.class_names):
        raise ValueError(
            f"the model's classes {list(cam.class_names)} differ from the data's {data.class_names}"
        )
    preds = predict_arrays(cam, data.images)
    return classification_figures(data.labels, preds, data.class_names)
