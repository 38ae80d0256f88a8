"""The WANLAB_* variables that name folders, checked where they are read: a value that is set
must be an absolute path the system can hold, and a folder where something exists."""

from __future__ import annotations

import os
from pathlib import Path

from inventory.errors import ConfigError, path_too_long

ENVIRONMENT = "environment"


def folder_from(variable: str, default: Path) -> Path:
    """The folder `variable` names, else `default`; ConfigError naming the variable when its
    value is empty, relative, too long, or something other than a folder."""
    value = os.environ.get(variable)
    if value is None:
        return default
    problem = path_too_long(value) if os.path.isabs(value) else "must be an absolute path"
    if problem is None and os.path.lexists(value) and not os.path.isdir(value):
        problem = f"{value} is not a folder"
    if problem:
        raise ConfigError(ENVIRONMENT, variable, problem)
    return Path(value)
