"""The documentation can be checked, so it is: every relative link and picture in README.md
and docs/*.md resolves to a file of the repository, and the README's sample output is what
the command prints today (change the default model, and this test says to update it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from scenecam_edge.cli import cli

from .conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
#: [text](target) and ![alt](target), and <img src="target">; code spans and blocks are left out.
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_IMG = re.compile(r"<img[^>]*\ssrc=\"([^\"]+)\"")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)
_CODE = re.compile(r"`[^`\n]*`")


def _targets(page: Path) -> list[str]:
    text = _CODE.sub("", _FENCE.sub("", page.read_text(encoding="utf-8")))
    return [*_LINK.findall(text), *_IMG.findall(text)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_and_pictures_resolve(page: Path):
    broken = []
    for target in _targets(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL, a mailto: or an anchor on the same page
        path = (page.parent / target.split("#", 1)[0]).resolve()
        if not path.exists() or REPO.resolve() not in path.parents:
            broken.append(target)
    assert not broken, f"{page.relative_to(REPO)}: links that do not resolve: {broken}"


def test_readme_sample_output_is_what_classify_prints(monkeypatch):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    command = "scenecam-edge classify samples/scenes/"
    match = re.search(rf"```\n\$ {re.escape(command)}\n(.*?)```", readme, re.DOTALL)
    assert match, f"README.md has no ``` block starting with '$ {command}'"
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(cli, command.split()[1:])
    assert result.exit_code == 0, result.output
    assert match.group(1) == result.stdout, (
        "README.md's sample output differs from what the command prints now; paste this:\n"
        + result.stdout
    )
