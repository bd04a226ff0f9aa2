"""The CAM family against references: TensorFlow GradientTape for the gradient-based
methods, brute-force ablation through the Keras head, and a numpy eigendecomposition."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scenecam_edge import METHODS, SceneCam
from scenecam_edge.cam import softmax
from scenecam_edge.synthetic import wave_images

from .conftest import HAS_TF

GRADIENT_METHODS = ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam"]
TOLERANCE = 1e-4

needs_tf = pytest.mark.skipif(not HAS_TF, reason="needs TensorFlow: pip install '.[train]'")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(keras model, conv layer, bundle, image size, channels) for a linear and a nonlinear head."""
    if not HAS_TF:
        pytest.skip("needs TensorFlow: pip install '.[train]'")
    from scenecam_edge.export import export_keras

    from . import keras_models as km

    out = {}
    for name, model, conv, size, channels in [
        ("linear", km.gap_dense_model(num_classes=5), "block_16_out", 32, 3),
        ("mnist", km.mnist_style_model(), "last_conv_layer", 28, 1),
    ]:
        bundle = export_keras(model, tmp_path_factory.mktemp(name) / "bundle")
        out[name] = (model, conv, SceneCam.load(bundle, threads=1), size, channels)
    return out


@needs_tf
@pytest.mark.tf
@pytest.mark.parametrize("head", ["linear", "mnist"])
@pytest.mark.parametrize("method", GRADIENT_METHODS)
@pytest.mark.parametrize("space", ["logit", "probability"])
def test_gradient_methods_match_gradienttape(models, head: str, method: str, space: str):
    from . import keras_models as km

    model, conv, cam, size, channels = models[head]
    checked = 0
    for i, image in enumerate(wave_images(6, size, channels, seed=11)):
        predicted = cam.classify(image).index
        target = (predicted + 1 + i) % cam.manifest.num_classes  # never the predicted class
        expected = km.tape_method(model, conv, image, target, space, method)
        got = cam.explain(image, target=target, method=method, target_space=space)
        assert got.target_index == target
        ours = got.cam / got.cam.max() if got.cam.max() > 0 else got.cam
        assert np.abs(ours - expected).max() <= TOLERANCE, f"{method} {head} {space} image {i}"
        checked += int(expected.max() > 0)
    assert checked >= 3  # most maps are not empty


@needs_tf
@pytest.mark.tf
@pytest.mark.parametrize("head", ["linear", "mnist"])
@pytest.mark.parametrize("space", ["logit", "probability"])
def test_ablationcam_equals_brute_force_ablation(models, head: str, space: str):
    import tensorflow as tf

    from . import keras_models as km

    model, conv, cam, size, channels = models[head]
    keras_head = km.keras_head(model, conv)
    for i, image in enumerate(wave_images(3, size, channels, seed=12)):
        features, logits = cam.forward(image[None])
        a = features[0].astype(np.float64)
        target = (int(logits[0].argmax()) + 1) % cam.manifest.num_classes
        k = a.shape[-1]
        ablated = np.repeat(a[None], k, axis=0)
        ablated[np.arange(k), :, :, np.arange(k)] = 0.0
        z = np.asarray(keras_head(tf.constant(ablated, tf.float32)), np.float64)
        z0 = np.asarray(keras_head(tf.constant(a[None], tf.float32)), np.float64)
        scores, original = (z, z0) if space == "logit" else (softmax(z), softmax(z0))
        weights = (original[0, target] - scores[:, target]) / (original[0, target] + 1e-7)
        expected = np.maximum((a * weights).sum(-1), 0)
        expected = expected / expected.max() if expected.max() > 0 else expected
        got = cam.explain(image, target=target, method="ablationcam", target_space=space).cam
        ours = got / got.max() if got.max() > 0 else got
        assert np.abs(ours - expected).max() <= 1e-3, f"{head} {space} image {i}"


def test_eigencam_matches_an_eigendecomposition(scenecam: SceneCam, sample_images: list[Path]):
    for path in sample_images[:4]:
        e = scenecam.explain(path, method="eigencam")
        features, _ = scenecam.forward(scenecam.to_input(scenecam.load_image(path))[None])
        a = features[0].astype(np.float64)
        h, w, k = a.shape
        x = a.reshape(h * w, k)
        centred = x - x.mean(axis=0)
        _, vectors = np.linalg.eigh(centred.T @ centred)  # the top eigenvector = first PC
        projection = centred @ vectors[:, -1]
        total = x.sum(axis=1)
        if np.dot(projection, total - total.mean()) < 0:
            projection = -projection
        expected = np.maximum(projection, 0).reshape(h, w)
        assert np.abs(e.cam / e.cam.max() - expected / expected.max()).max() <= 1e-4
        # Eigen-CAM ignores the target class.
        other = scenecam.explain(path, method="eigencam", target=(e.index + 1) % 6)
        assert np.array_equal(other.cam, e.cam)


def test_scorecam_weights_are_masked_scores(scenecam: SceneCam, sample_images: list[Path]):
    """Score-CAM recomputed by hand with the runtime's own forward pass (4 channels), its
    masks resized by OpenCV (the runtime's own resizing is numpy's: an independent check)."""
    cv2 = pytest.importorskip("cv2", reason="compares with OpenCV: pip install '.[camera]'")

    image = scenecam.to_input(scenecam.load_image(sample_images[2]))
    features, logits = scenecam.forward(image[None])
    a = features[0]
    target = int(logits[0].argmax())
    channels = np.argsort(-a.max(axis=(0, 1)), kind="stable")[:4]
    masked = []
    for c in channels:
        m = cv2.resize(a[:, :, c], (150, 150), interpolation=cv2.INTER_LINEAR)
        m = (m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else np.zeros_like(m)
        masked.append(np.round(image.astype(np.float32) * m[..., None]).astype(np.uint8))
    scores = softmax(scenecam.forward(np.stack(masked))[1].astype(np.float64))[:, target]
    weights = softmax(scores)
    expected = np.maximum((a[:, :, channels] * weights).sum(-1), 0)
    got = scenecam.explain(image, method="scorecam", target_space="probability", max_channels=4).cam
    assert np.abs(got / got.max() - expected / expected.max()).max() <= 1e-4


def test_every_method_runs_and_is_selectable_from_the_cli(
    scenecam: SceneCam, sample_images: list[Path], tmp_path: Path
):
    from click.testing import CliRunner

    from scenecam_edge.cli import cli

    assert set(METHODS) == {
        "gradcam",
        "gradcam++",
        "xgradcam",
        "hirescam",
        "layercam",
        "eigencam",
        "ablationcam",
        "scorecam",
    }
    for name in METHODS:
        e = scenecam.explain(sample_images[0], method=name, max_channels=8)
        assert e.method == name and e.cam.min() >= 0 and e.heatmap.max() <= 1.0
        result = CliRunner().invoke(
            cli,
            [
                "classify",
                str(sample_images[0]),
                "--method",
                name,
                "--json",
                "--heatmaps",
                str(tmp_path / name),
            ],
        )
        assert result.exit_code == 0, result.output
        assert f'"method": "{name}"' in result.output
