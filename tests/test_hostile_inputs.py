"""Hostile and unusual images, generated here, each with its expected outcome: a correct
result, or an ImageError naming the file and the reason. Nothing else, and never a hang."""

from __future__ import annotations

import io
import json
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from scenecam_edge import ImageError, SceneCam
from scenecam_edge.cli import cli
from scenecam_edge.images import load_image
from scenecam_edge.outputs import OutputNamer, safe_stem


def _photo(sample_images: list[Path]) -> Image.Image:
    return Image.open(sample_images[3]).convert("RGB")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but holds almost no data (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def corpus(tmp_path: Path, sample_images: list[Path]) -> dict[str, Path]:
    photo = _photo(sample_images)
    files: dict[str, Path] = {}

    def save(name: str, image: Image.Image, **kwargs: object) -> None:
        files[name] = tmp_path / name
        image.save(files[name], **kwargs)

    def raw(name: str, data: bytes) -> None:
        files[name] = tmp_path / name
        files[name].write_bytes(data)

    buf = io.BytesIO()
    photo.save(buf, "JPEG")
    jpeg = buf.getvalue()
    buf = io.BytesIO()
    photo.save(buf, "PNG")
    png = buf.getvalue()
    raw("zero.jpg", b"")
    raw("truncated.jpg", jpeg[: len(jpeg) // 3])
    raw("truncated.png", png[: len(png) // 2])
    raw("page.jpg", b"<!doctype html><html><body>not a photo</body></html>")
    raw("bomb.png", _png_header_only(100_000, 100_000))
    save("gray.png", photo.convert("L"))
    save("rgba.png", photo.convert("RGBA"))
    save("palette.png", photo.convert("P"))
    save("cmyk.jpg", photo.convert("CMYK"))
    save("photo.tiff", photo)
    save("photo.webp", photo)
    save("one.png", Image.new("RGB", (1, 1), (10, 200, 30)))
    save("wide.png", photo.resize((3000, 4)))
    save("tall.png", photo.resize((4, 3000)))
    sixteen = (np.asarray(photo.convert("L"), np.uint16) * 257).astype(np.uint16)
    save("sixteen.png", Image.fromarray(sixteen))
    frames = [Image.new("RGB", (40, 30), c) for c in [(250, 0, 0), (0, 0, 250)]]
    files["animated.gif"] = tmp_path / "animated.gif"
    frames[0].save(files["animated.gif"], save_all=True, append_images=frames[1:], duration=100)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    wide = photo.resize((120, 60))
    save("rotated.jpg", wide, exif=exif, quality=95)
    return files


FAILS = {
    "zero.jpg": "not an image",
    "truncated.jpg": "truncated or corrupt",
    "truncated.png": "truncated or corrupt",
    "page.jpg": "not an image",
    "bomb.png": "over the limit",
}


def test_every_file_works_or_fails_cleanly(corpus: dict[str, Path]):
    for name, path in corpus.items():
        start = time.perf_counter()
        if name in FAILS:
            with pytest.raises(ImageError) as info:
                load_image(path)
            assert info.value.subject == str(path) and FAILS[name] in info.value.reason, name
        else:
            image = load_image(path)
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, name
        assert time.perf_counter() - start < 10, f"{name} took too long"


def test_conversions_are_correct(corpus: dict[str, Path]):
    rotated = load_image(corpus["rotated.jpg"])
    assert rotated.shape == (120, 60, 3)  # upright: the EXIF orientation was applied
    gif = load_image(corpus["animated.gif"])
    assert (
        gif.shape == (30, 40, 3) and gif[..., 0].mean() > 200 and gif[..., 2].mean() < 50
    )  # first frame
    sixteen = load_image(corpus["sixteen.png"])
    gray = load_image(corpus["gray.png"])
    assert np.abs(sixteen.astype(int) - gray.astype(int)).max() <= 2  # scaled, not clipped at 255
    assert load_image(corpus["one.png"]).tolist() == [[[10, 200, 30]]]
    assert load_image(corpus["gray.png"], channels=1).shape[2] == 1


def test_pixel_limit_is_configurable(scenecam: SceneCam, corpus: dict[str, Path]):
    assert load_image(corpus["photo.tiff"], max_pixels=150 * 150).shape[:2] == (150, 150)
    with pytest.raises(ImageError, match="over the limit of 1000"):
        load_image(corpus["photo.tiff"], max_pixels=1000)
    strict = SceneCam.load(threads=1, max_pixels=1000)
    with pytest.raises(ImageError, match="over the limit"):
        strict.classify(corpus["photo.tiff"])
    assert scenecam.classify(corpus["photo.tiff"]).label


def test_classify_goes_on_past_every_bad_file(corpus: dict[str, Path], tmp_path: Path):
    (tmp_path / "a_folder.jpg").mkdir()
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    result = CliRunner().invoke(cli, ["classify", str(tmp_path / "*"), "--json"])
    assert result.exit_code == 1
    records = {Path(r["path"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    for name in FAILS:
        assert FAILS[name] in records[name]["error"]
    assert records["a_folder.jpg"]["error"] == "is a directory, not an image"
    assert records["dangling.jpg"]["error"] == "broken symbolic link"
    good = [n for n in corpus if n not in FAILS]
    assert all(records[n]["label"] for n in good)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == len(FAILS) + 2 and all(line.startswith("error: ") for line in lines)
    result = CliRunner().invoke(cli, ["classify", str(corpus["photo.tiff"]), "--max-pixels", "100"])
    assert result.exit_code == 1 and "over the limit of 100" in result.stderr


def test_non_utf8_file_names(sample_images: list[Path], tmp_path: Path):
    name = os.fsdecode(b"caf\xe9-\xff.jpg")  # not valid UTF-8: a surrogate-escaped str
    path = tmp_path / name
    path.write_bytes(sample_images[0].read_bytes())
    result = CliRunner().invoke(cli, ["classify", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["label"] and "caf" in record["path"]


@pytest.mark.parametrize(
    "source,expected",
    [
        ("../../etc/passwd", "passwd"),
        ("/abs/path/photo.jpg", "photo"),
        ("dir/..hidden.png", "hidden"),
        ("we ird*name?.jpg", "we_ird_name_"),
        ("....", "image"),
        ("x" * 300 + ".jpg", "x" * 80),
    ],
)
def test_output_names_cannot_escape(source: str, expected: str, tmp_path: Path):
    assert safe_stem(source) == expected
    out = OutputNamer(tmp_path, ".cam.png", []).path_for(source)
    assert out.parent == tmp_path and out.name == f"{expected}.cam.png"


def test_an_output_never_overwrites_an_input(tmp_path: Path):
    victim = tmp_path / "photo.cam.png"
    victim.write_bytes(b"precious")
    namer = OutputNamer(tmp_path, ".cam.png", [str(victim)])
    assert namer.path_for("photo.jpg").name == "photo-2.cam.png"
