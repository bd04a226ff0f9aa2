"""scenecam-edge: an explainable scene classifier that runs on onnxruntime and numpy.

>>> from scenecam_edge import SceneCam
>>> cam = SceneCam.load()
>>> result = cam.explain("photo.jpg")
>>> result.label, result.confidence, result.heatmap.shape
"""

from ._version import __version__
from .cam import METHODS, TARGET_SPACES
from .errors import BundleError, ImageError, SceneCamError
from .model import SceneCam
from .registry import DEFAULT_MODEL, shipped_models
from .results import Classification, Explanation

__all__ = [
    "DEFAULT_MODEL",
    "METHODS",
    "TARGET_SPACES",
    "BundleError",
    "Classification",
    "Explanation",
    "ImageError",
    "SceneCam",
    "SceneCamError",
    "__version__",
    "shipped_models",
]
