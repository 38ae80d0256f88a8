"""What one host's egress should look like: the Profile model, its string and TOML forms.

A profile's delay is one-way, applied on each host's egress, so the round trip between two
shaped hosts grows by twice the delay.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from inventory.errors import ConfigError, config_error
from inventory.names import check_name
from inventory.tomlfile import read_toml
from netem.units import format_rate, format_time, parse_percent, parse_rate_bps, parse_time_ms

MTU_BYTES = 1500
LIMIT_HEADROOM = 1.5
MIN_LIMIT = 1000
LINE_RATE_BPS = 100 * 10**9
"""What "unshaped" means in the tree, and the rate the queue limit is sized for when none is set."""

PROFILE_KEYS = {
    "delay": "delay_ms",
    "jitter": "jitter_ms",
    "loss": "loss_pct",
    "duplicate": "duplicate_pct",
    "reorder": "reorder_pct",
    "rate": "rate_bps",
    "limit": "limit",
}
_PARSERS = {
    "delay": parse_time_ms,
    "jitter": parse_time_ms,
    "loss": parse_percent,
    "duplicate": parse_percent,
    "reorder": parse_percent,
    "rate": parse_rate_bps,
    "limit": lambda v: v if isinstance(v, int) and not isinstance(v, bool) else int(str(v)),
}
_SHORT_ALIASES = {"dup": "duplicate"}


class Profile(BaseModel):
    """One host's egress shaping; all zero/None is the unshaped `default`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str | None = None
    delay_ms: float = Field(0.0, ge=0, le=60_000)
    jitter_ms: float = Field(0.0, ge=0, le=60_000)
    loss_pct: float = Field(0.0, ge=0, le=100)
    duplicate_pct: float = Field(0.0, ge=0, le=100)
    reorder_pct: float = Field(0.0, ge=0, le=100)
    rate_bps: int | None = Field(None, gt=0, le=LINE_RATE_BPS)
    limit: int | None = Field(None, gt=0, le=10_000_000)

    @field_validator("delay_ms", "jitter_ms")
    @classmethod
    def _microseconds(cls, value: float) -> float:
        return round(value, 3)

    @field_validator("loss_pct", "duplicate_pct", "reorder_pct")
    @classmethod
    def _percent_precision(cls, value: float) -> float:
        return round(value, 4)

    @field_validator("rate_bps")
    @classmethod
    def _whole_bytes(cls, value: int | None) -> int | None:
        if value is not None and value < 8:
            raise ValueError("rate must be at least 8bit")
        return None if value is None else value - value % 8

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        if self.jitter_ms > self.delay_ms:
            raise ValueError(f"jitter ({self.jitter_ms}ms) is larger than the delay")
        if self.reorder_pct and not self.delay_ms:
            raise ValueError("reorder needs a delay (reordered packets skip the delay)")
        return self

    @property
    def needs_netem(self) -> bool:
        """True when anything but a rate is asked for (that part needs sch_netem)."""
        return any(
            (self.delay_ms, self.jitter_ms, self.loss_pct, self.duplicate_pct, self.reorder_pct)
        )

    @property
    def is_default(self) -> bool:
        """True when the profile shapes nothing."""
        return not self.needs_netem and self.rate_bps is None

    @property
    def queue_limit(self) -> int:
        """netem's queue limit in packets: given, or 1.5 x the round trip's bandwidth-delay."""
        if self.limit is not None:
            return self.limit
        rate_bytes = (self.rate_bps or LINE_RATE_BPS) / 8
        rtt_s = 2 * (self.delay_ms + self.jitter_ms) / 1000
        return max(MIN_LIMIT, math.ceil(LIMIT_HEADROOM * rate_bytes * rtt_s / MTU_BYTES))

    def shape(self) -> Profile:
        """The profile as the kernel holds it: no name, queue limit filled in when netem is used."""
        limit = self.queue_limit if self.needs_netem else None
        return self.model_copy(update={"name": None, "limit": limit})

    def short(self) -> str:
        """The short string form, e.g. `10ms/1gbit` or `10ms/1gbit/loss=0.1%`."""
        if self.is_default:
            return "default"
        parts = []
        if self.delay_ms:
            parts.append(format_time(self.delay_ms))
        if self.rate_bps is not None:
            parts.append(format_rate(self.rate_bps))
        if self.jitter_ms:
            parts.append(f"jitter={format_time(self.jitter_ms)}")
        for key in ("loss", "duplicate", "reorder"):
            value = getattr(self, PROFILE_KEYS[key])
            if value:
                parts.append(f"{key}={value:g}%")
        if self.limit is not None:
            parts.append(f"limit={self.limit}")
        return "/".join(parts)


def profile_from_fields(
    fields: dict[str, Any], source: str | None, name: str | None = None
) -> Profile:
    """Build a Profile from keys: delay, jitter, loss, duplicate, reorder, rate, limit."""
    values: dict[str, Any] = {"name": name}
    for key, raw in fields.items():
        if key not in PROFILE_KEYS:
            known = ", ".join(PROFILE_KEYS)
            raise ConfigError(source, key, f"unknown profile key (known: {known})")
        try:
            values[PROFILE_KEYS[key]] = _PARSERS[key](raw)
        except (ValueError, TypeError) as err:
            raise ConfigError(source, key, str(err)) from None
    try:
        return Profile(**values)
    except ValidationError as err:
        raise config_error(err, source, rename=_user_key) from None


def _user_key(loc: tuple) -> str | None:
    if not loc:
        return None
    inverse = {model: user for user, model in PROFILE_KEYS.items()}
    return inverse.get(str(loc[0]), str(loc[0]))


BUILTIN = {
    "default": Profile(name="default"),
    "d1b5": profile_from_fields({"delay": "1ms", "rate": "5gbit"}, None, "d1b5"),
    "d5b2": profile_from_fields({"delay": "5ms", "rate": "2gbit"}, None, "d5b2"),
    "d10b1": profile_from_fields({"delay": "10ms", "rate": "1gbit"}, None, "d10b1"),
    "d50b1": profile_from_fields({"delay": "50ms", "rate": "1gbit"}, None, "d50b1"),
}
"""The reference experiment's five network settings."""


def parse_profile(text: str, source: str | None = None) -> Profile:
    """A built-in name or the short form: `10ms/1gbit`, `10ms`, `1gbit`, `10ms/loss=1%`."""
    where = source or "profile"
    if not text.isprintable():  # a newline or tab would split every command it is printed in
        raise ConfigError(where, None, f"{text!r} holds a control character")
    text = text.strip()
    if text in BUILTIN:
        return BUILTIN[text]
    if not text:
        raise ConfigError(where, None, "empty profile")
    fields: dict[str, str] = {}
    for part in text.split("/"):
        part = part.strip()
        key, _, value = part.partition("=")
        if value:
            key = _SHORT_ALIASES.get(key.strip(), key.strip())
        else:
            key, value = _bare_key(part, text, where), part
        if key in fields:
            raise ConfigError(where, key, f"given twice in {text!r}")
        fields[key] = value
    return profile_from_fields(fields, where, name=None)


def _bare_key(part: str, text: str, where: str) -> str:
    for key, parser in (("delay", parse_time_ms), ("rate", parse_rate_bps)):
        try:
            parser(part)
            return key
        except ValueError:
            pass
    names = ", ".join(BUILTIN)
    raise ConfigError(
        where,
        None,
        f"cannot read {part!r} in {text!r}: expected a built-in profile ({names}), "
        "a delay like 10ms, a rate like 1gbit, or key=value",
    )


def load_profile_file(path: str | Path) -> Profile:
    """Read a TOML profile file: name, delay, jitter, loss, duplicate, reorder, rate, limit."""
    path = Path(path)
    data = read_toml(path)
    named = "name" in data
    name = data.pop("name", path.stem)
    if not isinstance(name, str):
        raise ConfigError(str(path), "name", "must be a string")
    try:
        check_name(name)
    except ValueError as error:
        whence = "" if named else f" (without a name it is the file's, {name!r})"
        raise ConfigError(str(path), "name", f"{error}{whence}") from None
    return profile_from_fields(data, str(path), name=name)
