"""The export's one error type (no TensorFlow import here)."""

from __future__ import annotations


class ExportError(ValueError):
    """The model cannot be exported; the message names the layer and the reason."""
