"""Read an Ansible inventory (YAML or INI) into a Fleet.

Groups nest through `children`; a host's variables are those of `all`, then of its groups from
the outermost in (groups at one depth by name), then its own. `ansible_host`, `ansible_user`,
`ansible_port` and `ansible_ssh_private_key_file` say how to reach it; `wanlab_interface`,
`wanlab_workdir` and `wanlab_python` are wanlab's own fields, and any other `wanlab_NAME` is the
label NAME. Host patterns such as `node[01:04]` stand for node01 to node04.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from inventory.errors import ConfigError
from inventory.models import Fleet
from inventory.sources import build_fleet, literal_address, parse_port, resolve_path
from inventory.tomlfile import read_text

ALL = "all"
YAML_SUFFIXES = (".yml", ".yaml", ".json")
_FIELDS = {
    "ansible_host": "address",
    "ansible_user": "user",
    "ansible_port": "port",
    "ansible_ssh_private_key_file": "key_file",
    "wanlab_interface": "interface",
    "wanlab_workdir": "workdir",
    "wanlab_python": "python",
}
_SPELLED = {model: var for var, model in _FIELDS.items()} | {"labels": "wanlab_"}
_LABEL_PREFIX = "wanlab_"
_RANGE = re.compile(r"\[(\d+):(\d+)(?::(\d+))?\]")
_GROUP_KEYS = {"hosts", "vars", "children"}


@dataclass
class Group:
    """One group as the file declares it: its own hosts, variables and child groups."""

    hosts: list[str] = field(default_factory=list)
    variables: dict[str, Any] = field(default_factory=dict)
    children: list[str] = field(default_factory=list)


@dataclass
class Inventory:
    """Every group, every host's own variables, and hosts in the order the file first names
    them."""

    file: str
    groups: dict[str, Group] = field(default_factory=lambda: {ALL: Group()})
    host_vars: dict[str, dict[str, Any]] = field(default_factory=dict)

    def group(self, name: Any, where: str) -> Group:
        """The group called `name`, created on first mention."""
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ConfigError(self.file, where, f"{name!r} is not a group name")
        return self.groups.setdefault(name, Group())

    def add_hosts(self, group: str, pattern: Any, variables: dict[str, Any], where: str) -> None:
        """Put the hosts of `pattern` into `group`, with their own variables."""
        if not isinstance(pattern, str):
            raise ConfigError(self.file, where, f"{pattern!r} is not a host name")
        for name in expand_range(pattern, self.file, where):
            self.host_vars.setdefault(name, {}).update(variables)
            if name not in self.groups[group].hosts:
                self.groups[group].hosts.append(name)


def expand_range(pattern: str, file: str, where: str) -> list[str]:
    """`node[01:04]` as node01, node02, node03, node04 (`[a:b:step]`, leading zeros kept)."""
    match = _RANGE.search(pattern)
    if match is None:
        if "[" in pattern or "]" in pattern:
            raise ConfigError(file, where, f"{pattern!r}: a range is [FIRST:LAST] of numbers")
        return [pattern]
    first, last, step = match[1], match[2], int(match[3] or 1)
    if int(first) > int(last) or step < 1:
        raise ConfigError(file, where, f"{pattern!r}: an empty range")
    width = len(first) if first.startswith("0") else 0
    head, tail = pattern[: match.start()], pattern[match.end() :]
    names = []
    for number in range(int(first), int(last) + 1, step):
        names += expand_range(f"{head}{number:0{width}d}{tail}", file, where)
    return names


def _mapping(value: Any, file: str, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(file, where, "must be a mapping")
    return value


def _read_yaml_group(inventory: Inventory, name: str, body: Any, where: str) -> None:
    inventory.group(name, where)
    body = _mapping(body, inventory.file, where)
    unknown = sorted(set(body) - _GROUP_KEYS, key=str)
    if unknown:
        raise ConfigError(
            inventory.file, f"{where}.{unknown[0]}", "not an inventory key (hosts, vars, children)"
        )
    hosts = _mapping(body.get("hosts"), inventory.file, f"{where}.hosts")
    for pattern, variables in hosts.items():
        at = f"{where}.hosts.{pattern}"
        inventory.add_hosts(name, pattern, _mapping(variables, inventory.file, at), at)
    inventory.groups[name].variables.update(
        _mapping(body.get("vars"), inventory.file, f"{where}.vars")
    )
    children = _mapping(body.get("children"), inventory.file, f"{where}.children")
    for child, child_body in children.items():
        _read_yaml_group(inventory, child, child_body, f"{where}.children.{child}")
        if child not in inventory.groups[name].children:
            inventory.groups[name].children.append(child)


def read_yaml(text: str, file: str) -> Inventory:
    """The groups and hosts of a YAML inventory."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f"line {where.line + 1}" if where is not None else None
        raise ConfigError(file, line, "not valid YAML") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(file, None, "not an Ansible inventory (expected a mapping of groups)")
    inventory = Inventory(file)
    for name, body in data.items():
        _read_yaml_group(inventory, name, body, str(name))
    return inventory


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def read_ini(text: str, file: str) -> Inventory:
    """The groups and hosts of an INI inventory: `[group]` host lines (`NAME key=value ...`),
    `[group:vars]` lines `key=value`, `[group:children]` lines naming a group."""
    inventory = Inventory(file)
    inventory.group("ungrouped", "ungrouped")
    group, kind = "ungrouped", "hosts"
    for number, raw in enumerate(text.splitlines(), 1):
        line, where = raw.strip(), f"line {number}"
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            header = re.fullmatch(r"\[([^\[\]:\s]+)(?::(vars|children))?\]", line)
            if header is None:
                raise ConfigError(
                    file, where, "a section is [GROUP], [GROUP:vars] or [GROUP:children]"
                )
            group, kind = header[1], header[2] or "hosts"
            inventory.group(group, where)
            continue
        if kind == "vars":
            key, equals, value = line.partition("=")
            if not equals or not key.strip():
                raise ConfigError(file, where, f"expected NAME=VALUE in [{group}:vars]")
            inventory.groups[group].variables[key.strip()] = _unquote(value.strip())
        elif kind == "children":
            inventory.group(line, where)
            if line not in inventory.groups[group].children:
                inventory.groups[group].children.append(line)
        else:
            try:
                words = shlex.split(line, comments=True)
            except ValueError as error:
                raise ConfigError(file, where, f"cannot be split into words: {error}") from None
            variables = {}
            for word in words[1:]:
                key, equals, value = word.partition("=")
                if not equals or not key:
                    raise ConfigError(file, where, f"{word!r}: host variables are NAME=VALUE")
                variables[key] = value
            inventory.add_hosts(group, words[0], variables, where)
    return inventory


def _descendants(inventory: Inventory, name: str, trail: tuple[str, ...] = ()) -> dict[str, int]:
    """`name` and the groups below it, each with its depth below `name` (the deepest path)."""
    if name in trail:
        raise ConfigError(inventory.file, name, f"groups contain each other: {' > '.join(trail)}")
    depths = {name: 0}
    for child in inventory.groups[name].children:
        for group, depth in _descendants(inventory, child, (*trail, name)).items():
            depths[group] = max(depths.get(group, 0), depth + 1)
    return depths


def host_variables(inventory: Inventory, host: str, depths: dict[str, int]) -> dict[str, Any]:
    """A host's variables: `all`'s, its groups' from the outermost in, then its own."""
    own = [g for g, body in inventory.groups.items() if host in body.hosts]
    holders = {g for g in depths if set(_descendants(inventory, g)) & set(own)} | {ALL}
    merged: dict[str, Any] = {}
    for group in sorted(holders, key=lambda g: (g != ALL, depths.get(g, 0), g)):
        merged.update(inventory.groups[group].variables)
    return merged | inventory.host_vars[host]


def host_fields(name: str, variables: dict, file: str, base: Path, text: bool) -> dict:
    """A host's Host fields from its variables (`text`: an INI file, where a port is digits)."""
    fields: dict[str, Any] = {"name": name, "labels": {}}
    for var, value in variables.items():
        if var in _FIELDS:
            fields[_FIELDS[var]] = value
        elif var.startswith(_LABEL_PREFIX):
            fields["labels"][var.removeprefix(_LABEL_PREFIX)] = value
    if "address" not in fields:
        if not literal_address(name):
            message = "missing, and the name is not an address"
            raise ConfigError(file, f"{name}.ansible_host", message)
        fields["address"] = name
    if text and "port" in fields:
        fields["port"] = parse_port(fields["port"], file, f"{name}.ansible_port")
    if "key_file" in fields:
        fields["key_file"] = resolve_path(fields["key_file"], base)
    return fields


def load_ansible(path: Path, group: str = ALL, name: str | None = None) -> Fleet:
    """The hosts of `group` (default: every host) of an Ansible inventory, in file order."""
    file = str(path)
    text = read_text(path)
    is_yaml = path.suffix.lower() in YAML_SUFFIXES
    inventory = read_yaml(text, file) if is_yaml else read_ini(text, file)
    for parent in list(inventory.groups):
        if parent != ALL and parent not in _descendants(inventory, ALL):
            inventory.groups[ALL].children.append(parent)
    if group not in inventory.groups:
        known = ", ".join(sorted(inventory.groups))
        raise ConfigError(file, "group", f"no group {group!r} (groups: {known})")
    depths = _descendants(inventory, ALL)
    members = {h for g in _descendants(inventory, group) for h in inventory.groups[g].hosts}
    selected = [h for h in inventory.host_vars if h in members]
    if not selected:
        raise ConfigError(file, "group", f"group {group!r} has no hosts")
    hosts = []
    for host in selected:
        variables = host_variables(inventory, host, depths)
        hosts.append((host, host_fields(host, variables, file, path.parent, not is_yaml)))
    fleet_name = name or (group if group != ALL else path.stem)
    return build_fleet(file, hosts, _SPELLED, name=fleet_name, source=path.resolve())
