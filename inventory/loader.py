"""Read a fleet inventory (TOML, or through `-i` an Ansible inventory), with errors that name
the file and the field."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from inventory.ansible import load_ansible
from inventory.errors import ConfigError, config_error, field_path, path_too_long
from inventory.models import Fleet
from inventory.tomlfile import read_text, read_toml

ANSIBLE_PREFIX = "ansible:"
ANSIBLE_SUFFIXES = (".yml", ".yaml", ".ini")
_TOP_LEVEL = {"fleet", "defaults", "hosts"}
_PATH_FIELDS = ("key_file",)


def _resolve(value: Any, base: Path) -> Any:
    if not isinstance(value, str):
        return value
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def is_ansible_spec(spec: str) -> bool:
    """True when an -i value names an Ansible inventory: `ansible:FILE`, or a file ending in
    .yml, .yaml or .ini."""
    return spec.startswith(ANSIBLE_PREFIX) or Path(spec).suffix.lower() in ANSIBLE_SUFFIXES


def load_inventory(spec: str | Path, check_keys: bool = True) -> Fleet:
    """Load an inventory: a TOML file, or an Ansible inventory (every host; see
    `is_ansible_spec`)."""
    if is_ansible_spec(str(spec)):
        fleet = load_ansible(Path(str(spec).removeprefix(ANSIBLE_PREFIX)))
    else:
        fleet = _load_toml(Path(spec))
    if check_keys:
        check_key_files(fleet)
    return fleet


def _load_toml(path: Path) -> Fleet:
    file = str(path)
    data = read_toml(path)
    unknown = sorted(set(data) - _TOP_LEVEL)
    if unknown:
        raise ConfigError(file, unknown[0], "unknown section (expected fleet, defaults, hosts)")
    fleet_table = data.get("fleet", {})
    defaults = data.get("defaults", {})
    hosts = data.get("hosts")
    for name, value, kind in (("fleet", fleet_table, dict), ("defaults", defaults, dict)):
        if not isinstance(value, kind):
            raise ConfigError(file, name, "must be a table")
    if not isinstance(hosts, list) or not hosts:
        raise ConfigError(file, "hosts", "at least one [[hosts]] entry is required")
    base = path.parent
    merged_hosts = []
    for index, host in enumerate(hosts):
        if not isinstance(host, dict):
            raise ConfigError(file, f"hosts[{index}]", "must be a table")
        merged = {**defaults, **host}
        for key in _PATH_FIELDS:
            if key in merged:
                merged[key] = _resolve(merged[key], base)
        jump = merged.get("jump")
        if isinstance(jump, dict) and "key_file" in jump:
            merged["jump"] = {**jump, "key_file": _resolve(jump["key_file"], base)}
        merged_hosts.append(merged)
    fleet_fields = dict(fleet_table)
    if "known_hosts" in fleet_fields:
        fleet_fields["known_hosts"] = _resolve(fleet_fields["known_hosts"], base)
    node = fleet_fields.get("delay_node")
    if isinstance(node, dict) and "mailbox" in node:
        fleet_fields["delay_node"] = {**node, "mailbox": _resolve(node["mailbox"], base)}
    try:
        fleet = Fleet(**fleet_fields, hosts=merged_hosts, source=path.resolve())
    except ValidationError as error:
        raise config_error(error, file, rename=_in_file) from None
    return fleet


def _in_file(loc: tuple) -> str:
    """A Fleet field as the file spells it: [fleet]'s keys under `fleet.`, hosts as they are."""
    return field_path(("fleet", *loc) if loc and loc[0] != "hosts" else loc)


MAX_KEY_BYTES = 64 * 1024


def check_key_files(fleet: Fleet) -> None:
    """Raise a ConfigError for the first host whose key file is missing or not a private key,
    or when the known_hosts file is missing."""
    file = str(fleet.source)
    if fleet.known_hosts is not None and not os.path.isfile(fleet.known_hosts):
        raise ConfigError(file, "fleet.known_hosts", f"{fleet.known_hosts} does not exist")
    for index, host in enumerate(fleet.hosts):
        for field, key_file in (
            ("key_file", host.key_file),
            ("jump.key_file", host.jump and host.jump.key_file),
        ):
            problem = key_file and key_file_problem(key_file)
            if problem:
                raise ConfigError(file, f"hosts[{index}].{field}", f"{key_file} {problem}")


def key_file_problem(path: Path) -> str | None:
    """Why `path` is not a private key file (None when it looks like one)."""
    if path_too_long(path):
        return "is a path too long to open"
    if not os.path.lexists(path):
        return "does not exist"
    try:
        first = read_text(path, MAX_KEY_BYTES)[:100].split("\n", 1)[0].strip()
    except ConfigError as error:
        return error.message
    if not (first.startswith("-----BEGIN ") and "PRIVATE KEY" in first):
        return "is not a private key (no -----BEGIN ... PRIVATE KEY----- line)"
    return None
