"""Bundles that explain more than one layer (``export --extra-layer``, ``--layer`` at serve
time): the extra layer's maps equal GradientTape's on the same Keras model, the default
layer's outputs do not change, a bad extra layer is one BundleError, and the weights of a
bundle's graph can be recovered into Keras (``scenecam_edge.export.recover``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from scenecam_edge.synthetic import wave_images

from .conftest import HAS_TF, REPO

pytestmark = [
    pytest.mark.tf,
    pytest.mark.skipif(not HAS_TF, reason="needs TensorFlow: pip install '.[train]'"),
]

if HAS_TF:
    from scenecam_edge import SceneCam
    from scenecam_edge.cli import cli
    from scenecam_edge.errors import BundleError
    from scenecam_edge.export import ExportError, export_keras
    from scenecam_edge.options import UnknownLayerError

    from . import keras_models as km

MAP_TOLERANCE = 1e-4
EXTRA = "block_8_out"  # 32x32x8, a residual block and the head after it
DEFAULT = "block_16_out"  # 16x16x16


@pytest.fixture(scope="module")
def model():
    return km.flatten_dense_model()


@pytest.fixture(scope="module")
def bundles(model, tmp_path_factory) -> tuple[Path, Path]:
    """The same model exported with and without the extra layer."""
    root = tmp_path_factory.mktemp("layers")
    plain = export_keras(model, root / "plain")
    both = export_keras(model, root / "both", extra_layers=[EXTRA])
    return plain, both


def _normalised(cam: np.ndarray) -> np.ndarray:
    return cam / cam.max() if cam.max() > 0 else cam


def test_manifest_lists_the_extra_layer(bundles):
    _, both = bundles
    manifest = json.loads((both / "manifest.json").read_text())
    assert manifest["conv_layer"] == DEFAULT
    (extra,) = manifest["extra_layers"]
    assert extra["name"] == EXTRA and extra["output"] == "features_1"
    assert extra["shape"] == [None, 32, 32, 8]
    assert extra["gradient"] == "vjp_graph"
    assert extra["head"]["layers"] == [{"type": "graph", "file": "head_1.onnx"}]
    assert {"head_1.npz", "head_1.onnx"} <= set(manifest["files"])
    cam = SceneCam.load(both, threads=1)
    assert [(x.name, x.shape) for x in cam.layers] == [
        (DEFAULT, (16, 16, 16)),
        (EXTRA, (32, 32, 8)),
    ]


def test_the_default_layer_is_unchanged(bundles):
    """An extra output changes nothing of the default one: features and logits identical."""
    plain, both = (SceneCam.load(b, threads=1) for b in bundles)
    images = wave_images(6, seed=8)
    for a, b in zip(plain.forward(images), both.forward(images), strict=True):
        assert np.array_equal(a, b)
    for image in images[:2]:
        assert np.array_equal(plain.explain(image).cam, both.explain(image).cam)
        assert np.array_equal(plain.explain(image).cam, both.explain(image, layer=DEFAULT).cam)


@pytest.mark.parametrize("space", ["logit", "probability"])
def test_extra_layer_maps_match_gradienttape(model, bundles, space: str):
    cam = SceneCam.load(bundles[1], threads=1)
    reference = {name: km.TapeGradCam(model, name) for name in (EXTRA, DEFAULT)}
    nontrivial = 0
    for i, image in enumerate(wave_images(6, seed=9)):
        target = cam.classify(image).index if i % 2 else (i % 3)  # predicted, or another
        for name, size in ((EXTRA, 32), (DEFAULT, 16)):
            got = cam.explain(image, target=target, target_space=space, layer=name)
            expected, _ = reference[name](image.astype(np.float32), target, space)
            assert got.cam.shape == (size, size)
            assert np.abs(_normalised(got.cam) - expected).max() <= MAP_TOLERANCE, (name, i)
            nontrivial += int(expected.max() > 0 and (expected > 0).mean() < 1)
    assert nontrivial >= 6


def test_every_method_runs_at_the_extra_layer(bundles):
    from scenecam_edge import METHODS

    cam = SceneCam.load(bundles[1], threads=1)
    image = wave_images(1, seed=10)[0]
    for method in METHODS:
        got = cam.explain(image, method=method, layer=EXTRA, max_channels=4)
        assert got.cam.shape == (32, 32) and np.isfinite(got.cam).all(), method


def test_unknown_layer_names_the_ones_there_are(bundles, tmp_path: Path):
    cam = SceneCam.load(bundles[1], threads=1)
    with pytest.raises(
        UnknownLayerError, match=rf"'nope'.*{DEFAULT} \(16x16, default\), {EXTRA} \(32x32\)"
    ):
        cam.explain(wave_images(1)[0], layer="nope")
    image = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(wave_images(1)[0]).save(image)
    maps = ["--heatmaps", str(tmp_path / "maps")]  # --layer and --target make maps only
    for args in (
        ["classify", str(image), "--target", "0", *maps],
        ["batch", str(image), "--out", str(tmp_path / "r.jsonl"), "--target", "0", *maps],
        ["evaluate", str(tmp_path), "--report", str(tmp_path / "report")],
    ):
        result = CliRunner().invoke(cli, [*args, "--model", str(bundles[1]), "--layer", "nope"])
        assert result.exit_code == 2, result.output
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("error: --layer: this model does not explain layer 'nope'")
    ok = CliRunner().invoke(
        cli, ["classify", str(image), "--model", str(bundles[1]), "--layer", EXTRA, "--json",
              "--target", "1", "--heatmaps", str(tmp_path / "maps")],
    )  # fmt: skip
    assert ok.exit_code == 0, ok.output
    info = CliRunner().invoke(cli, ["info", str(bundles[1]), "--json"])
    layers = json.loads(info.output)["layers"]
    assert [(x["name"], x["map"], x["gradient"]) for x in layers] == [
        (DEFAULT, [16, 16], "closed_form"),
        (EXTRA, [32, 32], "vjp_graph"),
    ]


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda m: m["extra_layers"][0].update(name="block_16_out"), "repeats the layer name"),
        (lambda m: m["extra_layers"][0].update(output="logits"), "repeats the graph output"),
        (lambda m: m["extra_layers"][0].update(output="features_9"), "graph outputs must be"),
        (
            lambda m: m["extra_layers"][0].update(shape=[None, 16, 16, 16]),
            r"the manifest says \[.N., 16, 16, 16\]",
        ),
        (lambda m: m["extra_layers"][0]["head"].update(layers=[]), r"extra_layers\[0\]\.head"),
        (lambda m: m["extra_layers"][0].update(gradient="magic"), "gradient must be one of"),
        (lambda m: m["files"].pop("head_1.onnx"), r"lacks a checksum for head_1\.onnx"),
        (lambda m: m.update(extra_layers={"a": 1}), "'extra_layers' must be a list"),
        (
            lambda m: m["extra_layers"][0].update(head=m["head"]),
            "head of layer 'block_8_out'|do not fit",
        ),
    ],
)
def test_a_bad_extra_layer_is_one_bundle_error(bundles, tmp_path: Path, edit, match):
    copy = tmp_path / "b"
    shutil.copytree(bundles[1], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=match):
        _load_and_ask_for(copy, EXTRA)
    result = CliRunner().invoke(cli, ["info", str(copy)])
    if "extra_layers" in match or "repeats" in match or "gradient must" in match:
        assert result.exit_code == 3  # manifest-level problems: info refuses too


def _load_and_ask_for(bundle: Path, layer: str) -> None:
    """Load, then name the layer: an extra layer's head is built and checked on first use."""
    SceneCam.load(bundle, threads=1).explain_options(layer=layer)


def test_a_swapped_vjp_graph_is_refused(bundles, tmp_path: Path):
    """head_1.onnx from another model, checksum updated: the self-check refuses it when the
    layer is first asked for (the default layer still serves)."""
    other = export_keras(km.flatten_dense_model(seed=3), tmp_path / "other", extra_layers=[EXTRA])
    copy = tmp_path / "b"
    shutil.copytree(bundles[1], copy)
    shutil.copyfile(other / "head_1.onnx", copy / "head_1.onnx")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["head_1.onnx"] = json.loads((other / "manifest.json").read_text())["files"][
        "head_1.onnx"
    ]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="head of layer 'block_8_out' gradient does not belong"):
        _load_and_ask_for(copy, EXTRA)
    photos = str(REPO / "samples/scenes")
    assert CliRunner().invoke(cli, ["classify", photos, "--model", str(copy)]).exit_code == 0
    result = CliRunner().invoke(
        cli,
        ["classify", photos, "--model", str(copy), "--layer", EXTRA, "--target", "0",
         "--heatmaps", str(tmp_path / "maps")],
    )  # fmt: skip
    assert result.exit_code == 3
    assert len(result.stderr.strip().splitlines()) == 1


def test_export_refuses_a_repeated_layer(model, tmp_path: Path):
    with pytest.raises(ExportError, match="already explained"):
        export_keras(model, tmp_path / "a", extra_layers=[DEFAULT])
    with pytest.raises(ExportError, match="no layer named 'nope'"):
        export_keras(model, tmp_path / "b", extra_layers=["nope"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_weights_recovered_from_the_graph(tmp_path: Path):
    """A bundle's model.onnx (batch norms folded into the convolutions) back into the Keras
    architecture: the recovered model's logits equal the graph's."""
    from scenecam_edge.export.recover import (
        check_against_graph,
        load_onnx_weights,
        onnx_initializers,
    )
    from scenecam_edge.training.architectures import build

    original, _ = build("small", (32, 32), 3, 4)
    km.with_random_bn(original, seed=4)
    head = original.get_layer("predictions")
    head.bias.assign(np.random.default_rng(5).normal(size=4).astype(np.float32))
    bundle = export_keras(original, tmp_path / "b")
    fresh, _ = build("small", (32, 32), 3, 4)
    filled = load_onnx_weights(fresh, onnx_initializers(bundle / "model.onnx"))
    assert "stem_conv" in filled and "predictions" in filled
    images = wave_images(8, seed=11)
    assert check_against_graph(fresh, bundle / "model.onnx", images) <= 1e-4
    broken, _ = build("small", (32, 32), 3, 5)  # one class more: the Dense does not fit
    with pytest.raises(ExportError, match="'predictions': 0 initializers of shape"):
        load_onnx_weights(broken, onnx_initializers(bundle / "model.onnx"))


def test_recover_keeps_the_original_graph_in_one_step(bundles, tmp_path: Path, monkeypatch):
    """recover's graft rewrites model.onnx and the manifest: staged and renamed together.
    A failure at the manifest (a crash, a full disk) leaves the bundle as exported, loading;
    done, the bundle loads with the original graph's outputs and every head checked."""
    import scenecam_edge.bundle as bundle_module
    import scenecam_edge.fileio as fileio
    from scenecam_edge.export.recover import _keep_original_graph

    plain, both = bundles
    out = tmp_path / "out"
    shutil.copytree(both, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def failing(original):
        def write(path, *args, **kwargs):
            if Path(path).name == "manifest.json":
                raise OSError(28, "No space left on device", str(path))
            return original(path, *args, **kwargs)

        return write

    with monkeypatch.context() as patch:
        patch.setattr(fileio, "write_bytes_atomic", failing(fileio.write_bytes_atomic))
        patch.setattr(fileio, "write_json_atomic", failing(fileio.write_json_atomic))
        patch.setattr(bundle_module, "write_json_atomic", failing(bundle_module.write_json_atomic))
        with pytest.raises(OSError, match="No space left"):
            _keep_original_graph(plain, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left
    SceneCam.load(out, threads=1)
    _keep_original_graph(plain, out)
    cam = SceneCam.load(out, threads=1)
    assert cam.heads[EXTRA] is not None
    assert "grafted" in json.loads((out / "manifest.json").read_text())["producer"]["graph"]


@pytest.mark.slow
def test_shipped_stage3_maps_match_gradienttape():
    """scenes-resnet18's stage-3 maps (10x10, VJP graph) and 5x5 maps against GradientTape
    on the Keras model recovered from its own graph, on the sample photos."""
    from scenecam_edge.export.recover import (
        check_against_graph,
        load_onnx_weights,
        onnx_initializers,
    )
    from scenecam_edge.training.architectures import build

    bundle = REPO / "models" / "scenes-resnet18"
    cam = SceneCam.load(bundle, threads=2)
    model, _ = build("resnet18", cam.input_size, 3, cam.manifest.num_classes)
    load_onnx_weights(model, onnx_initializers(bundle / "model.onnx"))
    photos = sorted((REPO / "samples" / "scenes").glob("*.jpg"))[:6]
    images = np.stack([cam.to_input(cam.load_image(p)) for p in photos])
    assert check_against_graph(model, bundle / "model.onnx", images) <= 1e-4
    for name, size in (("stage3_block2_out", 10), ("stage4_block2_out", 5)):
        reference = km.TapeGradCam(model, name)
        for i, image in enumerate(images):
            predicted = cam.classify(image).index
            for target in (predicted, (predicted + 1 + i) % 6):
                for space in ("logit", "probability"):
                    got = cam.explain(image, target=target, target_space=space, layer=name)
                    expected, _ = reference(image.astype(np.float32), target, space)
                    assert got.cam.shape == (size, size)
                    err = np.abs(_normalised(got.cam) - expected).max()
                    assert err <= MAP_TOLERANCE, (name, photos[i].name, target, space, err)


def test_quantize_carries_the_extra_layer(model, bundles, tmp_path: Path):
    """quantize: the extra layer's VJP graph gets int8 weights, the layer is marked
    straight-through, the int8 bundle loads (its self-check) and its maps follow the float
    bundle's, as the comparison in its manifest says."""
    import onnx

    from scenecam_edge.export import quantize as q

    from .test_quantize import _write_folder

    folder = _write_folder(tmp_path / "data", ["a", "b", "c"], 8)
    reference = SceneCam.load(bundles[1], threads=1)
    data = q.calibration_data(folder, reference, images=12, seed=1)
    result = q.quantize_bundle(
        bundles[1], tmp_path / "int8", data, threads=1,
        max_accuracy_drop_points=100.0, min_cam_correlation=-1.0,
    )  # fmt: skip
    (entry,) = result.manifest["extra_layers"]
    assert entry["straight_through"] is True
    graph = onnx.load(str(result.path / "head_1.onnx"))
    assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.graph.initializer)
    cam = SceneCam.load(result.path, threads=1)
    assert cam.layers[1].straight_through
    corr = result.comparison.layers[EXTRA]["cam_correlation_mean"]
    assert 0.5 <= corr <= 1.0
    image = wave_images(1, seed=12)[0]
    assert cam.explain(image, layer=EXTRA).cam.shape == (32, 32)


def test_export_and_batch_command_lines(model, bundles, tmp_path: Path):
    path = tmp_path / "m.keras"
    model.save(path)
    out = tmp_path / "b"
    args = ["export", str(path), "--out", str(out), "--extra-layer", EXTRA]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert [x["name"] for x in manifest["extra_layers"]] == [EXTRA]
    bad = CliRunner().invoke(cli, [*args[:3], str(tmp_path / "c"), "--extra-layer", "nope"])
    assert bad.exit_code == 3
    (line,) = bad.stderr.strip().splitlines()
    assert "no layer named 'nope'" in line
    # batch records the layer in its results file's description, so a rerun cannot mix layers
    from PIL import Image

    image = tmp_path / "x.png"
    Image.fromarray(wave_images(1)[0]).save(image)
    results = tmp_path / "r.jsonl"
    run = ["batch", str(image), "--out", str(results), "--model", str(bundles[1]), "--target", "1"]
    run += ["--heatmaps", str(tmp_path / "maps")]
    assert CliRunner().invoke(cli, [*run, "--layer", EXTRA]).exit_code == 0
    header = json.loads((tmp_path / "r.jsonl.meta.json").read_text())
    assert header["options"]["explain"]["layer"] == EXTRA
    again = CliRunner().invoke(cli, run)  # the default layer: refused, naming the difference
    assert again.exit_code == 2 and "layer" in again.stderr
