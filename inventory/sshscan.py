"""The text of an SSH client configuration as OpenSSH lays it out, read before OpenSSH reads it:
which files it takes in (`Include`, followed as OpenSSH follows it), its `Host` aliases in order,
and the constructs refused before any of it reaches `ssh -G` — `Match exec` (which `ssh -G`
itself would run), Include loops and depth, and sizes past the limits below.

Only the layout is read here (keywords, `Host` words, `Include` paths); what each host gets is
OpenSSH's own answer (`inventory.sshconfig`)."""

from __future__ import annotations

import glob
import os
import pwd
import re
from dataclasses import dataclass, field
from pathlib import Path

from inventory.errors import ConfigError
from inventory.tomlfile import read_text

SYSTEM_CONFIG = Path("/etc/ssh/ssh_config")
MAX_INCLUDE_DEPTH = 16
"""OpenSSH's own limit on nested Includes (READCONF_MAX_DEPTH)."""
MAX_FILES = 256
"""The most files one configuration may take in through Include."""
MAX_LINES = 200_000
"""The most lines of all those files together."""

_KEYWORD = re.compile(r'[ \t]*"?([^ \t="]*)"?[ \t]*(?:=[ \t]*)?(.*)')
_EXEC = re.compile(r'(?:^|[\s!"\'=,])exec(?:[\s="\']|$)', re.IGNORECASE)
_WILDCARDS = "*?!"


def home() -> Path:
    """The home folder OpenSSH uses: the account's, not $HOME."""
    return Path(pwd.getpwuid(os.getuid()).pw_dir)


def split_words(text: str, file: str, line: int) -> list[str]:
    """A line's arguments as OpenSSH splits them (argv_split): whitespace between words, single
    or double quotes, backslash before a quote, backslash or space; a word starting with `#`
    ends the line."""
    words: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] in " \t":
            i += 1
            continue
        if text[i] == "#":
            break
        word, quote = [], ""
        while i < n:
            char = text[i]
            escaped = text[i + 1 : i + 2]
            if char == "\\" and (escaped in ("'", '"', "\\") or (not quote and escaped == " ")):
                word.append(text[i + 1])
                i += 2
                continue
            if not quote and char in " \t":
                break
            if not quote and char in "'\"":
                quote = char
            elif quote and char == quote:
                quote = ""
            else:
                word.append(char)
            i += 1
        if quote:
            raise ConfigError(file, f"line {line}", "not a valid SSH configuration: invalid quotes")
        words.append("".join(word))
    return words


@dataclass
class Line:
    """One keyword line: where it is, its keyword (lower case) and its arguments' text."""

    file: str
    number: int
    keyword: str
    rest: str


@dataclass
class Layout:
    """Every keyword line of a configuration and the files it includes, in the order OpenSSH
    reads them, and the `Host` aliases of the user's own files."""

    lines: list[Line] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    files: int = 0
    block: str = ""
    """The first pattern of the Host or Match line above the line being read."""


def aliases(text: str) -> list[str]:
    """The `Host` aliases of one file's text without a wildcard or negation, in file order."""
    layout = Layout()
    for number, raw in enumerate(text.splitlines(), 1):
        _take_line(layout, "-", number, raw)
    return layout.aliases


def _take_line(layout: Layout, file: str, number: int, raw: str) -> Line | None:
    match = _KEYWORD.match(raw.rstrip(" \t\f\r"))
    keyword, rest = match[1].lower(), match[2]
    if not keyword or keyword.startswith("#"):
        return None
    if not rest.strip():
        message = f'not a valid SSH configuration: no argument after keyword "{keyword}"'
        raise ConfigError(file, f"line {number}", message)
    line = Line(file, number, keyword, rest)
    layout.lines.append(line)
    if keyword in ("host", "match"):
        layout.block = split_words(rest, file, number)[0]
    if keyword == "port":
        _check_port(split_words(rest, file, number)[0], file, number, layout.block)
    if keyword == "host":
        for alias in split_words(rest, file, number):
            if not any(c in alias for c in _WILDCARDS) and alias not in layout.aliases:
                layout.aliases.append(alias)
    return line


def _check_port(value: str, file: str, number: int, block: str) -> None:
    """Refuse a Port that is not a number of 1 to 65535 (OpenSSH also takes a service name from
    /etc/services; wanlab does not)."""
    where = f"{block}.Port" if block else "Port"
    if not (value.isascii() and value.isdigit()):
        raise ConfigError(file, where, f"line {number}: {value!r} is not a port number")
    if not 1 <= int(value) <= 65535:
        message = f"line {number}: {value} must be at least 1 and less than or equal to 65535"
        raise ConfigError(file, where, message)


def _include_paths(line: Line, system: bool) -> list[Path]:
    """The files an Include line names: `~` expanded, relative ones in ~/.ssh (or /etc/ssh for
    the system configuration), globs in lexical order."""
    found: list[Path] = []
    for word in split_words(line.rest, line.file, line.number):
        if word.startswith("~") and not system:
            bare = word == "~" or word.startswith("~/")
            word = str(home()) + word[1:] if bare else os.path.expanduser(word)
        if not os.path.isabs(word):
            word = str((SYSTEM_CONFIG.parent if system else home() / ".ssh") / word)
        found += [Path(p) for p in sorted(glob.glob(word))]
    return found


def _read(layout: Layout, path: Path, system: bool, stack: tuple[Path, ...], names: bool) -> None:
    real = path.resolve()
    if real in stack:
        chain = " > ".join(str(p) for p in (*stack, real))
        raise ConfigError(str(stack[0]), "Include", f"an Include loop: {chain}")
    if len(stack) > MAX_INCLUDE_DEPTH:
        raise ConfigError(str(stack[0]), "Include", f"nested deeper than {MAX_INCLUDE_DEPTH}")
    layout.files += 1
    if layout.files > MAX_FILES:
        raise ConfigError(str(stack[0] if stack else path), "Include", f"over {MAX_FILES} files")
    file = str(path)
    text = read_text(path)
    for number, raw in enumerate(text.splitlines(), 1):
        if len(layout.lines) > MAX_LINES:
            raise ConfigError(file, f"line {number}", f"over {MAX_LINES} lines in all files read")
        before = len(layout.aliases)
        line = _take_line(layout, file, number, raw)
        if not names:
            del layout.aliases[before:]
        if line is None:
            continue
        if line.keyword == "match" and _EXEC.search(line.rest):
            raise ConfigError(file, f"line {number}", "Match exec would run a command; not read")
        if line.keyword == "include":
            for included in _include_paths(line, system):
                _read(layout, included, system, (*stack, real), names)


def read_layout(path: Path | None) -> Layout:
    """The layout of the configuration `ssh -G [-F path]` reads: `path` alone, or without one
    the user's ~/.ssh/config and then the system's /etc/ssh/ssh_config (aliases from the user's
    files only)."""
    layout = Layout()
    if path is not None:
        _read(layout, path, system=False, stack=(), names=True)
        return layout
    user = home() / ".ssh" / "config"
    if user.exists():
        _read(layout, user, system=False, stack=(), names=True)
    if SYSTEM_CONFIG.exists():
        _read(layout, SYSTEM_CONFIG, system=True, stack=(), names=False)
    return layout
