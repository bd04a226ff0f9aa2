"""Bad bundles are refused before anything runs, with a message that says what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scenecam_edge import BundleError, SceneCam
from scenecam_edge.bundle import sha256_file


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def _write_manifest(bundle: Path, manifest: dict) -> None:
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _rehash(bundle: Path) -> None:
    manifest = _manifest(bundle)
    for name in manifest["files"]:
        manifest["files"][name] = sha256_file(bundle / name)
    _write_manifest(bundle, manifest)


def test_copy_loads(bundle_copy: Path):
    assert SceneCam.load(bundle_copy).class_names


def test_missing_manifest(bundle_copy: Path):
    (bundle_copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        SceneCam.load(bundle_copy)


def test_unknown_name(tmp_path: Path):
    with pytest.raises(BundleError, match="no shipped model of that name"):
        SceneCam.load("no-such-model")


@pytest.mark.parametrize("victim", ["model.onnx", "head.npz"])
def test_missing_file(bundle_copy: Path, victim: str):
    (bundle_copy / victim).unlink()
    with pytest.raises(BundleError, match=f"{victim} is missing"):
        SceneCam.load(bundle_copy)


def test_checksum_mismatch(bundle_copy: Path):
    with (bundle_copy / "model.onnx").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match="does not match its sha256"):
        SceneCam.load(bundle_copy)


def test_invalid_json(bundle_copy: Path):
    (bundle_copy / "manifest.json").write_text("{ not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        SceneCam.load(bundle_copy)


def test_future_schema(bundle_copy: Path):
    manifest = _manifest(bundle_copy)
    manifest["schema_version"] = 99
    _write_manifest(bundle_copy, manifest)
    with pytest.raises(BundleError, match="newer scenecam-edge"):
        SceneCam.load(bundle_copy)


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda m: m.pop("class_names"), "lacks 'class_names'"),
        (lambda m: m.update(class_names=["a", "a"]), "duplicates"),
        (lambda m: m["class_names"].append("extra"), "class_names lists 7"),
        (lambda m: m["input"].update(dtype="float32"), "uint8"),
        (lambda m: m["outputs"]["features"].update(shape=[None, 3, 3]), "rank 4"),
        (lambda m: m["head"]["layers"].append({"type": "lstm"}), "unknown type 'lstm'"),
        (lambda m: m["files"].update({"../escape.bin": "0" * 64}), "plain name inside the bundle"),
        (lambda m: m["files"].pop("head.npz"), "lacks a checksum for head.npz"),
    ],
)
def test_malformed_manifest(bundle_copy: Path, edit, match):
    manifest = _manifest(bundle_copy)
    edit(manifest)
    _write_manifest(bundle_copy, manifest)
    with pytest.raises(BundleError, match=match):
        SceneCam.load(bundle_copy)


def test_head_that_does_not_belong_to_the_graph(bundle_copy: Path):
    with np.load(bundle_copy / "head.npz") as npz:
        arrays = dict(npz)
    kernel_key = next(k for k in arrays if k.endswith(".kernel"))
    arrays[kernel_key] = arrays[kernel_key][:, ::-1].copy()  # classes swapped
    np.savez(bundle_copy / "head.npz", **arrays)
    _rehash(bundle_copy)  # checksums are right: only the self-check can catch it
    with pytest.raises(BundleError, match="does not belong to this graph"):
        SceneCam.load(bundle_copy)


def test_pickled_arrays_are_refused(bundle_copy: Path):
    with np.load(bundle_copy / "head.npz") as npz:
        arrays = dict(npz)
    arrays["evil"] = np.array([{"x": 1}], dtype=object)
    np.savez(bundle_copy / "head.npz", **arrays)
    _rehash(bundle_copy)
    with pytest.raises(BundleError, match="without pickle"):
        SceneCam.load(bundle_copy)


def test_graph_with_wrong_outputs(bundle_copy: Path, tmp_path: Path):
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(bundle_copy / "model.onnx"))
    for out in model.graph.output:
        if out.name == "logits":
            out.name = "scores"
    for node in model.graph.node:
        node.output[:] = ["scores" if o == "logits" else o for o in node.output]
    onnx.save(model, str(bundle_copy / "model.onnx"))
    _rehash(bundle_copy)
    with pytest.raises(BundleError, match="outputs must be exactly 'features' and 'logits'"):
        SceneCam.load(bundle_copy)


@pytest.mark.parametrize(
    "location,match",
    [
        ("../secret.bin", "outside the bundle"),
        ("/etc/passwd", "outside the bundle"),
        ("weights.bin", "does not checksum"),
    ],
)
def test_external_data_must_stay_inside_and_be_checksummed(
    bundle_copy: Path, location: str, match: str
):
    onnx = pytest.importorskip("onnx")
    (bundle_copy.parent / "secret.bin").write_bytes(b"\0" * 4096)
    (bundle_copy / "weights.bin").write_bytes(b"\0" * 4096)
    model = onnx.load(str(bundle_copy / "model.onnx"))
    tensor = next(t for t in model.graph.initializer if t.raw_data)
    size = len(tensor.raw_data)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(size))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    (bundle_copy / "model.onnx").write_bytes(model.SerializeToString())
    _rehash(bundle_copy)
    with pytest.raises(BundleError, match=match):
        SceneCam.load(bundle_copy)


def test_model_file_that_is_not_onnx(bundle_copy: Path):
    (bundle_copy / "model.onnx").write_bytes(b"\x0a\xff\xff\xff\xff\x0f garbage")
    _rehash(bundle_copy)
    with pytest.raises(BundleError, match=r"model\.onnx"):
        SceneCam.load(bundle_copy)
