"""The errors the `wanlab` command turns into words: bad input (`ConfigError`, exit code 2,
naming the file and the field) and hosts out of reach (`HostsUnreachable`, exit code 1, one line
per host). Every package raises them: every package builds on `inventory`."""

from __future__ import annotations

import math


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


def check_option(name: str, value: float, low: float, high: float, low_open: bool = False) -> None:
    """Refuse a command-line number that is not finite or lies outside [low, high] (or
    (low, high] with `low_open`)."""
    below = value <= low if low_open else value < low
    if not math.isfinite(value) or below or value > high:
        bracket = "(" if low_open else "["
        interval = f"{bracket}{low:g}, {high:g}]"
        raise ConfigError(None, name, f"must be a number in {interval}, not {value}")


class HostsUnreachable(ConnectionError):
    """Some hosts could not be reached or refused a step: `reasons` per host name."""

    def __init__(self, what: str, reasons: dict[str, str]):
        self.what = what
        self.reasons = reasons
        details = "; ".join(f"{name}: {reason}" for name, reason in sorted(reasons.items()))
        super().__init__(f"{what} on {len(reasons)} host(s): {details}")
