"""`wanlab --help` and its groups' help read as sentences in an 80-column terminal: each
command's row in the Commands panel is its docstring's first paragraph, broken only where the
next word would not fit, never where the source happened to break a line."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.cli import app

ROOT = Path(__file__).resolve().parent.parent
GROUPS = {"": app} | {group.name: group.typer_instance for group in app.registered_groups}


def _help(group: str) -> str:
    """`wanlab [GROUP] --help` as an 80-column terminal shows it."""
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1"}
    argv = [sys.executable, "-c", "from experiments.cli import main; main()"]
    argv += [group, "--help"] if group else ["--help"]
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT).stdout


def _rows(text: str) -> dict[str, list[str]]:
    """The Commands panel's rows: each command's description, line by line."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("╭─ Commands"))
    rows: dict[str, list[str]] = {}
    for line in lines[start + 1 :]:
        if line.startswith("╰"):
            break
        inner = line.removeprefix("│ ").removesuffix("│").rstrip()
        name, _, description = inner.partition(" ")
        if name:
            rows[name] = []
        rows[list(rows)[-1]].append(description.strip())
    return rows


def _summary(typer_app, name: str) -> str:
    command = next(c for c in typer_app.registered_commands if c.name == name)
    text = command.help or inspect.getdoc(command.callback)
    return " ".join(text.split("\n\n")[0].split())


@pytest.mark.parametrize("group", list(GROUPS), ids=[name or "wanlab" for name in GROUPS])
def test_commands_read_as_sentences_at_80_columns(group):
    rows = _rows(_help(group))
    typer_app = GROUPS[group]
    commands = [c.name for c in typer_app.registered_commands]
    assert set(commands) <= set(rows)
    width = max(len(line) for lines in rows.values() for line in lines)
    for name in commands:
        lines = rows[name]
        assert " ".join(lines) == _summary(typer_app, name)
        for line, following in zip(lines, lines[1:], strict=False):
            next_word = following.split()[0]
            assert len(line) + 1 + len(next_word) > width, f"{name}: broken early: {line!r}"
