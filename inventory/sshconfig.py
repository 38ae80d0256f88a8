"""Read the hosts an SSH client configuration names (`~/.ssh/config`) into a Fleet, each as
OpenSSH itself reads it: `ssh -G` answers for every alias, after `inventory.sshscan` has refused
what `ssh -G` would run (`Match exec`) and what is past the limits.

Every `Host` alias without a wildcard is a host, in the order the files name them (Included
files in place). A host's address, user, port, identity file and jump host are `ssh -G`'s
`hostname`, `user`, `port`, `identityfile` (its tokens expanded as ssh expands them) and
`proxyjump` (the jump host itself read with `ssh -G` as ssh reads it when it jumps). What would
run a command on connecting (ProxyCommand, LocalCommand, KnownHostsCommand, a PKCS#11 or
security key provider), a chain of jump hosts, and more than one identity file are refused.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import pwd
import re
import shutil
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from inventory.errors import ConfigError
from inventory.models import Fleet
from inventory.sources import build_fleet, literal_address
from inventory.sshscan import Layout, aliases, home, read_layout

__all__ = ["DEFAULT_PATH", "MAX_HOSTS", "SshConfig", "aliases", "load_ssh_config"]

DEFAULT_PATH = Path("~/.ssh/config")
MAX_HOSTS = 256
"""The most hosts read from one configuration (each is one `ssh -G`); --hosts narrows."""
_SPELLED = {"address": "HostName", "user": "User", "port": "Port", "key_file": "IdentityFile",
            "jump": "ProxyJump"}  # fmt: skip
# ssh -G's keywords whose value would run a command (or load code) on connecting, and the value
# that means "none".
_COMMANDS = {
    "proxycommand": ("ProxyCommand", "none"),
    "knownhostscommand": ("KnownHostsCommand", "none"),
    "pkcs11provider": ("PKCS11Provider", "none"),
    "securitykeyprovider": ("SecurityKeyProvider", "internal"),
}
_TOKEN = re.compile(r"%(.)|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"[^-\s]\S*")


class SshConfig:
    """One SSH client configuration (a file, or without one the user's and the system's), read
    through `ssh -G`."""

    def __init__(self, path: Path | None):
        self.path = path
        self.file = str(path) if path is not None else str(DEFAULT_PATH)
        self.layout: Layout = read_layout(path)
        self._ssh = shutil.which("ssh")
        if self._ssh is None:
            raise ConfigError(self.file, None, "reading it needs OpenSSH's ssh (not found)")
        self._defaults = self._options(["-F", "/dev/null", "--", "wanlab.invalid"], "identity")

    def _options(self, argv: list[str], where: str) -> dict[str, list[str]]:
        """`ssh -G ARGV`'s answer: every keyword with its values."""
        try:
            done = subprocess.run([self._ssh, "-G", *argv], capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL, timeout=30)  # fmt: skip
        except subprocess.TimeoutExpired:
            raise ConfigError(self.file, where, "ssh -G took over 30 s") from None
        if done.returncode != 0:
            error = next((x for x in done.stderr.splitlines() if "terminal" not in x), "failed")
            located = re.match(r"(.+?):? line (\d+): (.*)", error)
            if located:
                message = f"not a valid SSH configuration: {located[3]}"
                raise ConfigError(located[1], f"line {located[2]}", message)
            raise ConfigError(self.file, where, f"ssh -G: {error}")
        options: dict[str, list[str]] = {}
        for line in done.stdout.splitlines():
            keyword, _, value = line.partition(" ")
            options.setdefault(keyword, []).append(value)
        return options

    def lookup(self, host: str, where: str, user: str | None = None, port: int | None = None,
               jumps: str | None = None) -> dict[str, list[str]]:  # fmt: skip
        """`ssh -G`'s options for `host` (with ssh's own `-l`, `-p` and `-J` where given)."""
        if not _NAME.fullmatch(host):
            raise ConfigError(self.file, where, f"{host!r} is not a host name wanlab reads")
        argv = [] if self.path is None else ["-F", str(self.path)]
        argv += ["-l", user] if user else []
        argv += ["-p", str(port)] if port else []
        argv += ["-J", jumps] if jumps else []
        return self._options([*argv, "--", host], where)

    def reach(self, host: str, options: dict[str, list[str]], where: str) -> dict[str, Any]:
        """Address, user, port and identity file from `ssh -G`'s options for `host`; a
        construct wanlab does not follow is a ConfigError naming the file and line."""
        for keyword, (spelled, none) in _COMMANDS.items():
            value = options.get(keyword, [none])[0]
            if value.lower() != none:
                self._refuse(spelled, where, f"would run {value!r}; not supported")
        if options.get("permitlocalcommand", ["no"])[0] == "yes" and "localcommand" in options:
            self._refuse("LocalCommand", where, "would run a command; not supported")
        if options.get("canonicalizehostname", ["false"])[0] != "false":
            self._refuse("CanonicalizeHostname", where, "depends on DNS when connecting; not read")
        address = options["hostname"][0]
        if address.lower() == host.lower() and not literal_address(host):
            message = "missing, and the alias is not an address"
            raise ConfigError(self.file, f"{where}.HostName", message)
        fields: dict[str, Any] = {"address": address, "user": options["user"][0],
                                  "port": int(options["port"][0])}  # fmt: skip
        keys = options.get("identityfile", [])
        if keys != self._defaults.get("identityfile", []):
            if len(keys) > 1:
                message = f"ssh would try {len(keys)} keys ({', '.join(keys)}); wanlab takes one"
                self._refuse("IdentityFile", where, message)
            fields["key_file"] = self._identity(keys[0], host, fields, options, where)
        return fields

    def _identity(self, key: str, host: str, fields: dict, options: dict, where: str) -> Path:
        """An IdentityFile with `~` and ssh's tokens expanded (relative: to this folder, as ssh
        reads it from where it runs)."""
        account = pwd.getpwuid(os.getuid())
        local = socket.gethostname()
        port = str(fields["port"])
        if "%C" in key and options.get("proxyjump", ["none"])[0] != "none":
            self._refuse("IdentityFile", where, "%C with a ProxyJump is not read")
        tokens = {"%": "%", "d": account.pw_dir, "h": fields["address"], "i": str(os.getuid()),
                  "k": options.get("hostkeyalias", [host])[0], "L": local.split(".")[0],
                  "l": local, "n": host, "p": port, "r": fields["user"], "u": account.pw_name,
                  "C": hashlib.sha1(f"{local}{fields['address']}{port}{fields['user']}".encode())
                  .hexdigest()}  # fmt: skip

        def expand(match: re.Match) -> str:
            if match[2] is not None:
                if match[2] not in os.environ:
                    self._refuse("IdentityFile", where, f"${{{match[2]}}} is not set")
                return os.environ[match[2]]
            if match[1] not in tokens:
                self._refuse("IdentityFile", where, f"%{match[1]} is not a token ssh expands")
            return tokens[match[1]]

        if key.startswith("~/") or key == "~":
            key = account.pw_dir + key[1:]
        return Path.cwd() / _TOKEN.sub(expand, key)

    def _refuse(self, keyword: str, where: str, message: str) -> None:
        """Raise the ConfigError for `keyword`, naming the line that set it."""
        line = next((x for x in self.layout.lines if x.keyword == keyword.lower()), None)
        file = line.file if line is not None else self.file
        at = f"line {line.number}: " if line is not None else ""
        raise ConfigError(file, f"{where}.{keyword}", f"{at}{message}")

    def jump(self, spec: str, where: str) -> dict[str, Any]:
        """The jump host of a ProxyJump value (`[user@]host[:port]` or `ssh://user@host:port`),
        read as ssh reads it when it jumps: `ssh -G -l USER -p PORT HOST`."""
        if "," in spec:
            hops = spec.count(",") + 1
            message = f"{spec!r} is a chain of {hops} hosts; only one jump host is supported"
            raise ConfigError(self.file, f"{where}.ProxyJump", message)
        user, host, port = parse_jump(spec, self.file, f"{where}.ProxyJump")
        options = self.lookup(host, f"{where}.ProxyJump", user, port)
        if options.get("proxyjump", ["none"])[0] != "none":
            message = (f"the jump host {host!r} has a ProxyJump of its own "
                       f"({options['proxyjump'][0]}); only one jump host is supported")  # fmt: skip
            raise ConfigError(self.file, f"{where}.ProxyJump", message)
        return self.reach(host, options, f"{where}.ProxyJump")


def parse_jump(spec: str, file: str, where: str) -> tuple[str | None, str, int | None]:
    """(user, host, port) of `[user@]host[:port]`, `[user@][v6]:port` or
    `ssh://[user@]host[:port]`, as ssh's parse_user_host_port reads them."""
    text = spec.removeprefix("ssh://")
    user, at, rest = text.rpartition("@")
    bracketed = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", rest)
    if bracketed:
        host, port = bracketed[1], bracketed[2]
    elif rest.count(":") == 1:
        host, port = rest.split(":")
    else:
        host, port = rest, None
    if not host or (at and not user) or (port is not None and not port.isdigit()):
        raise ConfigError(file, where, f"{spec!r} is not [user@]host[:port]")
    if port is not None and not 1 <= int(port) <= 65535:
        raise ConfigError(file, where, f"{spec!r}: {port} is not a port")
    return (user or None), host, (int(port) if port is not None else None)


def load_ssh_config(
    path: Path | None = None, pattern: str = "*", name: str = "ssh-config"
) -> Fleet:
    """The hosts of an SSH client configuration whose aliases match `pattern` (shell style);
    without `path`, the configuration ssh itself reads (~/.ssh/config and /etc/ssh/ssh_config)."""
    path = path.expanduser() if path is not None else None
    config = SshConfig(path)
    selected = [a for a in config.layout.aliases if fnmatch.fnmatchcase(a, pattern)]
    if not selected:
        raise ConfigError(config.file, "hosts", f"no Host alias matches {pattern!r}")
    if len(selected) > MAX_HOSTS:
        message = f"{len(selected)} Host aliases match {pattern!r}; at most {MAX_HOSTS} are read"
        raise ConfigError(config.file, "hosts", message)

    def read(alias: str) -> tuple[str, dict[str, Any]]:
        options = config.lookup(alias, alias)
        fields = {"name": alias, **config.reach(alias, options, alias)}
        proxy = options.get("proxyjump", ["none"])[0]
        if proxy != "none":
            fields["jump"] = config.jump(proxy, alias)
        return alias, fields

    with ThreadPoolExecutor(max_workers=min(8, len(selected))) as pool:
        hosts = list(pool.map(read, selected))
    source = (path or home() / ".ssh" / "config").resolve()
    return build_fleet(config.file, hosts, _SPELLED, name=name, source=source)
