"""Read an Ansible inventory (YAML or INI, with its host_vars/ and group_vars/ folders) into a
Fleet, reading what ansible-core reads: the hosts of a group in the order `ansible GROUP
--list-hosts` lists them, each host's variables merged as ansible-core merges them, and its SSH
address, user, port, key and jump host taken from those variables as ansible-core's ssh
connection takes them.

Variables, lowest first: `all`'s, the host's groups' (by depth, then `ansible_group_priority`,
then name), group_vars/all, group_vars/GROUP (same order), the host's own, host_vars/HOST. The
address is the last set of inventory_hostname, `ansible_host`, `ansible_ssh_host`; the user of
`ansible_user`, `ansible_ssh_user`; the port of `ansible_port`, `ansible_ssh_port`; the key of
`ansible_private_key_file`, `ansible_ssh_private_key_file`. A jump host is `-J HOST` or
`-o ProxyJump=HOST` in `ansible_ssh_args`, `ansible_ssh_common_args` or
`ansible_ssh_extra_args`, read as ssh reads it (`inventory.sshconfig`). `wanlab_interface`,
`wanlab_workdir` and `wanlab_python` are wanlab's own fields, any other `wanlab_NAME` the label
NAME.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from inventory.ansiblefile import ALL, YAML_SUFFIXES, Inventory, expand_range, read_ini, read_yaml
from inventory.errors import ConfigError
from inventory.models import Fleet
from inventory.sources import build_fleet, literal_address
from inventory.sshconfig import SshConfig
from inventory.tomlfile import read_text

__all__ = ["ALL", "expand_range", "host_order", "load_ansible", "order_statement"]

MAX_VARS_FILES = 1_000
"""The most files read from host_vars/ and group_vars/."""
_WANLAB = {"wanlab_interface": "interface", "wanlab_workdir": "workdir", "wanlab_python": "python"}
# Each connection field and the variables ansible-core's ssh connection takes it from: the last
# one set wins.
_CONNECTION = {
    "address": ("ansible_host", "ansible_ssh_host"),
    "user": ("ansible_user", "ansible_ssh_user"),
    "port": ("ansible_port", "ansible_ssh_port"),
    "key_file": ("ansible_private_key_file", "ansible_ssh_private_key_file"),
}
_SSH_ARGS = ("ansible_ssh_args", "ansible_ssh_common_args", "ansible_ssh_extra_args")
_REFUSED = {
    "ansible_ssh_executable": "another ssh program would run",
    "ansible_password": "wanlab logs in with keys, not passwords",
    "ansible_ssh_pass": "wanlab logs in with keys, not passwords",
    "ansible_ssh_password": "wanlab logs in with keys, not passwords",
}
_SPELLED = {"address": "ansible_host", "user": "ansible_user", "port": "ansible_port",
            "key_file": "ansible_ssh_private_key_file", "jump": "ansible_ssh_common_args",
            "labels": "wanlab_"} | {model: var for var, model in _WANLAB.items()}  # fmt: skip
# ssh's options that take a value (the rest are flags), and those that set what the inventory's
# own variables say (so two places would say it).
_SSH_VALUED = set("BbcDEeFIiJLlmOopQRSWw")
_SSH_OWN = {"l": "ansible_user", "p": "ansible_port", "i": "ansible_private_key_file",
            "F": "an ssh configuration of its own", "W": "a forwarding of its own"}  # fmt: skip
_OPTION_OWN = {"hostname": "ansible_host", "user": "ansible_user", "port": "ansible_port",
               "identityfile": "ansible_private_key_file"}  # fmt: skip
_OPTION_RUNS = {"proxycommand", "localcommand", "permitlocalcommand", "knownhostscommand",
                "pkcs11provider", "securitykeyprovider", "match", "include"}  # fmt: skip
_TEMPLATE = re.compile(r"\{\{|\{%|\{#")
_PATTERN_CHARS = set(".?*[~!&:,")


def _check_file(path: Path, file: str) -> None:
    """Refuse what ansible-core would not read as a YAML or INI file: a folder of inventories,
    an inventory script (it would run it), a vault-encrypted file."""
    if path.is_dir():
        raise ConfigError(file, None, "a folder of inventories is not read; name one file")
    if path.is_file() and os.access(path, os.X_OK):
        raise ConfigError(file, None, "executable: Ansible would run it as a script; not read")


def _read_inventory(path: Path, file: str) -> Inventory:
    _check_file(path, file)
    text = read_text(path)
    if text.startswith("#!"):
        raise ConfigError(file, "line 1", "an inventory script (#!): Ansible runs it; not read")
    if text.startswith("$ANSIBLE_VAULT"):
        raise ConfigError(file, "line 1", "vault-encrypted; not read")
    if path.suffix.lower() in YAML_SUFFIXES:
        return read_yaml(text, file)
    return read_ini(text, file)


def _vars_files(folder: Path, name: str, count: list[int]) -> list[Path]:
    """The files ansible-core reads for `name` in host_vars/ or group_vars/ (its DataLoader's
    find_vars_files): NAME, NAME.yml, NAME.yaml or NAME.json, the first that exists; a folder
    gives every file below it without a suffix or with one of those, in sorted order."""
    if name.startswith("/"):
        return []
    for suffix in ("", *YAML_SUFFIXES):
        candidate = folder / f"{name}{suffix}"
        if candidate.is_dir():
            return _folder_files(candidate, count)
        if candidate.exists():
            count[0] += 1
            return [candidate]
    return []


def _folder_files(folder: Path, count: list[int]) -> list[Path]:
    found: list[Path] = []
    for entry in sorted(os.listdir(folder)):
        if entry.startswith(".") or entry.endswith("~"):
            continue
        full = folder / entry
        suffix = os.path.splitext(entry)[1]
        if full.is_dir() and not suffix:
            found += _folder_files(full, count)
        elif full.is_file() and (not suffix or suffix in YAML_SUFFIXES):
            count[0] += 1
            found.append(full)
        if count[0] > MAX_VARS_FILES:
            raise ConfigError(str(folder), None, f"over {MAX_VARS_FILES} variables files")
    return found


def _load_vars(files: list[Path]) -> dict[str, Any]:
    """The variables of host_vars/ or group_vars/ files, later files over earlier ones."""
    merged: dict[str, Any] = {}
    for path in files:
        text = read_text(path)
        if text.startswith("$ANSIBLE_VAULT"):
            raise ConfigError(str(path), "line 1", "vault-encrypted; not read")
        try:
            data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            line = f"line {mark.line + 1}" if mark is not None else None
            raise ConfigError(str(path), line, "not valid YAML") from None
        except RecursionError:
            raise ConfigError(str(path), None, "nested too deeply to read") from None
        if not data:
            continue
        if not isinstance(data, dict):
            raise ConfigError(str(path), None, "must be a mapping of variables")
        merged |= data
    return merged


class VarsFolders:
    """The host_vars/ and group_vars/ folders beside an inventory, read once per name."""

    def __init__(self, inventory_path: Path):
        base = Path(os.path.realpath(inventory_path.parent))
        self.folders = {"host": base / "host_vars", "group": base / "group_vars"}
        self._read: dict[tuple[str, str], dict[str, Any]] = {}
        self._count = [0]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        """The variables of host or group `name` from its folder."""
        key = (kind, name)
        if key not in self._read:
            folder = self.folders[kind]
            files = _vars_files(folder, name, self._count) if folder.is_dir() else []
            self._read[key] = _load_vars(files)
        return self._read[key]


def host_order(inventory: Inventory, group: str) -> list[str]:
    """The hosts of `group` in `ansible GROUP --list-hosts` order: the group's own hosts, then
    its descendants' level by level (groups of a level in the order they were found)."""
    groups = inventory.groups
    ordered = [group, *groups[group].children]
    seen = set(ordered)
    level = list(dict.fromkeys(ordered))
    while level:
        found: list[str] = []
        for name in level:
            for child in groups[name].children:
                if child not in seen:
                    ordered.append(child)
                    found.append(child)
        seen.update(found)
        level = list(dict.fromkeys(found))
    hosts = {}
    for name in ordered:
        hosts.update(dict.fromkeys(groups[name].hosts))
    return list(hosts)


def order_varies(inventory: Inventory, group: str) -> bool:
    """True where ansible-core's own order for `group` changes from run to run: it takes the
    groups of each level below the first from a set, so where two groups of one level both have
    children, their children come in either order."""
    groups = inventory.groups
    level = [group, *groups[group].children]
    seen = set(level)
    while level:
        parents = [name for name in dict.fromkeys(level) if set(groups[name].children) - seen]
        if len(parents) > 1:
            return True
        found = [c for name in level for c in groups[name].children if c not in seen]
        seen.update(found)
        level = found
    return False


def order_statement(path: Path, group: str = ALL) -> str:
    """How the hosts of `group` are ordered, for `wanlab inventory show`."""
    statement = f"host order: as `ansible {group} --list-hosts` lists them"
    if order_varies(_read_inventory(path, str(path)), group):
        statement += (
            " (ansible-core's own order of hosts two or more groups down varies from run"
            " to run here; wanlab takes sibling groups in the order they were found)"
        )
    return statement


def host_variables(inventory: Inventory, host: str, folders: VarsFolders) -> dict[str, Any]:
    """A host's variables, merged as ansible-core's VariableManager merges them."""
    direct = [name for name, group in inventory.groups.items() if host in group.hosts]
    mine = set(direct)
    for name in direct:
        mine |= inventory.ancestors(name)
    mine.discard(ALL)
    memo: dict[str, int] = {}
    ranked = sorted(mine, key=lambda g: (inventory.depth(g, memo), inventory.groups[g].priority, g))
    merged = dict(inventory.groups[ALL].variables)
    for name in ranked:
        merged |= inventory.groups[name].variables
    merged |= folders.get("group", ALL)
    for name in ranked:
        merged |= folders.get("group", name)
    return merged | inventory.hosts[host] | folders.get("host", host)


def ssh_jump(variables: dict[str, Any], file: str, host: str) -> tuple[str, str] | None:
    """(variable, ProxyJump value) from the ssh arguments ansible-core adds to its ssh command;
    anything there that would run a command or say what another variable says is refused."""
    jumps: list[tuple[str, str]] = []
    for var in _SSH_ARGS:
        text = variables.get(var)
        if text is None:
            continue
        where = f"{host}.{var}"
        if not isinstance(text, str):
            raise ConfigError(file, where, "must be text")
        try:
            words = shlex.split(text)
        except ValueError as error:
            raise ConfigError(file, where, f"cannot be split into words: {error}") from None
        jumps += [(var, spec) for spec in _jumps_in(words, file, where)]
    if len(jumps) > 1:
        message = f"{len(jumps)} jump options ({', '.join(s for _, s in jumps)}); ssh takes one"
        raise ConfigError(file, f"{host}.{jumps[1][0]}", message)
    return jumps[0] if jumps else None


def _jumps_in(words: list[str], file: str, where: str) -> list[str]:
    jumps, index = [], 0
    while index < len(words):
        word = words[index]
        index += 1
        if not word.startswith("-") or word == "-":
            raise ConfigError(file, where, f"{word!r}: only ssh options are read here")
        flags = word[1:]
        while flags:
            flag, flags = flags[0], flags[1:]
            if flag not in _SSH_VALUED:
                continue
            if not flags:
                if index >= len(words):
                    raise ConfigError(file, where, f"-{flag} needs a value")
                flags, index = words[index], index + 1
            value, flags = flags, ""
            if flag in _SSH_OWN:
                raise ConfigError(file, where, f"-{flag}: set {_SSH_OWN[flag]} instead")
            if flag == "J":
                jumps.append(value)
            elif flag == "o":
                jumps += _jump_option(value, file, where)
    return jumps


def _jump_option(value: str, file: str, where: str) -> list[str]:
    key, _, rest = value.strip().partition("=") if "=" in value else value.partition(" ")
    key, rest = key.strip().lower(), rest.strip()
    if key in _OPTION_OWN:
        raise ConfigError(file, where, f"-o {value}: set {_OPTION_OWN[key]} instead")
    if key in _OPTION_RUNS and not (key == "proxycommand" and rest.lower() == "none"):
        raise ConfigError(file, where, f"-o {value}: would run a command; not supported")
    return [rest] if key == "proxyjump" and rest.lower() != "none" else []


def _last_set(variables: dict[str, Any], names: tuple[str, ...]) -> tuple[str, Any] | None:
    found = [(name, variables[name]) for name in names if variables.get(name) is not None]
    return found[-1] if found else None


def host_fields(name: str, variables: dict[str, Any], file: str) -> dict[str, Any]:
    """A host's Host fields from its merged variables, as ansible-core's ssh connection reads
    them."""
    connection = variables.get("ansible_connection")
    if connection is not None and connection not in ("ssh", "smart"):
        raise ConfigError(file, f"{name}.ansible_connection", f"{connection!r}: not reached by SSH")
    for var, why in _REFUSED.items():
        if variables.get(var) is not None:
            raise ConfigError(file, f"{name}.{var}", f"not read: {why}")
    fields: dict[str, Any] = {"name": name, "labels": {}}
    used = {var: variables[var] for var in (*_WANLAB, *_SSH_ARGS) if var in variables}
    for field, names in _CONNECTION.items():
        chosen = _last_set(variables, names)
        if chosen is not None:
            used[chosen[0]] = fields[field] = chosen[1]
    for var, value in variables.items():
        if var in _WANLAB:
            fields[_WANLAB[var]] = value
        elif var.startswith("wanlab_"):
            fields["labels"][var.removeprefix("wanlab_")] = used[var] = value
    for var, value in used.items():
        if isinstance(value, str) and _TEMPLATE.search(value):
            raise ConfigError(file, f"{name}.{var}", "a template; wanlab does not evaluate them")
    if "address" not in fields:
        if not literal_address(name):
            raise ConfigError(
                file, f"{name}.ansible_host", "missing, and the name is not an address"
            )
        fields["address"] = name
    if isinstance(fields.get("port"), str):
        message = f"{fields['port']!r} is not a port number (an integer)"
        raise ConfigError(file, f"{name}.ansible_port", message)
    if isinstance(fields.get("key_file"), str):
        fields["key_file"] = Path.cwd() / Path(fields["key_file"]).expanduser()
    return fields


def load_ansible(path: Path, group: str = ALL, name: str | None = None) -> Fleet:
    """The hosts of `group` (default: every host) of an Ansible inventory, in the order
    `ansible GROUP --list-hosts` gives them."""
    file = str(path)
    inventory = _read_inventory(path, file)
    if group not in inventory.groups:
        known = ", ".join(sorted(inventory.groups))
        raise ConfigError(file, "group", f"no group {group!r} (groups: {known})")
    if set(group) & _PATTERN_CHARS:
        raise ConfigError(file, "group", f"{group!r} reads as a host pattern; name a group")
    selected = host_order(inventory, group)
    if not selected:
        raise ConfigError(file, "group", f"group {group!r} has no hosts")
    folders = VarsFolders(path)
    jumps = None
    hosts = []
    for host in selected:
        variables = host_variables(inventory, host, folders)
        fields = host_fields(host, variables, file)
        jump = ssh_jump(variables, file, host)
        if jump is not None:
            jumps = jumps or SshConfig(None)
            try:
                fields["jump"] = jumps.jump(jump[1], f"{host}.{jump[0]}")
            except ConfigError as error:
                message = f"{error.message} (as {error.file} reads it)"
                raise ConfigError(file, error.field, message) from None
        hosts.append((host, fields))
    fleet_name = name or (group if group != ALL else path.stem)
    return build_fleet(file, hosts, _SPELLED, name=fleet_name, source=path.resolve())
