"""The real `wanlab` entry point run in process, for tests of what bad input gets, and the
small valid matrix those tests spoil one field at a time."""

from __future__ import annotations

import sys

import paramiko
import pytest

from experiments.cli import main

GOOD_MATRIX = """
[matrix]
name = "t"
[trainer]
model = "tiny"
batch = 4
pipeline = 2
iterations = 3
[axes]
profiles = ["default", "200mbit"]
dp_degrees = [1, 2]
"""


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `wanlab ARGS`, with every SSH connection forbidden: a
    connection attempt fails the test."""

    def no_connection(*_args, **_kwargs):
        raise AssertionError("a host was contacted")

    monkeypatch.setattr(paramiko.SSHClient, "connect", no_connection)
    monkeypatch.setattr(sys, "argv", ["wanlab", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err
