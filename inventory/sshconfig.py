"""Read the hosts an SSH client configuration names (`~/.ssh/config`) into a Fleet.

Every `Host` alias without a wildcard is a host, in file order, with what the configuration
gives it: `HostName`, `User`, `Port`, the first `IdentityFile`, and `ProxyJump` (one jump
host, itself looked up in the same configuration).
"""

from __future__ import annotations

import fnmatch
import shlex
from pathlib import Path
from typing import Any

import paramiko

from inventory.errors import ConfigError
from inventory.models import Fleet
from inventory.sources import build_fleet, literal_address, parse_port
from inventory.tomlfile import read_text

DEFAULT_PATH = Path("~/.ssh/config")
_SPELLED = {"address": "HostName", "user": "User", "port": "Port", "key_file": "IdentityFile",
            "jump": "ProxyJump"}  # fmt: skip


def aliases(text: str) -> list[str]:
    """The `Host` aliases without a wildcard or negation, in file order."""
    names: list[str] = []
    for line in text.splitlines():
        words = line.strip().replace("=", " ", 1).split(None, 1)
        if len(words) == 2 and words[0].lower() == "host":
            for alias in shlex.split(words[1], comments=True):
                if not any(c in alias for c in "*?!") and alias not in names:
                    names.append(alias)
    return names


def _reach(config: paramiko.SSHConfig, alias: str, file: str, where: str) -> dict[str, Any]:
    """Address, user, port and key file of `alias`, as the configuration gives them."""
    options = config.lookup(alias)
    if "proxycommand" in options:
        raise ConfigError(file, f"{where}.ProxyCommand", "not supported; use ProxyJump")
    address = options["hostname"]
    if address == alias and not literal_address(alias):
        raise ConfigError(file, f"{where}.HostName", "missing, and the alias is not an address")
    fields: dict[str, Any] = {"address": address}
    if "user" in options:
        fields["user"] = options["user"]
    if "port" in options:
        fields["port"] = parse_port(options["port"], file, f"{where}.Port")
    if options.get("identityfile"):
        fields["key_file"] = Path(options["identityfile"][0]).expanduser()
    return fields


def _jump(config: paramiko.SSHConfig, value: str, file: str, where: str) -> dict[str, Any]:
    """The jump host of `ProxyJump [user@]host[:port]`, host looked up as an alias."""
    if "," in value:
        raise ConfigError(file, f"{where}.ProxyJump", f"{value!r}: only one jump host is supported")
    user, _, rest = value.rpartition("@")
    host, colon, port = rest.rpartition(":") if rest.count(":") == 1 else (rest, "", "")
    jump = _reach(config, host, file, f"{where}.ProxyJump")
    if user:
        jump["user"] = user
    if colon:
        jump["port"] = parse_port(port, file, f"{where}.ProxyJump")
    return jump


def load_ssh_config(
    path: Path | None = None, pattern: str = "*", name: str = "ssh-config"
) -> Fleet:
    """The hosts of an SSH client configuration whose aliases match `pattern` (shell style)."""
    path = (path or DEFAULT_PATH).expanduser()
    file = str(path)
    text = read_text(path)
    try:
        config = paramiko.SSHConfig.from_text(text)
    except paramiko.ssh_exception.ConfigParseError as error:
        raise ConfigError(file, None, f"not a valid SSH configuration: {error}") from None
    hosts = []
    for alias in aliases(text):
        if not fnmatch.fnmatchcase(alias, pattern):
            continue
        fields = {"name": alias, **_reach(config, alias, file, alias)}
        proxy = config.lookup(alias).get("proxyjump", "none")
        if proxy.lower() != "none":
            fields["jump"] = _jump(config, proxy, file, alias)
        hosts.append((alias, fields))
    if not hosts:
        raise ConfigError(file, "hosts", f"no Host alias matches {pattern!r}")
    return build_fleet(file, hosts, _SPELLED, name=name, source=path.resolve())
