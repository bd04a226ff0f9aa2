"""The table of every command and the options they share, for docs/cli.md, made from the
click commands themselves so it cannot drift (a test compares it with the file).

    python -m scenecam_edge.cli.doc_table           # print the table
    python -m scenecam_edge.cli.doc_table --write   # put it into docs/cli.md
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

#: The lines between which docs/cli.md holds the table.
START = "<!-- options table: made by python -m scenecam_edge.cli.doc_table --write -->"
END = "<!-- end of options table -->"
#: docs/cli.md in a checkout (the package is runtime/, mapped to scenecam_edge).
DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def _commands() -> dict[str, click.Command]:
    from . import cli

    return {name: cli.commands[name] for name in sorted(cli.commands)}


def _options(command: click.Command) -> dict[str, click.Option]:
    """The visible options of ``command`` by their first long name (--help excluded)."""
    found: dict[str, click.Option] = {}
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            names = [n for n in param.opts if n.startswith("--")] or param.opts
            found[names[0]] = param
    return found


def _aliases(command: click.Command) -> list[str]:
    return [p.opts[0] for p in command.params if isinstance(p, click.Option) and p.hidden]


def table() -> str:
    """The Markdown table: one row per option that two or more commands share, one column
    per command; then the old names each command still takes."""
    commands = _commands()
    options = {name: _options(command) for name, command in commands.items()}
    counts: dict[str, int] = {}
    for found in options.values():
        for flag in found:
            counts[flag] = counts.get(flag, 0) + 1
    shared = sorted(flag for flag, n in counts.items() if n >= 2)
    lines = [
        "| option | " + " | ".join(f"`{name}`" for name in commands) + " |",
        "|---|" + ":-:|" * len(commands),
    ]
    for flag in shared:
        cells = ["yes" if flag in options[name] else "" for name in commands]
        lines.append(f"| `{flag}` | " + " | ".join(cells) + " |")
    old = [
        f"`{name}` {', '.join(f'`{a}`' for a in aliases)}"
        for name, command in commands.items()
        if (aliases := _aliases(command))
    ]
    if old:
        lines += ["", "Old names still taken, with a note: " + "; ".join(old) + "."]
    return "\n".join(lines) + "\n"


def _bounds(text: str) -> tuple[int, int]:
    """Where the table starts and ends in ``text`` (the lines between the markers)."""
    start = text.index(START) + len(START) + 1
    return start, text.index(END, start - 1)


def section(text: str) -> str:
    """The part of ``text`` (docs/cli.md) between the markers, without them."""
    start, end = _bounds(text)
    return text[start:end]


def write(doc: Path = DOC) -> bool:
    """Put the table into ``doc`` between the markers; whether it changed."""
    text = doc.read_text(encoding="utf-8")
    start, end = _bounds(text)
    new = text[:start] + table() + text[end:]
    if new != text:
        doc.write_text(new, encoding="utf-8")
    return new != text


def main(argv: list[str]) -> int:
    if argv == ["--write"]:
        print(f"{DOC}: {'updated' if write() else 'already up to date'}")
    elif not argv:
        print(table(), end="")
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
