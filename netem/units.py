"""Parse the units people write in profiles: times, rates and percentages."""

from __future__ import annotations

import math
import re

# Matched whole (fullmatch): a `$` would also accept a trailing newline.
_NUMBER = r"(?P<num>[0-9]{1,15}(?:\.[0-9]{1,15})?)"
_TIME = re.compile(_NUMBER + r"\s*(?P<unit>us|ms|s)")
_RATE = re.compile(_NUMBER + r"\s*(?P<unit>[kmgt]?)(?:bit|bps)")
_PERCENT = re.compile(_NUMBER + r"\s*%?")
MAX_TIME_MS = 3_600_000.0
"""One hour: no network setting wanlab knows of delays a packet longer."""
MAX_RATE_BPS = 10**13

_TIME_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
_RATE_BPS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_time_ms(value: str | int | float) -> float:
    """A time like "10ms", "500us" or "1s" (a bare number means milliseconds) in ms."""
    if isinstance(value, bool):
        raise ValueError(f"not a time: {value!r}")
    if isinstance(value, int | float):
        return _bounded(float(value), MAX_TIME_MS, "a time", "ms")
    match = _TIME.fullmatch(str(value).strip().lower())
    if not match:
        raise ValueError(f"not a time: {value!r} (write it like 10ms, 500us or 1s)")
    return _bounded(float(match["num"]) * _TIME_MS[match["unit"]], MAX_TIME_MS, "a time", "ms")


def parse_time_s(value: str | int | float) -> float:
    """A time as `parse_time_ms` reads it, in seconds."""
    return parse_time_ms(value) / 1000


def parse_rate_bps(value: str | int) -> int:
    """A rate like "1gbit", "790mbit" or "2.5gbit" (a bare integer means bit/s) in bit/s."""
    if isinstance(value, bool):
        raise ValueError(f"not a rate: {value!r}")
    if isinstance(value, int):
        return round(_bounded(value, MAX_RATE_BPS, "a rate", "bit/s"))
    match = _RATE.fullmatch(str(value).strip().lower())
    if not match:
        raise ValueError(f"not a rate: {value!r} (write it like 100mbit, 1gbit or 2.5gbit)")
    rate = float(match["num"]) * _RATE_BPS[match["unit"]]
    return round(_bounded(rate, MAX_RATE_BPS, "a rate", "bit/s"))


def parse_percent(value: str | int | float) -> float:
    """A percentage like "0.1%" or 0.1 as a float in percent."""
    if isinstance(value, bool):
        raise ValueError(f"not a percentage: {value!r}")
    if isinstance(value, int | float):
        return _bounded(float(value), 100.0, "a percentage", "%")
    match = _PERCENT.fullmatch(str(value).strip())
    if not match:
        raise ValueError(f"not a percentage: {value!r} (write it like 0.1%)")
    return _bounded(float(match["num"]), 100.0, "a percentage", "%")


def _bounded(value: float, high: float, what: str, unit: str) -> float:
    if not math.isfinite(value) or not 0 <= value <= high:
        raise ValueError(f"{what} must lie between 0 and {high:g} {unit}, not {value:g}")
    return value


def format_time(ms: float) -> str:
    """Milliseconds as the shortest exact string, e.g. 10ms or 250us."""
    us = round(ms * 1000)
    return f"{us // 1000}ms" if us % 1000 == 0 else f"{us}us"


def format_rate(bps: int) -> str:
    """bit/s as the largest exact unit, e.g. 1gbit, 790mbit."""
    for unit, scale in (("tbit", 10**12), ("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bps % scale == 0:
            return f"{bps // scale}{unit}"
    return f"{bps}bit"
