"""Write a Fleet, from whatever source it was read, as the TOML inventory the loader reads."""

from __future__ import annotations

from pathlib import Path

import tomli_w

from inventory.models import Fleet
from inventory.safewrite import write_file


def fleet_toml(fleet: Fleet) -> str:
    """The fleet as TOML: every field that differs from its default, paths as absolute text."""
    data = fleet.model_dump(mode="json", exclude_defaults=True, exclude={"source", "delay_node"})
    hosts = data.pop("hosts")
    return tomli_w.dumps({"fleet": data, "hosts": hosts} if data else {"hosts": hosts})


def write_fleet(fleet: Fleet, path: Path, field: str) -> None:
    """Write the fleet's TOML to `path`, which the option `field` gave (`inventory.safewrite`:
    replaced whole, never through a link)."""
    write_file(path, fleet_toml(fleet), field)
