"""Write a Fleet, from whatever source it was read, as the TOML inventory the loader reads."""

from __future__ import annotations

from pathlib import Path

import tomli_w

from inventory.errors import ConfigError
from inventory.models import Fleet


def fleet_toml(fleet: Fleet) -> str:
    """The fleet as TOML: every field that differs from its default, paths as absolute text."""
    data = fleet.model_dump(mode="json", exclude_defaults=True, exclude={"source", "delay_node"})
    hosts = data.pop("hosts")
    return tomli_w.dumps({"fleet": data, "hosts": hosts} if data else {"hosts": hosts})


def write_fleet(fleet: Fleet, path: Path) -> None:
    """Write the fleet's TOML to `path` (replacing it whole: a reader never sees half)."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_text(fleet_toml(fleet))
        partial.replace(path)
    except OSError as error:
        raise ConfigError(str(path), None, f"cannot be written: {error.strerror}") from None
