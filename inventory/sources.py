"""What every inventory source shares: reading its file, deciding a host's address, and turning
host fields into a validated Fleet whose errors name the source's own host and field."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from inventory.errors import ConfigError
from inventory.loader import field_path
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
            loc = tuple(map(str, error.errors()[0]["loc"]))
            if loc[0] == "labels" and len(loc) > 1 and "labels" in spelled:
                field = spelled["labels"] + loc[1]  # a label's own variable, e.g. wanlab_region
            else:
                field = ".".join([spelled.get(loc[0], loc[0]), *loc[1:]])
            message = error.errors()[0]["msg"].removeprefix("Value error, ")
            raise ConfigError(file, f"{name}.{field}", message) from None
    try:
        return Fleet(hosts=models, **fleet_fields)
    except ValidationError as error:
        detail = error.errors()[0]
        message = detail["msg"].removeprefix("Value error, ")
        match = re.match(r"hosts\[(\d+)\]\.(\w+): (.*)", message)
        if match is None:
            raise ConfigError(file, field_path(tuple(detail["loc"])) or None, message) from None
        index, field, text = int(match[1]), match[2], match[3]
        text = re.sub(r"hosts\[(\d+)\]", lambda m: hosts[int(m[1])][0], text)
        raise ConfigError(file, f"{hosts[index][0]}.{spelled.get(field, field)}", text) from None
