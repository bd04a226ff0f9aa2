"""The int8 model against the float one: accuracy, agreement, Grad-CAM correlation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from scenecam_edge import SceneCam
from scenecam_edge.cam import CamInputs, get_method, softmax


@dataclass
class Comparison:
    """The int8 model against the float one on the same images."""

    on: str
    images: int
    prediction_agreement: float
    cam_correlation_mean: float
    cam_correlation_median: float
    cam_correlation_min: float
    float_accuracy: float | None = None
    int8_accuracy: float | None = None
    cam: str = "gradcam, logit space, the float model's predicted class, at feature resolution"
    #: The same correlation figures for each extra layer both bundles explain, by name.
    layers: dict[str, dict[str, float]] = field(default_factory=dict)
    #: The int8 model's classification figures (with labels); they become its evaluation.
    int8_figures: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def accuracy_drop_points(self) -> float | None:
        if self.float_accuracy is None or self.int8_accuracy is None:
            return None
        return 100.0 * (self.float_accuracy - self.int8_accuracy)

    def as_dict(self) -> dict[str, Any]:
        figures = asdict(self)
        del figures["int8_figures"]
        return {**figures, "accuracy_drop_points": self.accuracy_drop_points}

    def misses(self, max_drop_points: float, min_correlation: float) -> list[str]:
        """What misses its target, in words (empty when everything holds)."""
        problems = []
        drop = self.accuracy_drop_points
        if drop is not None and drop > max_drop_points:
            problems.append(
                f"int8 accuracy {self.int8_accuracy:.4f} is {drop:.2f} points below float "
                f"{self.float_accuracy:.4f} (allowed {max_drop_points})"
            )
        if not self.cam_correlation_mean >= min_correlation:
            problems.append(
                f"mean Grad-CAM correlation {self.cam_correlation_mean:.3f} is below "
                f"{min_correlation}"
            )
        return problems


def compare(
    reference: SceneCam,
    candidate: SceneCam,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    on: str = "",
    batch_size: int = 64,
) -> Comparison:
    """Accuracy (with labels), prediction agreement, and the Pearson correlation of each
    image's Grad-CAM map (the reference's predicted class, logit space, feature resolution)."""
    if len(images) == 0:
        raise ValueError("no images to compare on")
    gradcam = get_method("gradcam")
    ref_pred: list[np.ndarray] = []
    cand_pred: list[np.ndarray] = []
    correlations: list[float] = []
    extra = [x.name for x in reference.layers[1:] if x.name in reference.heads]
    extra = [name for name in extra if name in candidate.heads]
    per_layer: dict[str, list[float]] = {name: [] for name in extra}
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        f_ref, z_ref = reference.forward(batch)
        f_cand, z_cand = candidate.forward(batch)
        targets = softmax(z_ref.astype(np.float64)).argmax(axis=1)
        maps_ref = gradcam.compute(CamInputs(f_ref, reference.head, z_ref, targets, "logit"))
        maps_cand = gradcam.compute(CamInputs(f_cand, candidate.head, z_cand, targets, "logit"))
        ref_pred.append(targets)
        cand_pred.append(softmax(z_cand.astype(np.float64)).argmax(axis=1))
        correlations.extend(pearson(a, b) for a, b in zip(maps_ref, maps_cand, strict=True))
        for name in extra:
            pair = []
            for model in (reference, candidate):
                f, z = model.forward(batch, name)
                pair.append(gradcam.compute(CamInputs(f, model.heads[name], z, targets, "logit")))
            per_layer[name].extend(pearson(a, b) for a, b in zip(*pair, strict=True))
    pred_ref, pred_cand = np.concatenate(ref_pred), np.concatenate(cand_pred)
    corr = np.asarray(correlations)
    result = Comparison(
        on=on,
        images=len(images),
        prediction_agreement=float((pred_ref == pred_cand).mean()),
        cam_correlation_mean=float(corr.mean()),
        cam_correlation_median=float(np.median(corr)),
        cam_correlation_min=float(corr.min()),
        layers={name: _summary(np.asarray(values)) for name, values in per_layer.items()},
    )
    if labels is not None:
        from scenecam_edge.metrics import classification_figures

        result.float_accuracy = float((pred_ref == labels).mean())
        result.int8_accuracy = float((pred_cand == labels).mean())
        result.int8_figures = classification_figures(labels, pred_cand, candidate.class_names)
    return result


def _summary(corr: np.ndarray) -> dict[str, float]:
    return {
        "cam_correlation_mean": float(corr.mean()),
        "cam_correlation_median": float(np.median(corr)),
        "cam_correlation_min": float(corr.min()),
    }


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two maps; two flat maps agree (1) only if they are equal."""
    x = np.asarray(a, np.float64).ravel()
    y = np.asarray(b, np.float64).ravel()
    x, y = x - x.mean(), y - y.mean()
    nx, ny = float(np.sqrt(x @ x)), float(np.sqrt(y @ y))
    if nx == 0.0 or ny == 0.0:
        return 1.0 if nx == ny and np.allclose(a, b) else 0.0
    return float(x @ y / (nx * ny))
