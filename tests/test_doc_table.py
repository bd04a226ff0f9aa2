"""docs/cli.md's table of every command and the options they share is the one the click
commands make: regenerate it with ``python -m scenecam_edge.cli.doc_table --write``."""

from __future__ import annotations

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
