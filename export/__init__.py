"""Keras model -> bundle (``model.onnx`` + ``head.npz`` + ``manifest.json``). Needs TensorFlow.

>>> from scenecam_edge.export import export_keras
>>> export_keras("model.keras", "bundles/mine", class_names=["cat", "dog"])
"""

from .keras_export import ExportError, HeadSpec, export_keras, split_head

__all__ = ["ExportError", "HeadSpec", "export_keras", "split_head"]
