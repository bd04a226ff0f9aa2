"""Export against TensorFlow: the ONNX logits against Keras, the runtime's Grad-CAM against
GradientTape (the keras-io recipe) on the same random-weight models."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from scenecam_edge.synthetic import wave_images

from .conftest import HAS_TF

pytestmark = [
    pytest.mark.tf,
    pytest.mark.skipif(not HAS_TF, reason="needs TensorFlow: pip install '.[train]'"),
]

if HAS_TF:
    from scenecam_edge import SceneCam
    from scenecam_edge.export import ExportError, export_keras

    from . import keras_models as km

N_IMAGES = 24
MAP_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def gap_model():
    return km.gap_dense_model(num_classes=5)


@pytest.fixture(scope="module")
def gap_bundle(gap_model, tmp_path_factory) -> Path:
    return export_keras(
        gap_model, tmp_path_factory.mktemp("gap") / "bundle", class_names=list("abcde")
    )


def test_bundle_layout_and_manifest(gap_bundle: Path):
    assert sorted(p.name for p in gap_bundle.iterdir()) == [
        "head.npz",
        "manifest.json",
        "model.onnx",
    ]
    manifest = json.loads((gap_bundle / "manifest.json").read_text())
    assert manifest["outputs"]["features"]["shape"] == [None, 16, 16, 16]
    assert manifest["outputs"]["logits"]["shape"] == [None, 5]
    assert manifest["conv_layer"] == "block_16_out"  # the ReLU after the last add
    assert manifest["head"]["final_activation"] == "softmax"
    assert [layer["type"] for layer in manifest["head"]["layers"]] == [
        "global_average_pooling",
        "dense",
    ]
    assert manifest["class_names"] == list("abcde")


def test_onnx_logits_match_keras(gap_model, gap_bundle: Path):
    import keras

    cam = SceneCam.load(gap_bundle, threads=1)
    images = wave_images(16, seed=1)
    features, logits = cam.forward(images)
    last = gap_model.layers[-1]
    reference = keras.Model(
        gap_model.inputs, [gap_model.get_layer("block_16_out").output, last.input]
    )
    ref_features, penultimate = (np.asarray(t) for t in reference(images.astype(np.float32)))
    ref_logits = penultimate @ np.asarray(last.kernel) + np.asarray(last.bias)
    assert np.abs(logits - ref_logits).max() <= 1e-4
    assert np.abs(features - ref_features).max() <= 1e-4
    # The exported logits are pre-softmax: their softmax is the Keras model's output.
    probs = np.asarray(gap_model(images.astype(np.float32)))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    assert np.abs(e / e.sum(axis=1, keepdims=True) - probs).max() <= 1e-5
    assert not np.allclose(logits.sum(axis=1), 1.0, atol=1e-3)


@pytest.mark.parametrize("space", ["logit", "probability"])
@pytest.mark.parametrize("which", ["predicted", "other"])
def test_gradcam_matches_gradienttape(gap_model, gap_bundle: Path, space: str, which: str):
    cam = SceneCam.load(gap_bundle, threads=1)
    images = wave_images(N_IMAGES, seed=2)
    nontrivial = 0
    for i, image in enumerate(images):
        predicted = cam.classify(image).index
        target = None if which == "predicted" else (predicted + 1 + i % 4) % 5
        expected, explained = km.tape_gradcam(gap_model, "block_16_out", image, target, space)
        got = cam.explain(image, target=target, target_space=space)
        assert got.target_index == explained
        ours = got.cam / got.cam.max() if got.cam.max() > 0 else got.cam
        assert ours.shape == expected.shape == (16, 16)
        assert np.abs(ours - expected).max() <= MAP_TOLERANCE, f"image {i}"
        nontrivial += int(expected.max() > 0 and (expected > 0).mean() < 1.0)
    assert nontrivial >= N_IMAGES // 2  # the comparison is not between empty maps


@pytest.mark.parametrize(
    "builder,conv_layer,channels,size",
    [
        ("avgpool_flatten_model", "block_16_out", 3, 32),
        ("flatten_dense_model", "block_16_out", 3, 32),
        ("mnist_style_model", "last_conv_layer", 1, 28),
        ("batchnorm_mlp_model", "block_16_out", 3, 32),
    ],
)
def test_other_heads_match_gradienttape(builder, conv_layer, channels, size, tmp_path: Path):
    model = getattr(km, builder)()
    bundle = export_keras(model, tmp_path / "b")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["conv_layer"] == conv_layer  # found by default
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o777 & ~umask  # not mkdtemp's 0700
    cam = SceneCam.load(bundle, threads=1)
    classes = cam.manifest.num_classes
    for i, image in enumerate(wave_images(8, size=size, channels=channels, seed=3)):
        for space in ("logit", "probability"):
            target = i % classes
            expected, _ = km.tape_gradcam(model, conv_layer, image, target, space)
            got = cam.explain(image, target=target, target_space=space)
            ours = got.cam / got.cam.max() if got.cam.max() > 0 else got.cam
            assert np.abs(ours - expected).max() <= MAP_TOLERANCE, f"{builder} image {i} {space}"


def test_explicit_conv_layer(tmp_path: Path):
    import keras

    model = km.flatten_dense_model()
    dropout = next(layer.name for layer in model.layers if isinstance(layer, keras.layers.Dropout))
    bundle = export_keras(model, tmp_path / "b", conv_layer=dropout)
    cam = SceneCam.load(bundle, threads=1)
    assert cam.manifest.conv_layer == dropout
    assert [layer["type"] for layer in cam.manifest.head_layers] == ["flatten", "dense"]
    image = wave_images(1, seed=4)[0]
    expected, _ = km.tape_gradcam(model, "block_16_out", image, 2, "logit")
    got = cam.explain(image, target=2).cam
    assert np.abs(got / got.max() - expected).max() <= MAP_TOLERANCE


@pytest.mark.parametrize("space", ["logit", "probability"])
def test_earlier_layer_gets_a_vjp_graph(tmp_path: Path, space: str):
    """Convolutions and a residual add after the layer: the bundle carries head.onnx, and its
    16x16 maps equal GradientTape's, as the 8x8 ones at the last layer do."""
    model = km.flatten_dense_model()
    bundle = export_keras(model, tmp_path / "b", conv_layer="block_8_out")
    assert (bundle / "head.onnx").is_file()
    cam = SceneCam.load(bundle, threads=1)
    assert cam.manifest.head_layers == ({"type": "graph", "file": "head.onnx"},)
    reference = km.TapeGradCam(model, "block_8_out")
    for i, image in enumerate(wave_images(4, seed=5)):
        expected, _ = reference(image.astype(np.float32), i % 3, space)
        got = cam.explain(image, target=i % 3, target_space=space).cam
        assert got.shape == (32, 32)
        ours = got / got.max() if got.max() > 0 else got
        assert np.abs(ours - expected).max() <= MAP_TOLERANCE, i
    # head.onnx is checked like every bundle file: listed, checksummed
    from scenecam_edge.errors import BundleError

    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["files"]["head.onnx"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"lacks a checksum for head\.onnx"):
        SceneCam.load(bundle)


def test_export_errors_name_the_layer_and_the_fix(tmp_path: Path):
    import keras

    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="wide")(inp)
    x = keras.layers.Conv2D(4, 4, name="to_one_by_one")(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inp, keras.layers.Dense(2)(x))
    with pytest.raises(ExportError, match=r"'to_one_by_one' outputs 1x1.*--conv-layer wide"):
        export_keras(model, tmp_path / "a", conv_layer="to_one_by_one")
    bundle = export_keras(model, tmp_path / "b")  # the default moves up to 'wide' (4x4)
    assert SceneCam.load(bundle).manifest.conv_layer == "wide"
    with pytest.raises(ExportError, match="no layer named 'nope'"):
        export_keras(model, tmp_path / "c", conv_layer="nope")
    with pytest.raises(ExportError, match="needs 3 input channels"):
        export_keras(km.mnist_style_model(), tmp_path / "d", preprocess="caffe")
    assert not any((tmp_path / n).exists() for n in "acd")


def test_export_refuses_to_overwrite(gap_model, gap_bundle: Path):
    with pytest.raises(ExportError, match="not empty"):
        export_keras(gap_model, gap_bundle)


def test_export_cli(gap_model, tmp_path: Path):
    from click.testing import CliRunner

    from scenecam_edge.cli import cli

    path = tmp_path / "m.keras"
    gap_model.save(path)
    out = tmp_path / "bundle"
    result = CliRunner().invoke(
        cli, ["export", str(path), "--out", str(out), "--classes", "a,b,c,d,e"]
    )
    assert result.exit_code == 0, result.output
    assert SceneCam.load(out).class_names == tuple("abcde")
    result = CliRunner().invoke(
        cli, ["export", str(path), "--out", str(tmp_path / "x"), "--classes", "a,b"]
    )
    assert result.exit_code == 3
    assert "5 outputs but 2 class names" in result.output
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip")
    result = CliRunner().invoke(cli, ["export", str(broken), "--out", str(tmp_path / "y")])
    assert result.exit_code == 3 and "cannot load the model" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(
        cli, ["export", str(path), "--out", str(tmp_path / "z"), "--preprocess", "0..2"]
    )
    assert result.exit_code == 2 and "--preprocess" in result.output


def test_training_architectures_export_with_their_gradcam_layer(tmp_path: Path):
    from scenecam_edge.training.architectures import ARCHITECTURES, build

    # notebook-resnet needs 192 px or more: test_training checks it at that size.
    for arch in sorted(set(ARCHITECTURES) - {"notebook-resnet"}):
        # 128 px: at 32 or 64 the deeper nets' last stage is 1x1 and the default moves up
        model, conv_layer = build(arch, (128, 128), 3, 4)
        bundle = export_keras(model, tmp_path / arch)  # the default walk finds the same layer
        cam = SceneCam.load(bundle, threads=1)
        assert cam.manifest.conv_layer == conv_layer, arch
        image = wave_images(1, size=128, seed=9)[0]
        expected, _ = km.tape_gradcam(model, conv_layer, image, 1, "probability")
        got = cam.explain(image, target=1, target_space="probability").cam
        ours = got / got.max() if got.max() > 0 else got
        assert np.abs(ours - expected).max() <= MAP_TOLERANCE, arch


def test_scaling_outside_the_model_is_baked_in(tmp_path: Path, caplog):
    """A model trained on x / 255 with no scaling layer: without --preprocess the export
    warns; with it, the bundle takes raw pixels and agrees with Keras on scaled ones."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 4))
    x = keras.layers.Conv2D(6, 3, activation="relu", name="conv")(inp)
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))
    with caplog.at_level("WARNING"):
        export_keras(model, tmp_path / "raw")
    assert "no scaling layer" in caplog.text
    caplog.clear()
    mean, std = "mean=10,20,30,40;std=255,200,100,50", (255, 200, 100, 50)
    with caplog.at_level("WARNING"):
        bundle = export_keras(model, tmp_path / "scaled", preprocess=mean)
    assert "no scaling layer" not in caplog.text
    cam = SceneCam.load(bundle, threads=1)
    assert cam.manifest.raw["preprocess"]["std"] == list(std)
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 4), dtype=np.uint8)
    scaled = (images - np.array([10, 20, 30, 40])) / np.array(std)
    _, logits = cam.forward(images)
    assert np.abs(logits - np.asarray(model(scaled.astype(np.float32)))).max() <= 1e-4
