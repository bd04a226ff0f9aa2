"""Every gradient-based CAM formula against GradientTape, without TensorFlow: the references
in tests/golden/ were written by ``python -m tests.golden.make_golden`` (train extra) from a
linear head (GAP + Dense) and the MNIST tutorial's nonlinear head. Here the runtime's numpy
head, built from the exported head's own layers and arrays, must give Keras's logits and, for
each method, target space and target, the same normalised map."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scenecam_edge.cam import CamInputs, get_method, normalize
from scenecam_edge.head import Head

GOLDEN = Path(__file__).parent / "golden"
METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam")
TOLERANCE = 1e-4


def load(case: str) -> tuple[dict[str, np.ndarray], Head]:
    with np.load(GOLDEN / f"{case}.npz", allow_pickle=False) as npz:
        golden = {k: npz[k] for k in npz.files}
    arrays = {k.removeprefix("head/"): v for k, v in golden.items() if k.startswith("head/")}
    layers = json.loads(str(golden["head_layers"]))
    head = Head.from_manifest(layers, arrays, golden["features"].shape[1:], f"golden {case}")
    return golden, head


@pytest.mark.parametrize("case", ["linear", "nonlinear"])
def test_numpy_head_gives_keras_logits(case: str):
    golden, head = load(case)
    logits = head.logits(golden["features"])
    assert np.abs(logits - golden["keras_logits"]).max() <= TOLERANCE


@pytest.mark.parametrize("case", ["linear", "nonlinear"])
@pytest.mark.parametrize("space", ["logit", "probability"])
@pytest.mark.parametrize("method", METHODS)
def test_gradient_methods_equal_gradienttape(case: str, space: str, method: str):
    golden, head = load(case)
    features = golden["features"]
    logits = head.logits(features)
    nonempty = 0
    for which in (0, 1):  # the predicted class, then another one
        targets = golden["targets"][:, which]
        inputs = CamInputs(features, head, logits, targets, space)  # type: ignore[arg-type]
        maps = get_method(method).compute(inputs)
        expected = golden[f"map/{space}/{method}/{which}"]
        for i in range(len(features)):
            ours = normalize(np.maximum(maps[i], 0))
            assert np.abs(ours - expected[i]).max() <= TOLERANCE, (method, space, which, i)
            nonempty += int(expected[i].max() > 0)
    assert nonempty >= 4  # the references are real maps, not all empty


def test_a_wrong_formula_would_be_caught():
    """The references tell methods apart: with a nonlinear head, Grad-CAM's map is not
    HiResCAM's (with GAP + Dense they coincide, which is why both heads are here)."""
    golden, _ = load("nonlinear")
    a = golden["map/logit/gradcam/0"]
    b = golden["map/logit/hirescam/0"]
    assert np.abs(a - b).max() > 10 * TOLERANCE
