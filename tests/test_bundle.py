"""Bad bundles are refused before anything runs, with a message that says what is wrong."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from click.testing import CliRunner

from scenecam_edge import BundleError, SceneCam
from scenecam_edge.bundle_files import sha256_file
from scenecam_edge.cli import cli


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
    kernel_key = next(k for k in arrays if k.endswith(".kernel"))
    arrays[kernel_key] = np.array([{"x": 1}], dtype=object)  # an array the head uses
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
    with pytest.raises(BundleError, match=r"outputs must be exactly 'features'.* and 'logits'"):
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


# -- hostile bundles: each refused as one BundleError naming the file and the reason, within
# limits, before anything of the declared size is allocated (issue 16) ------------------------


@pytest.fixture
def tiny_bundle(tmp_path: Path) -> Path:
    """A writable copy of the smallest shipped scene bundle (2.5 MB), to tamper with."""
    from scenecam_edge.registry import resolve_model

    dest = tmp_path / "tiny"
    shutil.copytree(resolve_model("scenes-mini"), dest)
    return dest


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    return varint(number << 3 | 2) + varint(len(payload)) + payload


def _npy(header_shape: tuple[int, ...], data: bytes, descr: str = "<f4") -> bytes:
    """A .npy file whose header declares ``header_shape`` whatever ``data`` holds."""
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {header_shape!r}, }}"
    text += " " * (63 - (10 + len(text)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode() + data


def _replace_in_npz(path: Path, name: str, payload: bytes) -> None:
    with zipfile.ZipFile(path) as old:
        entries = {i.filename: old.read(i) for i in old.infolist()}
    entries[f"{name}.npy"] = payload
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as new:
        for entry, data in entries.items():
            new.writestr(entry, data)


def _nested_graph_model(depth: int) -> bytes:
    """A ModelProto whose graph holds a node whose attribute holds a graph ... ``depth`` deep."""
    graph = b""
    for _ in range(depth):
        graph = _field(1, _field(5, _field(6, graph)))  # graph.node.attribute.g
    return _field(7, graph)


def _edit(edit):
    def apply(bundle: Path) -> None:
        manifest = _manifest(bundle)
        edit(manifest)
        _write_manifest(bundle, manifest)

    return apply


def _pool(size: object) -> object:
    def edit(m: dict) -> None:
        m["head"]["layers"][0] = {"type": "average_pooling", "pool_size": size, "strides": 1}

    return _edit(edit)


def _deep_json(bundle: Path) -> None:
    (bundle / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)


def _huge_npy_header(bundle: Path) -> None:
    _replace_in_npz(bundle / "head.npz", "2.kernel", _npy((2**55,), b"\0" * 64))
    _rehash(bundle)


def _nested_onnx(bundle: Path) -> None:
    (bundle / "model.onnx").write_bytes(_nested_graph_model(3000))
    _rehash(bundle)


def _manifest_to_passwd(bundle: Path) -> None:
    (bundle / "manifest.json").unlink()
    (bundle / "manifest.json").symlink_to("/etc/passwd")


def _head_link_outside(bundle: Path) -> None:
    outside = bundle.parent / "head-outside.npz"
    (bundle / "head.npz").rename(outside)
    (bundle / "head.npz").symlink_to(outside)


HOSTILE = {
    "height 151 for a 150 graph": (
        _edit(lambda m: m["input"].update(height=151)),
        r"graph input 'image' has shape .*150, 150, 3\], the manifest says \['N', 151, 150, 3\]",
    ),
    "width 1e30": (_edit(lambda m: m["input"].update(width=1e30)), "'width' must be int"),
    "width 10**30": (_edit(lambda m: m["input"].update(width=10**30)), "between 1 and 4096"),
    "100,000-deep JSON": (_deep_json, "manifest.json nests 100000 levels deep"),
    "pool size 0": (_pool(0), r"pool_size 0 must be between 1 and the features' size"),
    "pool size negative": (_pool([-2, 3]), r"pool_size \[-2, 3\] must be between 1"),
    "pool size over the features": (_pool(11), "pool_size 11 must be between 1"),
    "npz header of 2^55 elements": (
        _huge_npy_header,
        r"head.npz: array '2.kernel' declares shape \(36028797018963968,\) "
        r"\(144115188075855872 bytes\), over the limit",
    ),
    "3,000-deep nested ONNX graph": (_nested_onnx, "model.onnx .*nest more than 64 levels"),
    "manifest.json a link to /etc/passwd": (
        _manifest_to_passwd,
        "manifest.json is a link that leads outside the bundle folder",
    ),
    "head.npz a link out of the bundle": (
        _head_link_outside,
        "head.npz is a link that leads outside the bundle folder",
    ),
    "100,001 classes": (
        _edit(lambda m: m.update(class_names=[f"{i}" for i in range(100_001)])),
        "more than 100000 classes",
    ),
    "a 2 MB manifest": (
        _edit(lambda m: m.update(description="x" * (2 << 20))),
        r"manifest.json is \d+ bytes, over the limit of 1048576",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_bundle_is_one_bundle_error(tiny_bundle: Path, case: str, sample_images):
    tamper, match = HOSTILE[case]
    tamper(tiny_bundle)
    with pytest.raises(BundleError, match=match) as info:
        SceneCam.load(tiny_bundle, threads=1)
    assert info.value.subject == str(tiny_bundle)
    result = CliRunner().invoke(
        cli, ["classify", "--model", str(tiny_bundle), "--threads", "1", str(sample_images[0])]
    )
    assert result.exit_code == 3, result.output
    assert result.stdout == "" and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: {tiny_bundle}: ")


def test_a_manifest_link_to_a_fifo_outside_is_never_opened(tiny_bundle: Path, tmp_path: Path):
    # Opening a FIFO for reading blocks until a writer comes: were the target opened, this
    # would hang or say "not a regular file". The refusal comes from the path alone.
    fifo = tmp_path / "outside.fifo"
    os.mkfifo(fifo)
    (tiny_bundle / "manifest.json").unlink()
    (tiny_bundle / "manifest.json").symlink_to(fifo)
    with pytest.raises(BundleError, match=r"manifest\.json is a link that leads outside"):
        SceneCam.load(tiny_bundle, threads=1)


def test_links_inside_the_bundle_are_followed(tiny_bundle: Path):
    (tiny_bundle / "head.npz").rename(tiny_bundle / "weights.npz")
    (tiny_bundle / "head.npz").symlink_to("weights.npz")
    assert SceneCam.load(tiny_bundle, threads=1).class_names


def test_a_fifo_in_the_bundle_is_refused(tiny_bundle: Path):
    (tiny_bundle / "head.npz").unlink()
    os.mkfifo(tiny_bundle / "head.npz")
    with pytest.raises(BundleError, match=r"head\.npz is not a regular file"):
        SceneCam.load(tiny_bundle, threads=1)


class _RepeatingDeflate:
    """Stands in for zipfile's compressor while the bomb is written: each piece is deflated on
    its own (full flush), so every 1 MiB piece of zeros is the same 1,037 bytes, computed
    once, and 4 GiB of zeros take a second instead of a minute of deflating."""

    def __init__(self, zeros: bytes) -> None:
        self.zeros = zeros
        self.cache: bytes | None = None

    def _deflate(self, data: bytes) -> bytes:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        return c.compress(data) + c.flush(zlib.Z_FULL_FLUSH)

    def compress(self, data: bytes) -> bytes:
        if data is self.zeros:
            self.cache = self.cache or self._deflate(data)
            return self.cache
        return self._deflate(bytes(data))

    def flush(self) -> bytes:
        return b"\x03\x00"  # an empty final block


def _add_zip_bomb(npz: Path) -> None:
    """A 4 GiB array of zeros, 4.2 MB compressed, under a name no head layer uses."""
    zeros = bytes(1 << 20)
    deflate = _RepeatingDeflate(zeros)
    # The CRC is not computed (5 s for 4 GiB): a reader that decompressed the entry would
    # spend the memory and time first and fail on the CRC at the end.
    with (
        mock.patch.object(zipfile, "_get_compressor", lambda *a: deflate),
        mock.patch.object(zipfile, "crc32", lambda data, crc=0: crc),
        zipfile.ZipFile(npz, "a", zipfile.ZIP_DEFLATED) as archive,
        archive.open("unused.npy", "w", force_zip64=True) as entry,
    ):
        entry.write(_npy((1 << 30,), b""))
        for _ in range(4096):
            entry.write(zeros)


def test_zip_bomb_in_an_unused_array_is_never_decompressed(tiny_bundle: Path):
    _add_zip_bomb(tiny_bundle / "head.npz")
    with zipfile.ZipFile(tiny_bundle / "head.npz") as archive:
        assert archive.getinfo("unused.npy").file_size > 4 << 30
    assert (tiny_bundle / "head.npz").stat().st_size < 8 << 20
    _rehash(tiny_bundle)
    # Load in a child and read its peak memory: decompressing the array would need 4 GiB.
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child of a big pytest
    # process (TensorFlow loaded by earlier tests) would report its parent's peak.
    script = (
        "import re, sys\n"
        "from scenecam_edge import SceneCam\n"
        "cam = SceneCam.load(sys.argv[1], threads=1)\n"
        "status = open('/proc/self/status').read()\n"
        "print(cam.class_names[0], re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tiny_bundle)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    label, peak_kib = done.stdout.split()
    assert label == "buildings"
    assert int(peak_kib) < 1 << 20, f"peak memory {int(peak_kib) >> 10} MiB"


def test_an_array_that_does_not_fill_its_header_is_refused(tiny_bundle: Path):
    _replace_in_npz(tiny_bundle / "head.npz", "2.bias", _npy((6,), b"\0" * 8))
    _rehash(tiny_bundle)
    with pytest.raises(BundleError, match=r"array '2.bias' declares shape \(6,\) \(24 bytes\)"):
        SceneCam.load(tiny_bundle, threads=1)


def test_json_depth_is_counted_outside_strings():
    from scenecam_edge.bundle import json_depth

    assert json_depth('{"a": [1, {"b": "[[[[{{{"}], "c": "\\"]]"}') == 3
    assert json_depth("[" * 5000 + "]" * 5000) == 5000


def test_update_manifest_sets_fields_atomically_and_keeps_the_rest(bundle_copy: Path):
    from scenecam_edge.bundle import update_manifest

    before = _manifest(bundle_copy)
    written = update_manifest(bundle_copy, evaluation={"on": "test", "accuracy": 0.5})
    after = _manifest(bundle_copy)
    assert written == after
    assert list(after) == list(before)  # same fields, in the same order
    assert after["evaluation"] == {"on": "test", "accuracy": 0.5}
    assert {k: v for k, v in after.items() if k != "evaluation"} == {
        k: v for k, v in before.items() if k != "evaluation"
    }
    assert (bundle_copy / "manifest.json").read_text().endswith("}\n")
    # no temporary file left beside it
    assert sorted(p.name for p in bundle_copy.iterdir()) == sorted(
        [*before["files"], "manifest.json"]
    )
    assert SceneCam.load(bundle_copy).manifest.evaluation == {"on": "test", "accuracy": 0.5}


def test_update_manifest_refuses_a_manifest_that_does_not_validate(bundle_copy: Path):
    from scenecam_edge.bundle import update_manifest

    (bundle_copy / "manifest.json").write_text("{ not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        update_manifest(bundle_copy, evaluation=None)
    assert (bundle_copy / "manifest.json").read_text() == "{ not json"


def test_write_manifest_checksums_the_named_files(bundle_copy: Path):
    from scenecam_edge.bundle import write_manifest

    manifest = _manifest(bundle_copy)
    stale = {**manifest, "files": {name: "0" * 64 for name in manifest["files"]}}
    write_manifest(bundle_copy, stale)
    with pytest.raises(BundleError, match="does not match its sha256"):
        SceneCam.load(bundle_copy)
    written = write_manifest(bundle_copy, stale, checksum=list(manifest["files"]))
    assert written["files"] == {name: sha256_file(bundle_copy / name) for name in manifest["files"]}
    assert written["files"] == manifest["files"]
    assert list(written) == list(manifest)  # files stays where it was
    assert json.loads((bundle_copy / "manifest.json").read_text()) == written
    assert SceneCam.load(bundle_copy).class_names
