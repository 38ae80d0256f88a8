"""Shared fixtures: a 4-host local fleet of real sshd processes, private to the test session.

The test fleet gets its own name prefix, subnet and state folder (through the environment, so
`wanlab ... -i local` run as a subprocess finds it too) and never touches a fleet a user has up.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.lab.fleet import LocalFleet

TEST_PREFIX = "wlx"
TEST_SUBNET = "198.18.2.0/24"


@pytest.fixture(scope="session")
def wanlab_env(tmp_path_factory) -> dict[str, str]:
    """Environment that points wanlab at the session's private fleet."""
    home = tmp_path_factory.mktemp("wanlab-home")
    env = {
        "WANLAB_HOME": str(home),
        "WANLAB_FLEET_PREFIX": TEST_PREFIX,
        "WANLAB_FLEET_SUBNET": TEST_SUBNET,
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def local_fleet(wanlab_env) -> LocalFleet:
    """A running 4-host local fleet for the whole session, removed at the end."""
    fleet = LocalFleet()
    fleet.up(4)
    yield fleet
    fleet.down()


@pytest.fixture
def wanlab(wanlab_env):
    """Run the real `wanlab` command line in a subprocess, against the session's fleet."""

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", "from experiments.cli import main; main()", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=Path(__file__).parent.parent,
        )

    return run
