"""Which models the package carries, where `models` says each one is, and the message for a
model that stays in the repository."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from scenecam_edge import registry
from scenecam_edge.cli import cli
from scenecam_edge.errors import BundleError
from scenecam_edge.models import REPOSITORY_ONLY

from .conftest import REPO


def test_repository_only_models_are_left_out_of_the_wheel():
    """pyproject's exclude-package-data names exactly REPOSITORY_ONLY, and the default ships."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    excluded = config["tool"]["setuptools"]["exclude-package-data"]["scenecam_edge.models"]
    assert sorted(p.removesuffix("/*") for p in excluded) == sorted(REPOSITORY_ONLY)
    assert registry.DEFAULT_MODEL not in REPOSITORY_ONLY
    for name in REPOSITORY_ONLY:  # still in the repository, loadable by path
        assert (REPO / "models" / name / "manifest.json").is_file()


def test_models_says_where_each_one_is():
    result = CliRunner().invoke(cli, ["models", "--json"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.output.splitlines()]
    installed = [r for r in records if r["installed"]]
    assert registry.DEFAULT_MODEL in {r["name"] for r in installed}
    for r in installed:
        path = Path(r["path"])
        assert (path / "manifest.json").is_file() and path.name == r["name"]
        files = sum(f.stat().st_size for f in path.iterdir())
        assert r["size_mb"] == round(files / 1e6, 1)
    for r in records:
        if not r["installed"]:
            assert (
                r["name"] in REPOSITORY_ONLY and f"load it by path: models/{r['name']}" in r["note"]
            )
    table = CliRunner().invoke(cli, ["models"]).output
    assert f"MB in {installed[0]['path']}" in table


def test_repository_only_model_missing_says_how_to_load_it(monkeypatch, tmp_path: Path):
    """As in a wheel install: an empty models folder stands in for site-packages (a source
    checkout always holds every bundle)."""
    monkeypatch.setattr(registry, "models_dir", lambda: tmp_path)
    name = REPOSITORY_ONLY[0]
    with pytest.raises(BundleError, match=f"load it by path: models/{name}"):
        registry.resolve_model(name)
    result = CliRunner().invoke(cli, ["models", "--json"])
    records = [json.loads(line) for line in result.output.splitlines()]
    assert sorted(r["name"] for r in records) == sorted(REPOSITORY_ONLY)
    assert not records[0]["installed"] and records[0]["path"] is None


def test_the_default_is_the_int8_twin_within_its_bounds():
    """The default is int8 because its manifest shows it keeps the float model's accuracy
    within 0.3 points and its Grad-CAM maps at a correlation of at least 0.99, measured on
    the validation split when it was quantised."""
    manifest = json.loads((registry.resolve_model(None) / "manifest.json").read_text())
    comparison = manifest["quantization"]["comparison"]
    assert registry.DEFAULT_MODEL.endswith("-int8")
    assert comparison["float_accuracy"] - comparison["int8_accuracy"] <= 0.003
    assert comparison["cam_correlation_mean"] >= 0.99
    assert comparison["images"] >= 1000
    assert manifest["evaluation"]["accuracy"] == comparison["int8_accuracy"]
