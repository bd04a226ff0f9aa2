"""Property-based tests: random bytes and random mutations of valid files and manifests.

The only allowed outcomes are a result or the documented error type, within a time bound.
CI runs a few hundred examples; a long campaign:

    SCENECAM_FUZZ_EXAMPLES=20000 python -m pytest tests/test_fuzz.py -p no:cacheprovider
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from scenecam_edge import BundleError, ImageError
from scenecam_edge.bundle import Manifest
from scenecam_edge.images import load_image
from scenecam_edge.onnx_scan import MalformedModel, external_locations

EXAMPLES = int(os.environ.get("SCENECAM_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=5000,  # ms per input: a hang or a runaway decode fails the test
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SCRATCH = Path(tempfile.mkdtemp(prefix="scenecam-fuzz-"))


def _valid_files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    out = {}
    for fmt in ("PNG", "JPEG", "GIF", "TIFF", "WEBP", "BMP"):
        buf = io.BytesIO()
        image.save(buf, fmt)
        out[fmt] = buf.getvalue()
    return out


VALID = _valid_files()


def _decode(data: bytes, max_pixels: int = 4_000_000) -> None:
    path = SCRATCH / "input.bin"
    path.write_bytes(data)
    try:
        out = load_image(path, max_pixels=max_pixels)
    except ImageError as exc:
        assert exc.subject == str(path) and exc.reason
        return
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert out.shape[0] * out.shape[1] <= max_pixels


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_decode_or_raise_image_error(data: bytes):
    _decode(data)


@st.composite
def mutated_file(draw: st.DrawFn) -> bytes:
    data = bytearray(VALID[draw(st.sampled_from(sorted(VALID)))])
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "zero-run"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:
            data[pos : pos + 8] = b"\0" * 8
    return bytes(data)


@FUZZ
@given(mutated_file())
def test_mutated_images_decode_or_raise_image_error(data: bytes):
    _decode(data)


@pytest.fixture(scope="module")
def manifest_dict(default_bundle: Path) -> dict:
    return json.loads((default_bundle / "manifest.json").read_text())


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@FUZZ
@given(JSON)
def test_random_json_is_a_manifest_or_a_bundle_error(value: object):
    try:
        Manifest.from_dict(value, "fuzz")
    except BundleError as exc:
        assert exc.reason


def _paths(obj: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


@FUZZ
@given(data=st.data())
def test_mutated_manifests_parse_or_raise_bundle_error(manifest_dict: dict, data: st.DataObject):
    manifest = copy.deepcopy(manifest_dict)
    for _ in range(data.draw(st.integers(1, 4))):
        path = data.draw(st.sampled_from(_paths(manifest)[1:]))
        parent = manifest
        for key in path[:-1]:
            parent = parent[key]
        if data.draw(st.booleans()):
            parent[path[-1]] = data.draw(JSON)
        elif isinstance(parent, dict):
            del parent[path[-1]]
        try:
            _paths(manifest)
        except RecursionError:  # pragma: no cover - JSON strategy is shallow
            return
    try:
        parsed = Manifest.from_dict(manifest, "fuzz")
    except BundleError as exc:
        assert exc.reason
        return
    assert parsed.num_classes == len(parsed.class_names) >= 1


@FUZZ
@given(st.binary(max_size=1024))
def test_onnx_scan_never_crashes(data: bytes):
    with contextlib.suppress(MalformedModel):
        assert isinstance(external_locations(data), list)


def _results_file(fmt: str) -> tuple[Path, bytes]:
    """A real two-record results file of ``fmt``, to mutate."""
    from scenecam_edge.results_file import ResultsFile

    path = SCRATCH / f"valid.{fmt}"
    path.unlink(missing_ok=True)
    results = ResultsFile(path, fmt, ["a", "b"], {"model": "m"})  # type: ignore[arg-type]
    results.open()
    results.append(
        [
            {"path": "x,\r\n\".jpg", "error": "bad"},
            {"path": "y.jpg", "label": "a", "index": 0, "confidence": 0.5,
             "probabilities": {"a": 0.5, "b": 0.5}},
        ]
    )  # fmt: skip
    results.close()
    return path, path.read_bytes()


@FUZZ
@given(st.sampled_from(["jsonl", "csv"]), st.data())
def test_mutated_results_files_resume_or_refuse(fmt: str, data: st.DataObject):
    """A damaged results file is resumed (a torn last line dropped) or refused as one
    ResultsMismatch; never another exception, never a traceback in `batch`."""
    from scenecam_edge.results_file import ResultsFile, ResultsMismatch

    _, valid = _results_file(fmt)
    cut = data.draw(st.integers(0, len(valid)))
    junk = data.draw(st.binary(max_size=64))
    keep = data.draw(st.integers(0, len(valid)))
    mutated = valid[:cut] + junk + valid[cut:keep] if keep > cut else valid[:cut] + junk
    path = SCRATCH / f"mutated.{fmt}"
    path.write_bytes(mutated)
    described = SCRATCH / f"valid.{fmt}.meta.json"
    path.with_name(path.name + ".meta.json").write_bytes(described.read_bytes())
    results = ResultsFile(path, fmt, ["a", "b"], {"model": "m"})  # type: ignore[arg-type]
    try:
        prior = results.scan()
    except ResultsMismatch as exc:
        assert exc.reason and "\n" not in exc.reason
        return
    text = path.read_bytes()
    assert mutated.startswith(text)  # only ever cut back, never rewritten
    results.open()  # and what is resumed stays a results file: an append reads back
    results.append([{"path": "z.jpg", "error": "e"}])
    results.close()
    again = results.scan()
    added = os.path.realpath(os.path.join(again.base, "z.jpg"))
    assert again.done == prior.done and again.failed == prior.failed | {added}


def test_csv_killed_between_its_two_header_lines_is_started_afresh(tmp_path: Path):
    """The case the fuzz test found: a CSV of an earlier version holding only its first
    header line (the run was killed before the column names) is resumed as empty, and an
    append reads back."""
    from scenecam_edge.results_file import ResultsFile

    path = tmp_path / "r.csv"
    path.write_bytes(b'# scenecam-edge results {"scenecam_edge_results": 1, "model": "m"}\n')
    again = ResultsFile(path, "csv", ["a", "b"], {"model": "m"})
    assert again.scan().dropped_torn and path.stat().st_size == 0
    again.open()
    again.append([{"path": "z.jpg", "error": "e"}])
    again.close()
    assert len(again.scan().failed) == 1
