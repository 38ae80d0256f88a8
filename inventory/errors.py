"""The errors the `wanlab` command turns into words: bad input (`ConfigError`, exit code 2,
naming the file and the field) and hosts out of reach (`HostsUnreachable`, exit code 1, one line
per host). Every package raises them: every package builds on `inventory`."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # this module is shipped to hosts: pydantic only where a caller has it
    from pydantic import ValidationError


class ConfigError(Exception):
    """Bad input in a file the user gave us; the CLI prints it and exits with code 2."""

    def __init__(self, file: str | None, field: str | None, message: str):
        self.file = file
        self.field = field
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ": ".join(part for part in (self.file, self.field) if part)
        return f"{where}: {self.message}" if where else self.message


class FieldProblem(ValueError):
    """A check across fields failed; `loc` is the field to blame, as a pydantic location
    (`"model"`, or `("hosts", 3, "name")`)."""

    def __init__(self, loc: str | tuple, message: str):
        self.loc = loc if isinstance(loc, tuple) else (loc,)
        super().__init__(message)


def field_path(loc: tuple) -> str:
    """Render a pydantic error location as `hosts[3].port`."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def config_error(
    error: ValidationError,
    file: str | None,
    prefix: str = "",
    rename: Callable[[tuple], str | None] | None = None,
) -> ConfigError:
    """pydantic's first complaint as a ConfigError naming `file` and the field: the error's
    location (with a `FieldProblem`'s own field appended), spelled by `rename` where the user's
    words differ from the model's, under `prefix`; pydantic's "Value error, " is dropped."""
    detail = error.errors()[0]
    loc = tuple(detail["loc"])
    cause = (detail.get("ctx") or {}).get("error")
    if isinstance(cause, FieldProblem):
        loc += cause.loc
    field = rename(loc) if rename else field_path(loc)
    if prefix:
        field = f"{prefix}.{field}" if field else prefix
    return ConfigError(file, field or None, detail["msg"].removeprefix("Value error, "))


def check_option(name: str, value: float, low: float, high: float, low_open: bool = False) -> None:
    """Refuse a command-line number that is not finite or lies outside [low, high] (or
    (low, high] with `low_open`)."""
    below = value <= low if low_open else value < low
    if not math.isfinite(value) or below or value > high:
        bracket = "(" if low_open else "["
        interval = f"{bracket}{low:g}, {high:g}]"
        raise ConfigError(None, name, f"must be a number in {interval}, not {value}")


def parsed_option(
    name: str, text: str, parse: Callable[[str], float], low: float, high: float
) -> float:
    """A command-line figure read by `parse` (its ValueError is the option's fault) and lying
    in [low, high] (in (low, high] where low is above 0)."""
    try:
        value = parse(text)
    except ValueError as error:
        raise ConfigError(None, name, str(error)) from None
    check_option(name, value, low, high, low_open=low > 0)
    return value


NAME_MAX_BYTES = 255
PATH_MAX_BYTES = 4096


def path_too_long(path: str | Path) -> str | None:
    """Why the system cannot hold `path` (ENAMETOOLONG): a name in it over 255 bytes, or over
    4096 bytes in all; None when it can."""
    encoded = os.fsencode(path)
    if len(encoded) > PATH_MAX_BYTES or any(len(n) > NAME_MAX_BYTES for n in encoded.split(b"/")):
        return (
            f"too long: a name in a path is at most {NAME_MAX_BYTES} bytes, the path at most "
            f"{PATH_MAX_BYTES}"
        )
    return None


def check_path(path: str | Path, field: str) -> None:
    """Refuse a path given as `field` that the system cannot hold (`path_too_long`)."""
    problem = path_too_long(path)
    if problem:
        raise ConfigError(str(path), field, problem)


class HostsUnreachable(ConnectionError):
    """Some hosts could not be reached or refused a step: `reasons` per host name."""

    def __init__(self, what: str, reasons: dict[str, str]):
        self.what = what
        self.reasons = reasons
        details = "; ".join(f"{name}: {reason}" for name, reason in sorted(reasons.items()))
        super().__init__(f"{what} on {len(reasons)} host(s): {details}")
