"""Pair matrices for geo settings: each ordered host pair gets its own delay and rate.

A pair-matrix file (TOML) names pairs by host name (`by = "host"`, the default) or by the value of
a host label such as `by = "region"`:

    by = "region"

    [[link]]
    src = "us-west"
    dst = "us-east"
    delay = "67ms"
    rate = "790mbit"          # both ways unless `both_ways = false`

    [[link]]
    src = "us-west"           # src == dst: between different hosts of the same region
    dst = "us-west"
    delay = "10ms"
    rate = "2gbit"

Pairs that no link names stay unshaped.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from inventory.errors import ConfigError
from inventory.tomlfile import read_toml
from netem.profile import Profile, profile_from_fields

_LINK_KEYS = {"src", "dst", "both_ways"}


class Addressable(Protocol):
    """What the matrix needs of a host: inventory.models.Host satisfies it."""

    name: str
    address: str
    labels: dict[str, str]


class Link(BaseModel):
    """One directed pair: traffic from `src` to `dst` is shaped with `shape`."""

    model_config = ConfigDict(frozen=True)

    src: str
    dst: str
    shape: Profile


class Route(BaseModel):
    """One row entry of a host: packets to `address` are shaped with `shape`."""

    model_config = ConfigDict(frozen=True)

    dst: str
    address: str
    shape: Profile


class PairMatrix(BaseModel):
    """Directed links keyed by host name or by a label's value."""

    model_config = ConfigDict(frozen=True)

    by: str = "host"
    links: tuple[Link, ...]
    source: str | None = None

    def key_of(self, host: Addressable) -> str:
        """The name this matrix uses for `host`."""
        if self.by == "host":
            return host.name
        if self.by not in host.labels:
            raise ConfigError(self.source, "by", f"host {host.name!r} has no label {self.by!r}")
        return host.labels[self.by]

    def resolve(self, hosts: Sequence[Addressable]) -> dict[str, list[Route]]:
        """Each host's row: the routes its egress shapes, ordered by destination address."""
        keys = {host.name: self.key_of(host) for host in hosts}
        known = set(keys.values())
        for link in self.links:
            for end, value in (("src", link.src), ("dst", link.dst)):
                if value not in known:
                    what = "host" if self.by == "host" else f"{self.by!r} label value"
                    raise ConfigError(self.source, f"link {end}", f"no {what} {value!r}")
        table = {(link.src, link.dst): link.shape for link in self.links}
        rows: dict[str, list[Route]] = {}
        for src in hosts:
            row = []
            for dst in hosts:
                shape = table.get((keys[src.name], keys[dst.name]))
                if dst.name != src.name and shape is not None and not shape.is_default:
                    row.append(Route(dst=dst.name, address=_ipv4(dst, self.source), shape=shape))
            rows[src.name] = sorted(row, key=lambda r: ipaddress.IPv4Address(r.address))
        return rows


def _ipv4(host: Addressable, source: str | None) -> str:
    """The host's address as IPv4: the shaper matches a destination by its IPv4 address."""
    try:
        return str(ipaddress.IPv4Address(host.address))
    except ValueError:
        raise ConfigError(
            source,
            f"host {host.name}",
            f"is addressed as {host.address!r}; a pair matrix matches destinations by their IPv4 "
            "address, so give the host's address as one",
        ) from None


def pair_matrix_from_data(data: dict[str, Any], source: str | None) -> PairMatrix:
    """Validate a parsed matrix document (see the module docstring for its shape)."""
    unknown = set(data) - {"by", "link"}
    if unknown:
        raise ConfigError(source, sorted(unknown)[0], "unknown key (known: by, link)")
    by = data.get("by", "host")
    if not isinstance(by, str) or not by:
        raise ConfigError(source, "by", "must be `host` or a label name")
    raw_links = data.get("link")
    if not isinstance(raw_links, list) or not raw_links:
        raise ConfigError(source, "link", "a matrix needs at least one [[link]] table")
    links: dict[tuple[str, str], Link] = {}
    for number, raw in enumerate(raw_links, start=1):
        where = f"link #{number}"
        if not isinstance(raw, dict):
            raise ConfigError(source, where, "must be a table")
        for end in ("src", "dst"):
            if not isinstance(raw.get(end), str) or not raw[end]:
                raise ConfigError(source, f"{where} {end}", "missing or not a string")
        if by == "host" and raw["src"] == raw["dst"]:
            raise ConfigError(source, where, f"src and dst are the same host {raw['src']!r}")
        both_ways = raw.get("both_ways", True)
        if not isinstance(both_ways, bool):
            raise ConfigError(source, f"{where} both_ways", "must be true or false")
        fields = {k: v for k, v in raw.items() if k not in _LINK_KEYS}
        if not fields:
            raise ConfigError(source, where, "gives no delay or rate")
        shape = profile_from_fields(fields, f"{source or 'matrix'} {where}").shape()
        pairs = {(raw["src"], raw["dst"])}
        if both_ways:
            pairs.add((raw["dst"], raw["src"]))
        for pair in sorted(pairs):
            if pair in links and links[pair].shape != shape:
                raise ConfigError(source, where, f"{pair[0]} -> {pair[1]} is given twice")
            links[pair] = Link(src=pair[0], dst=pair[1], shape=shape)
    return PairMatrix(by=by, links=tuple(links.values()), source=source)


def load_pair_matrix_file(path: str | Path) -> PairMatrix:
    """Read and validate a TOML matrix file."""
    path = Path(path)
    data = read_toml(path)
    return pair_matrix_from_data(data, str(path))


def is_pair_matrix_document(path: str | Path) -> bool:
    """True when a TOML file holds a matrix (has [[link]] tables) rather than one profile."""
    try:
        return "link" in read_toml(Path(path))
    except ConfigError:  # the profile loader then says what is wrong with the file
        return False
