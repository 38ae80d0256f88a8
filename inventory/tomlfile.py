"""Read a text or TOML file (inventory, profile, pair matrix, matrix) with one clear error."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from inventory.errors import ConfigError

MAX_FILE_BYTES = 4 * 1024 * 1024
"""The largest inventory, profile or matrix file read."""


def read_text(path: Path) -> str:
    """A file's text; a missing, unreadable, binary or huge file is a ConfigError."""
    try:
        if not path.is_file():
            raise ConfigError(str(path), None, "is not a file" if path.exists() else "no such file")
        with path.open("rb") as stream:  # not Path.read_text(): /proc files claim size 0
            raw = stream.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise ConfigError(str(path), None, f"cannot be read: {error.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(str(path), None, f"larger than {MAX_FILE_BYTES} bytes")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise ConfigError(str(path), None, "not a text file") from None


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, turning a missing, unreadable or malformed file into a ConfigError."""
    text = read_text(path)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(str(path), None, f"not valid TOML: {error}") from None
