"""Int8 bundles: a random-weight model quantised with a small generated calibration folder,
checked against its float bundle; the command line; the shipped int8 bundles."""

from __future__ import annotations

import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from scenecam_edge import SceneCam
from scenecam_edge.bundle import read_manifest, verify_files
from scenecam_edge.bundle_files import sha256_file
from scenecam_edge.cli import cli
from scenecam_edge.registry import models_dir, shipped_models
from scenecam_edge.synthetic import wave_image, wave_images

from .conftest import HAS_TF, REPO, model_folder

HAS_ONNX = importlib.util.find_spec("onnx") is not None
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="needs onnx: pip install '.[train]'")
needs_tf_and_onnx = [
    pytest.mark.tf,
    pytest.mark.skipif(not HAS_TF, reason="needs TensorFlow: pip install '.[train]'"),
    needs_onnx,
]
CLASSES = list("abcde")
PER_CLASS = 14


def _write_folder(root: Path, classes: list[str] | None, count: int, seed: int = 0) -> Path:
    """Smooth textured images (so Grad-CAM maps have structure), in class folders or flat."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes or [""]):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            img = wave_image(rng, 40, phase=c)
            Image.fromarray(img).save(folder / f"{name or 'img'}_{i}.png")
    return root


@pytest.fixture(scope="module")
def float_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from scenecam_edge.export import export_keras

    from . import keras_models as km

    model = km.gap_dense_model(num_classes=len(CLASSES))
    return export_keras(model, tmp_path_factory.mktemp("float") / "bundle", class_names=CLASSES)


@pytest.fixture(scope="module")
def labelled_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_folder(tmp_path_factory.mktemp("data") / "scenes", CLASSES, PER_CLASS)


@pytest.fixture(scope="module")
def quantized(float_bundle: Path, labelled_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    from scenecam_edge.export import quantize as q

    reference = SceneCam.load(float_bundle, threads=1)
    data = q.calibration_data(labelled_folder, reference, images=40, seed=1337)
    # A random-weight model has no accuracy worth keeping: the targets are checked below.
    return q.quantize_bundle(
        float_bundle,
        tmp_path_factory.mktemp("int8") / "bundle-int8",
        data,
        threads=1,
        max_accuracy_drop_points=100.0,
        min_cam_correlation=-1.0,
    )


class TestQuantizedBundle:
    pytestmark = needs_tf_and_onnx

    def test_loads_with_the_unchanged_self_check(self, quantized, float_bundle: Path):
        import onnx

        from scenecam_edge import model

        assert model.SELF_CHECK_TOLERANCE == 1e-3
        cam = SceneCam.load(quantized.path, threads=1)  # raises if the self-check fails
        graph = onnx.load(str(quantized.path / "model.onnx")).graph
        ops = {n.op_type for n in graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        assert sum(n.op_type == "DequantizeLinear" for n in graph.node) > 4
        # The head is float: the numpy head on the graph's own features gives its logits to
        # float rounding, far inside the self-check's tolerance.
        images = wave_images(6, seed=3)
        features, logits = cam.forward(images)
        assert features.dtype == np.float32 and logits.dtype == np.float32
        assert features.shape == (6, 16, 16, 16)
        ours = cam.head.logits(features)
        assert np.abs(ours - logits).max() <= 1e-5 * max(1.0, float(np.abs(logits).max()))
        # ... and the features are real activations, close to the float model's.
        ref_features, _ = SceneCam.load(float_bundle, threads=1).forward(images)
        rel = np.abs(features - ref_features).max() / np.abs(ref_features).max()
        assert 0 < rel < 0.1

    def test_predictions_agree_and_maps_correlate(self, quantized, float_bundle: Path):
        from scenecam_edge.export.quantize import pearson

        reference = SceneCam.load(float_bundle, threads=1)
        cam = SceneCam.load(quantized.path, threads=1)
        images = list(wave_images(24, seed=11))
        ref = reference.explain(images)
        ours = cam.explain(images)
        agree = np.mean([a.index == b.index for a, b in zip(ref, ours, strict=True)])
        assert agree >= 0.8
        # The same class explained by both models: the maps correlate.
        correlations = [
            pearson(r.cam, cam.explain(img, target=r.index).cam)
            for r, img in zip(ref, images, strict=True)
        ]
        assert np.mean(correlations) >= 0.9, correlations
        # The command's own comparison, on the validation side of the folder, says the same.
        c = quantized.comparison
        assert c.prediction_agreement >= 0.8
        assert c.cam_correlation_mean >= 0.9
        assert c.float_accuracy is not None and c.int8_accuracy is not None

    def test_manifest_records_the_quantization(self, quantized, float_bundle: Path):
        manifest = json.loads((quantized.path / "manifest.json").read_text())
        original = json.loads((float_bundle / "manifest.json").read_text())
        block = manifest["quantization"]
        assert block["format"] == "QDQ"
        assert (block["activation_type"], block["weight_type"]) == ("uint8", "int8")
        assert block["per_channel"] is True
        assert block["calibration"]["images"] == 40
        assert "training side" in block["calibration"]["taken_from"]
        # stratified_split(.., 0.15, ..) of 14 per class leaves 2 per class for validation
        assert block["comparison"]["images"] == 2 * len(CLASSES)
        assert block["kept_float"], "the head must be listed as kept float"
        assert block["float_bundle"]["model_sha256"] == original["files"]["model.onnx"]
        assert block["size_bytes"]["int8"] > 0  # (a model this tiny does not shrink)
        assert manifest["evaluation"]["accuracy"] == block["comparison"]["int8_accuracy"]
        # Checksums: a new graph, the same head; both verified.
        parsed = read_manifest(quantized.path)
        verify_files(quantized.path, parsed)
        assert parsed.files["model.onnx"] == sha256_file(quantized.path / "model.onnx")
        assert parsed.files["model.onnx"] != original["files"]["model.onnx"]
        assert parsed.files["head.npz"] == original["files"]["head.npz"]
        assert manifest["name"] == "bundle-int8"
        assert manifest["class_names"] == CLASSES
        assert manifest["outputs"] == original["outputs"]

    def test_kept_float_nodes_are_the_head_and_the_features_layout(self, float_bundle: Path):
        import onnx

        from scenecam_edge.export.quantize import float_nodes

        graph = onnx.load(str(float_bundle / "model.onnx"))
        kinds = sorted({n.op_type for n in graph.graph.node if n.name in float_nodes(graph)})
        assert "Conv" not in kinds
        assert {"GlobalAveragePool", "Transpose", "MatMul"} <= set(kinds)

    def test_unlabelled_folder_calibrates_without_accuracy(
        self, float_bundle: Path, tmp_path: Path
    ):
        from scenecam_edge.export import quantize as q

        folder = _write_folder(tmp_path / "flat", None, 12)
        reference = SceneCam.load(float_bundle, threads=1)
        data = q.calibration_data(folder, reference, images=8)
        assert data.labels is None
        assert len(data.calibration) == 8 and len(data.evaluation) == 4

    def test_cli_writes_refuses_and_names_what_missed(
        self, float_bundle: Path, labelled_folder: Path, tmp_path: Path
    ):
        out = tmp_path / "q8"
        args = [
            "quantize",
            str(float_bundle),
            "--calibration",
            str(labelled_folder),
            "--out",
            str(out),
            "--calibration-images",
            "30",
            "--min-calibration",
            "30",
            "--no-cache",
            "--threads",
            "1",
            "--max-accuracy-drop",
            "100",
        ]
        # A target it cannot meet: nothing is written, exit 1, the figure is named.
        result = CliRunner().invoke(cli, [*args, "--min-cam-correlation", "1.5"])
        assert result.exit_code == 1, result.output
        assert "Grad-CAM correlation" in result.output and not out.exists()
        assert not list(tmp_path.glob(".q8.*")), "the staging folder must be cleaned up"
        result = CliRunner().invoke(cli, [*args, "--min-cam-correlation", "-1"])
        assert result.exit_code == 0, result.output
        assert "accuracy on 10 validation images" in result.output
        assert "Grad-CAM correlation int8 vs float: mean" in result.output
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["quantization"]["command"].startswith("scenecam-edge ")
        SceneCam.load(out, threads=1)
        # An existing bundle is not replaced without --force.
        result = CliRunner().invoke(cli, [*args, "--min-cam-correlation", "-1"])
        assert result.exit_code == 2 and "--force" in result.output
        # A quantised bundle is not quantised again.
        again = [*args[:1], str(out), *args[2:5], str(tmp_path / "q8q8"), *args[6:]]
        result = CliRunner().invoke(cli, [*again, "--min-cam-correlation", "-1"])
        assert result.exit_code == 2 and "already quantised" in result.output


@needs_onnx
def test_cli_without_options_quantizes_as_the_api_does(tmp_path: Path, monkeypatch):
    """``scenecam-edge quantize`` with no thresholds and no image count passes what
    ``calibration_data`` and ``quantize_bundle`` use when called without them."""
    import inspect

    from scenecam_edge.export import quantize as q

    seen: dict[str, object] = {}
    real_calibration, real_quantize = q.calibration_data, q.quantize_bundle

    def calibration(source, reference, images, **kwargs):
        seen["images"] = images
        return real_calibration(source, reference, 8, **kwargs)

    def quantize(*args, **kwargs):
        seen.update(kwargs)
        raise q.QuantizeError("stopped by the test")

    monkeypatch.setattr(q, "calibration_data", calibration)
    monkeypatch.setattr(q, "quantize_bundle", quantize)
    folder = _write_folder(tmp_path / "data", None, 4)
    result = CliRunner().invoke(
        cli,
        ["quantize", "--model", "scenes-mini", "--calibration", str(folder),
         "--out", str(tmp_path / "q8"), "--no-cache", "--threads", "1",
         "--min-calibration", "1"],  # the CLI's floor, not an API default: 8 images here
    )  # fmt: skip
    assert result.exit_code == 2 and "stopped by the test" in result.output, result.output

    def default(function, name):
        return inspect.signature(function).parameters[name].default

    assert seen["images"] == default(real_calibration, "images")
    for name in ("max_accuracy_drop_points", "min_cam_correlation"):
        assert seen[name] == default(real_quantize, name), name


@needs_onnx
def test_cli_model_option_takes_a_shipped_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``--model NAME`` as on every other command: the registry finds the shipped bundle.
    Fewer than 100 calibration images are refused unless --min-calibration; the cache holds
    only the images used and is named with its size; a broken image is one line."""
    float_model = SceneCam.load("scenes-mini", threads=1)
    folder = _write_folder(tmp_path / "data", list(float_model.class_names), 4)
    (folder / float_model.class_names[0] / "broken.png").write_bytes(b"\x89PNG not really")
    cache = tmp_path / "cache"
    monkeypatch.setenv("SCENECAM_CACHE", str(cache))  # never the user's ~/.cache
    out = tmp_path / "mini-q8"
    args = ["quantize", "--model", "scenes-mini", "--calibration", str(folder), "--out", str(out),
            "--calibration-images", "16", "--threads", "1",
            "--max-accuracy-drop", "100", "--min-cam-correlation", "-1"]  # fmt: skip
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code == 2 and not out.exists()
    assert "16 calibration image(s), fewer than 100" in refused.stderr
    assert "--min-calibration 16" in refused.stderr
    assert refused.stderr.count("broken.png: ") == 1  # one line, naming it
    (cached,) = cache.iterdir()  # the 16 calibration and the validation images, no more
    with np.load(cached) as npz:
        # 23 readable photos: 17 on the training side (16 taken), 6 on the validation side
        assert len(npz["calibration"]) == 16 and len(npz["evaluation"]) == 6
    size = f"({cached.stat().st_size / 1e6:.1f} MB)"
    assert f"note: cached the 22 decoded images it uses in {cached} {size}" in refused.stderr
    result = CliRunner().invoke(cli, [*args, "--min-calibration", "16"])
    assert result.exit_code == 1, result.output  # written, and the broken image counted
    assert f"read the 22 decoded images it uses from the cache {cached}" in result.stderr
    assert "broken.png: " in result.stderr
    int8 = SceneCam.load(out, threads=1)
    block = int8.manifest.raw["quantization"]
    assert block["float_bundle"] == {
        "name": "scenes-mini",
        "model_sha256": float_model.manifest.files["model.onnx"],
    }
    assert block["calibration"]["images"] == 16
    assert int8.class_names == float_model.class_names


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ([], "give the float model to quantise: --model NAME|DIR (or BUNDLE)"),
        (["scenes-mini", "--model", "scenes-resnet18"], "two models given"),
    ],
)
def test_cli_names_the_model_once(tmp_path: Path, models: list[str], message: str):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["quantize", *models, "--calibration", str(tmp_path), "--out", str(out)]
    )
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_quantize_without_onnx_names_the_extra(tmp_path: Path):
    blocker = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('onnx', 'tensorflow', 'keras', 'tf2onnx'):
            raise ImportError('blocked: ' + name, name=name)
        return None
sys.meta_path.insert(0, Block())
from scenecam_edge.cli import cli
cli(['quantize', 'scenes-mini', '--calibration', '.', '--out', sys.argv[1]])
"""
    proc = subprocess.run(
        [sys.executable, "-c", blocker, str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 3, proc.stderr
    assert "needs onnx" in proc.stderr and "pip install 'scenecam-edge[quantize]'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_pearson():
    from_module = pytest.importorskip("scenecam_edge.export.quantize", reason="needs onnx")
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert from_module.pearson(a, 2 * a + 1) == pytest.approx(1.0)
    assert from_module.pearson(a, -a) == pytest.approx(-1.0)
    assert from_module.pearson(np.zeros((3, 4)), np.zeros((3, 4))) == 1.0
    assert from_module.pearson(np.zeros((3, 4)), a) == 0.0


SHIPPED_INT8 = [
    name
    for name in shipped_models()
    if "quantization" in json.loads((models_dir() / name / "manifest.json").read_text())
]


@pytest.mark.skipif(not SHIPPED_INT8, reason="no int8 bundle is shipped in models/")
@pytest.mark.parametrize("name", SHIPPED_INT8)
def test_shipped_int8_bundle(name: str):
    cam = SceneCam.load(name, threads=1)  # by name: manifest, checksums, self-check
    block = cam.manifest.raw["quantization"]
    float_name = block["float_bundle"]["name"]
    reference = SceneCam.load(model_folder(float_name), threads=1)
    assert block["float_bundle"]["model_sha256"] == reference.manifest.files["model.onnx"]
    assert cam.manifest.files["head.npz"] == reference.manifest.files["head.npz"]
    assert cam.class_names == reference.class_names
    # Accuracy within 1 point of the float model's recorded figure, on the same split.
    int8_acc = cam.manifest.evaluation["accuracy"]
    float_acc = reference.manifest.evaluation["accuracy"]
    assert cam.manifest.evaluation["count"] == reference.manifest.evaluation["count"]
    assert abs(int8_acc - float_acc) <= 0.01
    assert block["comparison"]["cam_correlation_mean"] >= 0.9
    assert block["calibration"]["images"] >= 100
    # Features are float32 and close to the float model's on a real photo.
    photo = sorted((REPO / "samples" / "scenes").glob("*.jpg"))[0]
    batch = cam.to_input(cam.load_image(photo))[None]
    features, _ = cam.forward(batch)
    ref_features, _ = reference.forward(batch)
    assert features.dtype == np.float32
    assert np.corrcoef(features.ravel(), ref_features.ravel())[0, 1] > 0.95
    # And the same path works by folder.
    assert SceneCam.load(models_dir() / name, threads=1).manifest.name == name


def test_the_default_offers_its_stage3_maps():
    """The int8 default explains stage 3 too (10x10), through a VJP graph with int8 weights
    (straight-through gradient); its maps follow the float model's, as quantize measured."""
    cam = SceneCam.load(threads=1)
    default, extra = cam.layers
    assert (default.name, default.shape[:2]) == ("stage4_block2_out", (5, 5))
    assert (extra.name, extra.shape[:2], extra.gradient) == (
        "stage3_block2_out",
        (10, 10),
        "vjp_graph",
    )
    assert extra.straight_through
    assert (models_dir() / cam.manifest.name / "head_1.onnx").stat().st_size < 10_000_000
    figures = cam.manifest.raw["quantization"]["comparison"]["layers"]["stage3_block2_out"]
    assert figures["cam_correlation_mean"] >= 0.99
    reference = SceneCam.load(model_folder("scenes-resnet18"), threads=1)
    photos = sorted((REPO / "samples" / "scenes").glob("*.jpg"))[:4]
    from scenecam_edge.export.compare import pearson

    for photo in photos:
        target = reference.classify(photo).index
        ours = cam.explain(photo, target=target, layer=extra.name).cam
        theirs = reference.explain(photo, target=target, layer=extra.name).cam
        assert ours.shape == theirs.shape == (10, 10)
        assert pearson(ours, theirs) >= 0.9, photo.name
