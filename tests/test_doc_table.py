"""docs/cli.md's table of every command and the options they share is the one the click
commands make: regenerate it with ``python -m scenecam_edge.cli.doc_table --write``."""

from __future__ import annotations

from pathlib import Path

from scenecam_edge.cli import cli
from scenecam_edge.cli.doc_table import section, table

from .conftest import REPO


def test_docs_cli_md_holds_the_generated_table():
    doc = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    assert section(doc) == table(), (
        "docs/cli.md's options table is out of date: run "
        "python -m scenecam_edge.cli.doc_table --write"
    )


def test_the_table_covers_every_command_and_shared_option():
    head, _, *rows = table().splitlines()
    assert head.count("|") - 2 == len(cli.commands)  # a column per command
    flags = {row.split("`")[1] for row in rows if row.startswith("| `--")}
    assert {"--heatmaps", "--method", "--target", "--layer", "--max-channels"} <= flags
    heatmaps = next(row for row in rows if row.startswith("| `--heatmaps`"))
    assert heatmaps.count("yes") == 4  # batch, camera, classify, tiles
    assert "`classify` `--save-dir`" in table()  # the old names, listed


EXPLAIN_FLAGS = ("--target", "--target-space", "--method", "--alpha", "--layer", "--max-channels")


def _bullet(doc: str, start: str) -> str:
    """The bullet of docs/cli.md that starts with ``start``, on one line."""
    return " ".join(doc.split(start, 1)[1].split("\n- ", 1)[0].split())


def test_the_explain_flags_text_says_which_command_lacks_which():
    """docs/cli.md does not say every map-making command takes every explain flag: the
    clause naming a command names each flag it lacks ("all but `--target`", "no `--layer`")
    and no flag it has."""
    from scenecam_edge.cli.doc_table import _options

    bullet = _bullet((REPO / "docs" / "cli.md").read_text(encoding="utf-8"), "**Explain flags.**")
    clauses = bullet.split(";")
    for name, command in cli.commands.items():
        have = set(_options(command)) & set(EXPLAIN_FLAGS)
        if not have:
            continue
        clause = next((c for c in clauses if f"`{name}`" in c), None)
        assert clause is not None, f"the explain flags bullet does not name {name}"
        for flag in EXPLAIN_FLAGS:
            lacks = f"no `{flag}`" in clause or f"all but `{flag}`" in clause
            assert lacks == (flag not in have), (name, flag, clause)


def test_only_classify_takes_target_without_maps_as_the_docs_say(tmp_path: Path):
    """--target alone: classify adds a P(class) column; batch refuses it (exit 2); the docs
    say so."""
    from click.testing import CliRunner

    photo = str(sorted((REPO / "samples" / "scenes").glob("*.jpg"))[0])
    out = str(tmp_path / "r.jsonl")
    refused = CliRunner().invoke(cli, ["batch", photo, "--out", out, "--target", "forest"])
    assert refused.exit_code == 2 and "--target" in refused.stderr
    doc = " ".join((REPO / "docs" / "cli.md").read_text(encoding="utf-8").split())
    assert "Only `classify` takes `--target` without a map" in doc
    assert "gains a `P(forest)` column" in doc
