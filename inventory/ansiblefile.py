"""An Ansible inventory file (YAML or INI) read into groups and hosts as ansible-core's `yaml`
and `ini` inventory plugins read it: groups and hosts in the order the file gives them, a host's
`host:port` shorthand, `[a:b:step]` ranges (numbers or letters), INI values as Python literals,
pending `[group:children]` and the `all`/`ungrouped` bookkeeping that follows.

What those plugins would only warn about (an unknown key, a group that is not a mapping) is
refused here, as is everything past the limits below."""

from __future__ import annotations

import ast
import math
import re
import shlex
import string
import warnings
from dataclasses import dataclass, field
from typing import Any

import yaml

from inventory.errors import ConfigError

ALL, UNGROUPED = "all", "ungrouped"
YAML_SUFFIXES = (".yml", ".yaml", ".json")
"""The suffixes ansible-core reads as YAML (its yaml_valid_extensions); any other file is INI."""
MAX_HOSTS = 10_000
"""The most hosts one inventory may name (ranges counted before they are expanded)."""
MAX_GROUPS = 10_000
MAX_DEPTH = 64
"""The deepest nesting of groups."""
MAX_ENTRIES = 50_000
"""The most YAML entries walked (anchors can repeat a mapping many times over)."""

_SECTION = re.compile(r"^\[([^:\]\s]+)(?::(\w+))?\]\s*(?:\#.*)?$")
_GROUP_LINE = re.compile(r"^([^:\]\s]+)\s*(?:\#.*)?$")
_BRACKETED_PORT = re.compile(r"^\[(.+)\]:([0-9]+)$")
_HOST_PORT = re.compile(r"^((?:[^:\[\]]|\[[^\]]*\])*):([0-9]+)$")
_RANGE = re.compile(r"\[([^\]]*)\]")
# ansible-core's address shapes (parsing/utils/addresses.py), which decide whether `name:port`
# is a host and a port or one odd host name.
_NUMBERS = r"\[(?:[0-9]+:[0-9]+)(?::[0-9]+)?\]"
_ALNUM = r"\[(?:[a-z]:[a-z]|[0-9]+:[0-9]+)(?::[0-9]+)?\]"
_V4 = rf"(?:[01]?[0-9]{{1,2}}|2[0-4][0-9]|25[0-5]|{_NUMBERS})"
_V6 = r"(?:[0-9a-f]{1,4}|\[(?:[0-9a-f]+:[0-9a-f]+)(?::[0-9]+)?\])"
_LABEL = rf"(?:[\w]|{_ALNUM})(?:[\w_-]|{_ALNUM})*(?<![_-])"
_ADDRESS = re.compile(
    rf"^(?:(?:{_V4}\.){{3}}{_V4}|{_LABEL}(?:\.{_LABEL})*|(?:{_V6}:){{7}}{_V6}|(?:{_V6}:){{1,6}}:"
    rf"|(?:{_V6}:)(?::{_V6}){{1,6}}|(?:{_V6}:){{2}}(?::{_V6}){{1,5}}|(?:{_V6}:){{3}}(?::{_V6}){{1,4}}"
    rf"|(?:{_V6}:){{4}}(?::{_V6}){{1,3}}|(?:{_V6}:){{5}}(?::{_V6}){{1,2}}|(?:{_V6}:){{6}}(?::{_V6})"
    rf"|:(?::{_V6}){{1,6}}|{_V6}?::|(?:0:){{6}}(?:{_V6}\.){{3}}{_V6}"
    rf"|::(?:ffff:)?(?:{_V6}\.){{3}}{_V6}|(?:0:){{5}}ffff:(?:{_V6}\.){{3}}{_V6})$",
    re.IGNORECASE | re.UNICODE,
)
_GROUP_KEYS = ("vars", "children", "hosts")


@dataclass
class Group:
    """One group: its variables, hosts and child groups in the order they were added."""

    name: str
    variables: dict[str, Any] = field(default_factory=dict)
    hosts: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    parents: list[str] = field(default_factory=list)
    priority: int = 1


@dataclass
class Inventory:
    """Every group and host (with its own variables), in the order ansible-core adds them."""

    file: str
    groups: dict[str, Group] = field(default_factory=dict)
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    entries: int = 0

    def __post_init__(self) -> None:
        self.add_group(ALL, ALL)
        self.add_group(UNGROUPED, UNGROUPED)
        self.add_child(ALL, UNGROUPED, ALL)

    def add_group(self, name: Any, where: str) -> str:
        """The group `name`, created on first mention."""
        if not isinstance(name, str) or not name:
            raise ConfigError(self.file, where, f"{name!r} is not a group name")
        if name not in self.groups:
            if len(self.groups) >= MAX_GROUPS:
                raise ConfigError(self.file, where, f"more than {MAX_GROUPS} groups")
            self.groups[name] = Group(name)
        return name

    def ancestors(self, name: str) -> set[str]:
        """The groups above `name`."""
        found, todo = set(), list(self.groups[name].parents)
        while todo:
            group = todo.pop()
            if group not in found:
                found.add(group)
                todo += self.groups[group].parents
        return found

    def add_child(self, parent: str, child: str, where: str) -> None:
        """Make `child` a child group of `parent`; a loop is a ConfigError."""
        if child == parent or child in self.ancestors(parent):
            trail = " > ".join([child, parent, child])
            raise ConfigError(self.file, child, f"groups contain each other: {trail}")
        if child not in self.groups[parent].children:
            self.groups[parent].children.append(child)
        if parent not in self.groups[child].parents:
            self.groups[child].parents.append(parent)

    def set_group_variable(self, group: str, key: Any, value: Any, where: str) -> None:
        """A group's variable; `ansible_group_priority` sets its priority instead."""
        if not isinstance(key, str):
            raise ConfigError(self.file, where, f"{key!r} is not a variable name")
        if key == "ansible_group_priority":
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise ConfigError(self.file, f"{where}.{key}", f"{value!r} is not an integer")
            try:
                self.groups[group].priority = int(value)
            except ValueError:
                message = f"{value!r} is not an integer"
                raise ConfigError(self.file, f"{where}.{key}", message) from None
            return
        self.groups[group].variables[key] = value

    def add_hosts(self, group: str, pattern: Any, variables: Any, where: str) -> None:
        """The hosts of `pattern` (a name, `name:port` or a range) into `group`, with their own
        variables; a port given here is set only where the host is new (as ansible-core does)."""
        if not isinstance(pattern, str):
            raise ConfigError(self.file, where, f"{pattern!r} is not a host name")
        if not isinstance(variables, dict):
            raise ConfigError(self.file, where, "a host's variables must be a mapping")
        names, port = host_pattern(pattern, self.file, where)
        if len(self.hosts) + len(names) > MAX_HOSTS:
            raise ConfigError(self.file, where, f"more than {MAX_HOSTS} hosts")
        for name in names:
            if name not in self.hosts:
                self.hosts[name] = {"ansible_port": port} if port is not None else {}
            if name not in self.groups[group].hosts:
                self.groups[group].hosts.append(name)
            for key, value in variables.items():
                if not isinstance(key, str):
                    raise ConfigError(self.file, where, f"{key!r} is not a variable name")
                self.hosts[name][key] = value

    def reconcile(self) -> None:
        """Groups without a parent become children of `all`; hosts in no group but `all` join
        `ungrouped` (ansible-core's reconcile_inventory)."""
        for name, group in self.groups.items():
            if name != ALL and not group.parents:
                self.add_child(ALL, name, name)
        grouped = {h for g in self.groups.values() if g.name not in (ALL, UNGROUPED)
                   for h in g.hosts}  # fmt: skip
        ungrouped = self.groups[UNGROUPED]
        ungrouped.hosts = [h for h in ungrouped.hosts if h not in grouped]
        for host in self.hosts:
            if host not in grouped and host not in ungrouped.hosts:
                ungrouped.hosts.append(host)
        for name in self.groups:
            if self.depth(name) > MAX_DEPTH:
                raise ConfigError(self.file, name, f"groups nested deeper than {MAX_DEPTH}")

    def depth(self, name: str, memo: dict[str, int] | None = None) -> int:
        """The longest path from `all` down to `name`."""
        memo = {} if memo is None else memo
        if name not in memo:
            parents = self.groups[name].parents
            memo[name] = 0
            memo[name] = 1 + max((self.depth(p, memo) for p in parents), default=-1)
        return memo[name]


def host_pattern(pattern: str, file: str, where: str) -> tuple[list[str], int | None]:
    """The host names of `pattern` and the port it gives (ansible-core's _expand_hostpattern):
    `host:port`, `[v6 or host]:port`, then ranges."""
    address, port = pattern, None
    for shape in (_BRACKETED_PORT, _HOST_PORT):
        match = shape.match(address)
        if match:
            address, port = match[1], int(match[2])
    if not _ADDRESS.match(address):
        address, port = pattern, None  # not an address and a port: the whole is the name
    return expand_range(address, file, where), port


def _range_values(inside: str, pattern: str, file: str, where: str) -> tuple[list[str], int]:
    """The values of one `[first:last(:step)]` and how many there are."""
    bounds = inside.split(":")
    if len(bounds) not in (2, 3) or not bounds[1]:
        raise ConfigError(file, where, f"{pattern!r}: a range is [FIRST:LAST] or [FIRST:LAST:STEP]")
    first, last = bounds[0] or "0", bounds[1]
    step_text = bounds[2] if len(bounds) == 3 else "1"
    if not step_text.isdigit() or int(step_text) < 1:
        raise ConfigError(file, where, f"{pattern!r}: a range's step is a whole number above 0")
    step = int(step_text)
    letters = string.ascii_letters
    if len(first) == 1 == len(last) and first in letters and last in letters:
        if letters.index(first) > letters.index(last):
            raise ConfigError(file, where, f"{pattern!r}: an empty range")
        values = list(letters[letters.index(first) : letters.index(last) + 1 : step])
        return values, len(values)
    if not (first.isascii() and first.isdigit() and last.isascii() and last.isdigit()):
        raise ConfigError(file, where, f"{pattern!r}: a range is of numbers or of letters")
    low, high = int(first), int(last)
    if low > high:
        raise ConfigError(file, where, f"{pattern!r}: an empty range")
    width = len(first) if first[0] == "0" and len(first) > 1 else 0
    if width and len(first) != len(last):
        raise ConfigError(file, where, f"{pattern!r}: a zero-padded range needs equal widths")
    count = (high - low) // step + 1
    values = [] if count > MAX_HOSTS else [str(n).zfill(width) for n in range(low, high + 1, step)]
    return values, count


def expand_range(pattern: str, file: str, where: str) -> list[str]:
    """`node[01:04]` as node01 to node04 (`[a:b:step]`, numbers or single letters; several
    ranges multiply), refused past MAX_HOSTS names before any is made."""
    if "[" not in pattern:
        return [pattern]
    pieces = _RANGE.split(pattern)
    if "[" in pieces[-1] or "]" in "".join(pieces[::2]):
        raise ConfigError(file, where, f"{pattern!r}: a range is [FIRST:LAST] of numbers")
    ranges = [_range_values(inside, pattern, file, where) for inside in pieces[1::2]]
    if math.prod(count for _, count in ranges) > MAX_HOSTS:
        raise ConfigError(file, where, f"{pattern!r}: more than {MAX_HOSTS} hosts")
    names = [pieces[0]]
    for (values, _), tail in zip(ranges, pieces[2::2], strict=True):
        names = [f"{name}{value}{tail}" for name in names for value in values]
    return names


def _yaml_group(inventory: Inventory, name: Any, body: Any, where: str, depth: int) -> str:
    inventory.entries += 1
    if inventory.entries > MAX_ENTRIES:
        message = f"over {MAX_ENTRIES} entries (anchors repeating groups); not read"
        raise ConfigError(inventory.file, None, message)
    if depth > MAX_DEPTH:
        raise ConfigError(inventory.file, None, f"groups nested deeper than {MAX_DEPTH}")
    if not isinstance(body, dict | None):
        raise ConfigError(inventory.file, where, "a group must be a mapping")
    group = inventory.add_group(name, where)
    body = body or {}
    unknown = [key for key in body if key not in _GROUP_KEYS]
    if unknown:
        message = "not an inventory key (hosts, vars, children)"
        raise ConfigError(inventory.file, f"{where}.{unknown[0]}", message)
    for key, value in body.items():
        if isinstance(value, str):
            value = {value: None}
        if not isinstance(value, dict | None):
            raise ConfigError(inventory.file, f"{where}.{key}", "must be a mapping")
        for entry, inner in (value or {}).items():
            inventory.entries += 1
            at = f"{where}.{key}.{entry}"
            if key == "vars":
                inventory.set_group_variable(group, entry, inner, f"{where}.vars")
            elif key == "children":
                child = _yaml_group(inventory, entry, inner, at, depth + 1)
                inventory.add_child(group, child, at)
            else:
                inventory.add_hosts(group, entry, inner or {}, at)
    return group


def read_yaml(text: str, file: str) -> Inventory:
    """The groups and hosts of a YAML (or JSON) inventory."""
    try:
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f"line {mark.line + 1}" if mark is not None else None
        raise ConfigError(file, line, f"not valid YAML: {getattr(error, 'problem', '')}") from None
    except RecursionError:
        raise ConfigError(file, None, "nested too deeply to read") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(file, None, "not an Ansible inventory (expected a mapping of groups)")
    if data.get("plugin"):
        raise ConfigError(file, "plugin", "an inventory plugin's configuration; not read")
    inventory = Inventory(file)
    for name, body in data.items():
        _yaml_group(inventory, name, body, str(name), 0)
    inventory.reconcile()
    return inventory


def ini_value(text: str) -> Any:
    """An INI value as ansible-core reads it: a Python literal where it is one, else the text."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text
    if value is ...:
        return "..."
    if isinstance(value, complex):
        return str(value)
    if isinstance(value, bytes):
        return value.decode(errors="surrogateescape")
    return value


def read_ini(text: str, file: str) -> Inventory:
    """The groups and hosts of an INI inventory: `[group]` host lines (`PATTERN key=value ...`),
    `[group:vars]` lines `key=value`, `[group:children]` lines naming a group."""
    inventory = Inventory(file)
    group, state = UNGROUPED, "hosts"
    pending: dict[str, dict[str, Any]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line, where = raw.strip(), f"line {number}"
        if not line or line[0] in "#;":
            continue
        section = _SECTION.match(line)
        if section:
            group, state = section[1], section[2] or "hosts"
            if state not in ("hosts", "children", "vars"):
                raise ConfigError(
                    file, where, "a section is [GROUP], [GROUP:vars] or [GROUP:children]"
                )
            if group not in inventory.groups:
                if state == "vars" and group not in pending:
                    pending[group] = {"line": number, "state": state, "parents": []}
                inventory.add_group(group, where)
            if group in pending and state != "vars":
                if pending[group]["state"] == "children":
                    _add_pending(inventory, group, pending, where)
                else:
                    del pending[group]
            continue
        if line.startswith("["):
            raise ConfigError(file, where, "a section is [GROUP], [GROUP:vars] or [GROUP:children]")
        if state == "hosts":
            _ini_host_line(inventory, group, line, where)
        elif state == "vars":
            key, equals, value = line.partition("=")
            if not equals:
                raise ConfigError(file, where, f"expected NAME=VALUE in [{group}:vars]")
            inventory.set_group_variable(group, key.strip(), ini_value(value.strip()), where)
        else:
            child = _GROUP_LINE.match(line)
            if child is None:
                raise ConfigError(file, where, f"expected a group name in [{group}:children]")
            if child[1] in inventory.groups:
                inventory.add_child(group, child[1], where)
            elif child[1] in pending:
                pending[child[1]]["parents"].append(group)
            else:
                pending[child[1]] = {"line": number, "state": "children", "parents": [group]}
    for name, declared in pending.items():
        at = f"line {declared['line']}"
        if declared["state"] == "vars":
            raise ConfigError(file, at, f"[{name}:vars] is for a group that is never defined")
        parent = declared["parents"][-1]
        raise ConfigError(file, at, f"[{parent}:children] names {name!r}, never defined")
    inventory.reconcile()
    return inventory


def _add_pending(inventory: Inventory, group: str, pending: dict, where: str) -> None:
    for parent in pending[group]["parents"]:
        inventory.add_child(parent, group, where)
        if parent in pending and pending[parent]["state"] == "children":
            _add_pending(inventory, parent, pending, where)
    del pending[group]


def _ini_host_line(inventory: Inventory, group: str, line: str, where: str) -> None:
    file = inventory.file
    try:
        words = shlex.split(line, comments=True)
    except ValueError as error:
        raise ConfigError(file, where, f"cannot be split into words: {error}") from None
    if not words:
        return
    pattern = words[0]
    if pattern.strip().endswith(":"):
        raise ConfigError(file, where, f"{pattern!r}: a host ending in ':' needs a port")
    variables = {}
    for word in words[1:]:
        key, equals, value = word.partition("=")
        if not equals:
            raise ConfigError(file, where, f"{word!r}: host variables are NAME=VALUE")
        variables[key] = ini_value(value)
    inventory.add_hosts(group, pattern, variables, where)
