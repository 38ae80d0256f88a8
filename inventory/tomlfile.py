"""Read a text, TOML or JSON file (inventory, profile, pair matrix, matrix, a record of ours)
with one clear error, never blocking on a FIFO, never past a size limit."""

from __future__ import annotations

import json
import os
import stat
import tomllib
from pathlib import Path
from typing import Any

from inventory.errors import ConfigError

MAX_FILE_BYTES = 4 * 1024 * 1024
"""The largest inventory, profile or matrix file read."""


def read_text(path: Path, limit: int = MAX_FILE_BYTES) -> str:
    """A file's text; a missing, unreadable, binary or huge file (over `limit` bytes), or
    anything but a regular file (a FIFO, a device, a folder), is a ConfigError. Opening never
    blocks: a FIFO is refused, not waited on."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(str(path), None, "no such file") from None
    except OSError as error:
        raise ConfigError(str(path), None, f"cannot be read: {error.strerror}") from None
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise ConfigError(str(path), None, "is not a file")
        if status.st_size > limit:
            raise ConfigError(str(path), None, f"larger than {limit} bytes")
        with os.fdopen(descriptor, "rb", closefd=False) as stream:  # /proc files claim size 0
            raw = stream.read(limit + 1)
    except OSError as error:
        raise ConfigError(str(path), None, f"cannot be read: {error.strerror}") from None
    finally:
        os.close(descriptor)
    if len(raw) > limit:
        raise ConfigError(str(path), None, f"larger than {limit} bytes")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise ConfigError(str(path), None, "not a text file (not UTF-8)") from None


def read_json(path: Path, limit: int = MAX_FILE_BYTES) -> Any:
    """A JSON file's value (`read_text`'s refusals, and one for text that is not JSON)."""
    text = read_text(path, limit)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(str(path), None, f"not valid JSON: {error}") from None


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, turning a missing, unreadable or malformed file into a ConfigError."""
    return parse_toml(read_text(path), str(path))


def parse_toml(text: str, source: str) -> dict[str, Any]:
    """Parse TOML text read from `source`; malformed text is a ConfigError naming it."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(source, None, f"not valid TOML: {error}") from None
