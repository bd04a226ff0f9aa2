"""One options record, end to end: ExplainOptions reaches the Ray predictor and the tiles
job whole (layer and max_channels included), and no map is computed where none is asked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scenecam_edge.model import SceneCam
from scenecam_edge.options import ExplainOptions


def test_ray_predictor_takes_the_whole_record(scenecam: SceneCam, sample_images: list[Path]):
    """The predictor is a plain class (Ray instantiates it per worker): called here directly,
    its maps are those of the layer, target and method the record names."""
    from scenecam_edge.integrations.ray import SceneCamPredictor

    layer = scenecam.layers[-1].name
    assert layer != scenecam.layers[0].name, "the default model offers a second layer"
    options = scenecam.explain_options(target="sea", method="gradcam++", layer=layer)
    images = [np.asarray(scenecam.load_image(p)) for p in sample_images[:2]]
    column = np.empty(len(images), dtype=object)  # as Ray gives images of different sizes
    column[:] = images
    batch = {"image": column, "path": np.array(["a", "b"])}
    predictor = SceneCamPredictor(explain=options)
    out = predictor(batch)
    expected = scenecam.explain(images, target="sea", method="gradcam++", layer=layer)
    assert out["cam"].shape == (2, *expected[0].cam.shape) and expected[0].cam.shape == (10, 10)
    for got, want in zip(out["cam"], expected, strict=True):
        np.testing.assert_allclose(got, want.cam, rtol=1e-4, atol=1e-6)
    assert "cam" not in SceneCamPredictor()(batch)  # no record: no maps
    bad = ExplainOptions(target=None, method="gradcam", target_space="logit", alpha=0.4, layer="x")
    with pytest.raises(ValueError, match="does not explain layer 'x'"):
        SceneCamPredictor(explain=bad)


def test_tile_options_write_the_mosaic_exactly_when_explaining():
    from scenecam_edge.tiles import TileOptions

    assert not TileOptions().heatmap
    record = ExplainOptions(target=None, method="gradcam", target_space="logit", alpha=0.4)
    assert TileOptions(explain=record).heatmap
    with pytest.raises(TypeError):
        TileOptions(heatmap=True)  # type: ignore[call-arg]  # no separate flag to disagree
