"""What every inventory source shares: reading its file, deciding a host's address, and turning
host fields into a validated Fleet whose errors name the source's own host and field."""

from __future__ import annotations

import ipaddress
import re
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from inventory.errors import ConfigError, config_error, field_path
from inventory.models import Fleet, Host


def literal_address(name: str) -> bool:
    """True when a host's name can stand for its address: an IP address or a dotted DNS name.

    A bare word such as `gpu-1` is an alias and needs its address spelled out.
    """
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return "." in name.strip(".")


def parse_port(value: Any, file: str, field: str) -> int:
    """A port from a source that may only have text (digits); anything else is a ConfigError."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ConfigError(file, field, f"{value!r} is not a port number")


def resolve_path(value: Any, base: Path) -> Any:
    """A path as given, with `~` expanded and relative to `base`; other values unchanged."""
    if not isinstance(value, str):
        return value
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def build_fleet(
    file: str,
    hosts: list[tuple[str, dict[str, Any]]],
    spelled: dict[str, str],
    **fleet_fields: Any,
) -> Fleet:
    """A validated Fleet from (host's name in the source, Host fields) pairs.

    `spelled` maps a Host field to the source's own word for it (for `labels`, the prefix of
    each label's word), so that an error reads `FILE: node03.ansible_port: ...`.
    """
    models = []
    for name, fields in hosts:
        try:
            models.append(Host(**fields))
        except ValidationError as error:
            raise config_error(error, file, rename=partial(_spell_host, name, spelled)) from None
    try:
        return Fleet(hosts=models, **fleet_fields)
    except ValidationError as error:
        problem = config_error(error, file, rename=lambda loc: _spell_fleet(loc, hosts, spelled))
        message = re.sub(r"hosts\[(\d+)\]", lambda m: hosts[int(m[1])][0], problem.message)
        raise ConfigError(file, problem.field, message) from None


def _spell_host(name: str, spelled: dict[str, str], loc: tuple) -> str:
    """A Host field as `NAME.field` in the source's words."""
    return f"{name}.{_spell(loc, spelled)}"


def _spell(loc: tuple, spelled: dict[str, str]) -> str:
    """A Host field in the source's words (a label as its own variable, e.g. wanlab_region)."""
    loc = tuple(map(str, loc))
    if loc[0] == "labels" and len(loc) > 1 and "labels" in spelled:
        return spelled["labels"] + loc[1]
    return ".".join([spelled.get(loc[0], loc[0]), *loc[1:]])


def _spell_fleet(loc: tuple, hosts: list[tuple[str, dict[str, Any]]], spelled: dict[str, str]):
    """A Fleet field in the source's words: a host's by its name in the source."""
    if len(loc) > 2 and loc[0] == "hosts" and isinstance(loc[1], int):
        return _spell_host(hosts[loc[1]][0], spelled, loc[2:])
    return field_path(loc)
