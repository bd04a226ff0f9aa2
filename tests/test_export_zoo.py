"""The model zoo: every keras.applications family (small inputs, random weights, one case
each), nested models, Normalization, grouped convolutions, max-pool and layer-norm heads, an
earlier layer (a VJP graph head), a 4-channel input and scaling outside the model.

For each: the runtime's logits equal Keras's, and its normalised Grad-CAM maps equal
GradientTape's, for the logit and the probability target, the predicted class and another.
The reference (:class:`tests.keras_models.TapeGradCam`) takes the gradient on the Keras
model itself, not on anything the export built. ``docs/export.md``'s table comes from the
same cases: ``python benchmarks/export_zoo.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from .conftest import HAS_TF

pytestmark = [
    pytest.mark.tf,
    pytest.mark.slow,
    pytest.mark.skipif(not HAS_TF, reason="needs TensorFlow: pip install '.[train]'"),
]

TOLERANCE = 1e-4
#: The core cases (the issue's failure classes, about 4 minutes on 2 cores) run by default;
#: SCENECAM_ZOO=all adds every other keras.applications family (tf2onnx alone takes 15-90 s
#: per family here, so the whole zoo is about 11 minutes), SCENECAM_ZOO=rest runs only those
#: but the two slowest (CI runs them beside its runtime-only phase, which leaves a core idle).
ZOO = os.environ.get("SCENECAM_ZOO", "core")
SKIP = "a further keras.applications family: SCENECAM_ZOO=all (or rest) runs it"


if HAS_TF:
    from scenecam_edge import SceneCam
    from scenecam_edge.export import export_keras
    from scenecam_edge.export.preprocess import parse

    from . import keras_models as km

    def _skip(name: str) -> str | None:
        """Why this run leaves the case out, or None."""
        if ZOO == "all":
            return None
        if ZOO == "rest":
            if name in km.ZOO_CORE:
                return "a core case: the default run has it"
            if name in km.ZOO_ALL_ONLY:
                return "one of the two slowest families: SCENECAM_ZOO=all runs it"
            return None
        return None if name in km.ZOO_CORE else SKIP

    CASES = [
        pytest.param(name, marks=[pytest.mark.skip(why)] if (why := _skip(name)) else [])
        for name in km.ZOO
    ]
else:
    CASES = []


def check_case(name: str, out: Path) -> dict[str, object]:
    """Export one zoo case and compare it with Keras; returns the figures for the docs."""
    build, layer, preprocess = km.ZOO[name]
    model = build()
    bundle = export_keras(model, out, conv_layer=layer, preprocess=preprocess)
    manifest = json.loads((bundle / "manifest.json").read_text())
    cam = SceneCam.load(bundle, threads=1)
    h, w, c = cam.manifest.input.height, cam.manifest.input.width, cam.manifest.input.channels
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, h, w, c), dtype=np.uint8)
    scaled = parse(preprocess).apply(images.astype(np.float32)).astype(np.float32)
    reference = km.TapeGradCam(model, manifest["conv_layer"])
    _, logits = cam.forward(images)
    worst_logit = worst_map = 0.0
    for i, image in enumerate(images):
        predicted = int(np.argmax(logits[i]))
        for target in (predicted, (predicted + 1) % cam.manifest.num_classes):
            for space in ("logit", "probability"):
                expected, ref_logits = reference(scaled[i], target, space)
                scale = max(1.0, float(np.abs(ref_logits).max()))
                worst_logit = max(worst_logit, float(np.abs(logits[i] - ref_logits).max()) / scale)
                # predict, not explain: image decoding is for 1 or 3 channels; arrays of any
                # channel count go straight to the graph
                options = cam.explain_options(target, target_space=space)  # type: ignore[arg-type]
                got = cam.predict([image], ["zoo"], explain=options)[0].cam
                ours = got / got.max() if got.max() > 0 else got
                worst_map = max(worst_map, float(np.abs(ours - expected).max()))
    return {
        "case": name,
        "layer": manifest["conv_layer"],
        "map": "x".join(str(d) for d in manifest["outputs"]["features"]["shape"][1:3]),
        "head": "graph (head.onnx)"
        if manifest["head"]["layers"][0]["type"] == "graph"
        else ", ".join(s["type"] for s in manifest["head"]["layers"]),
        "logits": worst_logit,
        "maps": worst_map,
    }


@pytest.mark.parametrize("name", CASES)
def test_zoo_case_matches_keras_and_gradienttape(name: str, tmp_path: Path):
    figures = check_case(name, tmp_path / "bundle")
    assert figures["logits"] <= TOLERANCE, figures
    assert figures["maps"] <= TOLERANCE, figures
