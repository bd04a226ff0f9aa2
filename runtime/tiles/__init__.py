"""Large scenes: classify rasters (GeoTIFFs, or anything GDAL reads) tile by tile.

- :mod:`.grid`: where the tiles and output cells lie; the output's georeferencing.
- :mod:`.raster`: a scene's rows of tiles (bands, masks, stretch: :mod:`scenecam_edge.rasters`).
- :mod:`.tiler`: :class:`SceneTiler`, rows of tile results in bounded memory.
- :mod:`.writers`: the GIS-ready GeoTIFFs (class map, probabilities), written atomically.
- :mod:`.mosaic`: the full-resolution CAM mosaic, window by window.
- :mod:`.job`: one scene to its outputs and JSON summary; many scenes, resumably.

>>> from scenecam_edge import SceneCam
>>> from scenecam_edge.tiles import OutputSet, TileOptions, classify_scene
>>> summary = classify_scene(SceneCam.load(), "scene.tif", OutputSet.beside("out/scene.tif"),
...                          TileOptions(bands=(4, 3, 2), min_valid=0.5))

Needs rasterio (``pip install 'scenecam-edge[geo]'``); it is imported when a scene is
opened, so importing this package works without it. See docs/satellite.md.
"""

from __future__ import annotations

from .grid import TileGrid
from .job import (
    SceneOutcome,
    TileOptions,
    classify_scene,
    expand_scenes,
    outputs_in,
    run_scene,
)
from .raster import (
    DEFAULT_PERCENTILES,
    Scene,
    Stretch,
    StretchChoice,
    model_stretch,
    parse_bands,
    require_rasterio,
)
from .tiler import DEFAULT_MIN_VALID, SceneTiler, TileRow
from .writers import PROBABILITY_FORMATS, OutputSet, ProbabilityFormat, check_raster_path

__all__ = [
    "DEFAULT_MIN_VALID",
    "DEFAULT_PERCENTILES",
    "PROBABILITY_FORMATS",
    "OutputSet",
    "ProbabilityFormat",
    "Scene",
    "SceneOutcome",
    "SceneTiler",
    "Stretch",
    "StretchChoice",
    "TileGrid",
    "TileOptions",
    "TileRow",
    "check_raster_path",
    "classify_scene",
    "expand_scenes",
    "model_stretch",
    "outputs_in",
    "parse_bands",
    "require_rasterio",
    "run_scene",
]
