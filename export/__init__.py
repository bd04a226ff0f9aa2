"""Keras model -> bundle (``model.onnx`` + ``head.npz`` + ``manifest.json``), and float bundle ->
int8 bundle.

>>> from scenecam_edge.export import export_keras          # needs TensorFlow and tf2onnx
>>> export_keras("model.keras", "bundles/mine", class_names=["cat", "dog"])
>>> from scenecam_edge.export.quantize import quantize_bundle   # needs onnx, not TensorFlow

The Keras names load on first use, so ``scenecam_edge.export.quantize`` never pulls in
TensorFlow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import ExportError

if TYPE_CHECKING:
    from .keras_export import HeadPlan, export_keras, split_head

__all__ = ["ExportError", "HeadPlan", "export_keras", "split_head"]


def __getattr__(name: str) -> Any:
    if name in ("HeadPlan", "export_keras", "split_head"):
        from . import keras_export

        return getattr(keras_export, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
