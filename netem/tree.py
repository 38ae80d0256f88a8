"""The one tc tree wanlab builds, as plain data, rendered to pyroute2 requests and to `tc` lines.

root  htb 1:  default = the shaped class (profile) or the unshaped class (matrix)
1:10  htb class at the line rate: unshaped (SSH, and unlisted pairs of a matrix)
1:2x  htb class at the shape's rate (rate = ceil), netem leaf 2x: when delay/loss/... is set
u32 filters on 1:  prio 1: TCP source or destination port 22 -> 1:10
                   prio 2: destination address -> its shaped class (matrix rows only)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from netem.pairs import Route
from netem.profile import LINE_RATE_BPS, Profile
from netem.units import format_rate, format_time

ROOT_HANDLE = 0x10000
UNSHAPED_MINOR = 0x10
FIRST_SHAPED_MINOR = 0x20
SSH_PORT = 22
ETH_P_IP = 0x0800
IPPROTO_TCP = 6
SSH_PRIO = 1
ROUTE_PRIO = 2
MTU_BYTES = 1514
BURST_FRAMES = 2

_IP_PROTO_OFFSET = 9
_IP_DST_OFFSET = 16
_TCP_SPORT_OFFSET = 20
_TCP_DPORT_OFFSET = 22


class Match(BaseModel):
    """What a u32 filter matches: IPv4 destination and/or TCP source or destination port."""

    model_config = ConfigDict(frozen=True)

    dst: str | None = None
    tcp_sport: int | None = None
    tcp_dport: int | None = None

    def byte_map(self) -> dict[int, tuple[int, int]]:
        """The match as {offset in the IPv4 header: (value byte, mask byte)}."""
        out: dict[int, tuple[int, int]] = {}
        if self.dst is not None:
            for i, byte in enumerate(ipaddress.IPv4Address(self.dst).packed):
                out[_IP_DST_OFFSET + i] = (byte, 0xFF)
        if self.tcp_sport is not None or self.tcp_dport is not None:
            out[_IP_PROTO_OFFSET] = (IPPROTO_TCP, 0xFF)
        for offset, port in (
            (_TCP_SPORT_OFFSET, self.tcp_sport),
            (_TCP_DPORT_OFFSET, self.tcp_dport),
        ):
            if port is not None:
                out[offset], out[offset + 1] = (port >> 8, 0xFF), (port & 0xFF, 0xFF)
        return out

    @classmethod
    def from_byte_map(cls, bytes_: dict[int, tuple[int, int]]) -> Match | None:
        """The inverse of byte_map; None for a match wanlab does not build."""
        for candidate in _candidates(bytes_):
            if candidate.byte_map() == bytes_:
                return candidate
        return None

    def keys(self) -> list[str]:
        """pyroute2 u32 keys (`value/mask+offset`, 32-bit words)."""
        words: dict[int, tuple[int, int]] = {}
        for offset, (value, mask) in self.byte_map().items():
            base, shift = offset - offset % 4, 8 * (3 - offset % 4)
            word_value, word_mask = words.get(base, (0, 0))
            words[base] = (word_value | value << shift, word_mask | mask << shift)
        return [f"0x{v:08x}/0x{m:08x}+{off}" for off, (v, m) in sorted(words.items())]

    def tc_words(self) -> str:
        """The same match in `tc filter ... u32` syntax."""
        words = []
        if self.dst is not None:
            words.append(f"match ip dst {self.dst}/32")
        if self.tcp_sport is not None or self.tcp_dport is not None:
            words.append(f"match ip protocol {IPPROTO_TCP} 0xff")
        if self.tcp_sport is not None:
            words.append(f"match ip sport {self.tcp_sport} 0xffff")
        if self.tcp_dport is not None:
            words.append(f"match ip dport {self.tcp_dport} 0xffff")
        return " ".join(words)


def _candidates(bytes_: dict[int, tuple[int, int]]) -> list[Match]:
    def field(offset: int, size: int) -> int | None:
        if all(bytes_.get(offset + i, (0, 0))[1] == 0xFF for i in range(size)):
            return int.from_bytes(bytes(bytes_[offset + i][0] for i in range(size)), "big")
        return None

    dst_int = field(_IP_DST_OFFSET, 4)
    dst = None if dst_int is None else str(ipaddress.IPv4Address(dst_int))
    return [
        Match(dst=dst, tcp_sport=field(_TCP_SPORT_OFFSET, 2), tcp_dport=field(_TCP_DPORT_OFFSET, 2))
    ]


class ShapedClass(BaseModel):
    """An HTB class at the shape's rate, with a netem leaf when the shape needs one."""

    model_config = ConfigDict(frozen=True)

    minor: int
    shape: Profile


class Filter(BaseModel):
    """A u32 filter on the root sending matching packets to class 1:`minor`."""

    model_config = ConfigDict(frozen=True)

    prio: int
    match: Match
    minor: int


class Tree(BaseModel):
    """Everything wanlab puts on one interface's egress."""

    model_config = ConfigDict(frozen=True)

    default_minor: int
    unshaped_class: bool
    classes: tuple[ShapedClass, ...]
    filters: tuple[Filter, ...]

    @property
    def needs_netem(self) -> bool:
        """True when some class has a netem leaf."""
        return any(cls.shape.needs_netem for cls in self.classes)

    def describe(self) -> dict[str, Any]:
        """A short human/JSON view: the profile, or the per-destination routes of a matrix row."""
        ssh_exempt = any(f.minor == UNSHAPED_MINOR and f.prio == SSH_PRIO for f in self.filters)
        by_minor = {cls.minor: cls.shape for cls in self.classes}
        if self.default_minor != UNSHAPED_MINOR:
            return {
                "kind": "profile",
                "profile": by_minor[self.default_minor].short(),
                "ssh_exempt": ssh_exempt,
            }
        routes = {
            f.match.dst: by_minor[f.minor].short() for f in self.filters if f.prio == ROUTE_PRIO
        }
        return {"kind": "pairs", "routes": routes, "ssh_exempt": ssh_exempt}


def _ssh_filters() -> tuple[Filter, ...]:
    return (
        Filter(prio=SSH_PRIO, match=Match(tcp_sport=SSH_PORT), minor=UNSHAPED_MINOR),
        Filter(prio=SSH_PRIO, match=Match(tcp_dport=SSH_PORT), minor=UNSHAPED_MINOR),
    )


def tree_for_profile(profile: Profile, exempt_ssh: bool = True) -> Tree:
    """All egress shaped by `profile` (SSH exempt unless asked otherwise)."""
    if profile.is_default:
        raise ValueError("the default profile shapes nothing: reset instead")
    shaped = ShapedClass(minor=FIRST_SHAPED_MINOR, shape=profile.shape())
    return Tree(
        default_minor=FIRST_SHAPED_MINOR,
        unshaped_class=exempt_ssh,
        classes=(shaped,),
        filters=_ssh_filters() if exempt_ssh else (),
    )


def tree_for_routes(routes: Sequence[Route], exempt_ssh: bool = True) -> Tree:
    """A matrix row: one class per distinct shape, destination filters, the rest unshaped."""
    if not routes:
        raise ValueError("this host's matrix row is empty: reset instead")
    minors: dict[Profile, int] = {}
    filters = list(_ssh_filters()) if exempt_ssh else []
    for route in routes:
        shape = route.shape.shape()
        minor = minors.setdefault(shape, FIRST_SHAPED_MINOR + len(minors))
        filters.append(Filter(prio=ROUTE_PRIO, match=Match(dst=route.address), minor=minor))
    classes = tuple(ShapedClass(minor=m, shape=s) for s, m in minors.items())
    return Tree(
        default_minor=UNSHAPED_MINOR,
        unshaped_class=True,
        classes=classes,
        filters=tuple(filters),
    )


def less_forwarding_delay(tree: Tree, forwarding_ms: Callable[[float], float]) -> Tree:
    """The tree a forwarding box builds so that paths through it see the tree's delays: every
    netem delay d less the box's own forwarding latency at that delay, `forwarding_ms(d)` (never
    below zero), queue limits kept as sized for the full delay. A class the box's latency
    already delays enough, with nothing else for netem to do, gets no netem (nor its limit)."""
    classes = []
    for cls in tree.classes:
        shape = cls.shape
        if shape.delay_ms > 0:
            delay = round(max(0.0, shape.delay_ms - forwarding_ms(shape.delay_ms)), 3)
            less = shape.model_copy(update={"delay_ms": delay})
            limit = shape.queue_limit if less.needs_netem else None
            shape = less.model_copy(update={"limit": limit})
        classes.append(cls.model_copy(update={"shape": shape}))
    return tree.model_copy(update={"classes": tuple(classes)})


def burst_bytes(rate_bps: int) -> int:
    """HTB burst: 4 ms at the rate (rate/250 keeps TBF/HTB accurate at 1 gbit), at least two
    full frames. A fixed floor in bytes would be a longer time the slower the rate: 16 kB is
    116 ms at 1.1 Mbit/s, enough to let a whole scaled activation or gradient chunk through
    a scale model's link unshaped after an idle."""
    return max(BURST_FRAMES * MTU_BYTES, rate_bps // 8 // 250)


def quantum_bytes(rate_bps: int) -> int:
    """HTB quantum within the kernel's range (one MTU to 200 kB)."""
    return max(MTU_BYTES, min(200_000, rate_bps // 8 // 10))


def class_rate_bps(shape: Profile | None) -> int:
    """The rate (and ceil) of a class: the shape's, or the line rate when unshaped."""
    return LINE_RATE_BPS if shape is None or shape.rate_bps is None else shape.rate_bps


def _classes(tree: Tree) -> list[tuple[int, Profile | None]]:
    unshaped = [(UNSHAPED_MINOR, None)] if tree.unshaped_class else []
    return unshaped + [(cls.minor, cls.shape) for cls in tree.classes]


def netem_kwargs(shape: Profile) -> dict[str, Any]:
    """pyroute2 netem options (delays in microseconds, limit always given)."""
    kwargs: dict[str, Any] = {
        "delay": round(shape.delay_ms * 1000),
        "jitter": round(shape.jitter_ms * 1000),
        "loss": shape.loss_pct,
        "duplicate": shape.duplicate_pct,
        "limit": shape.queue_limit,
    }
    if shape.reorder_pct:
        kwargs["prob_reorder"] = shape.reorder_pct
    return kwargs


def requests(tree: Tree) -> list[tuple[str, str, dict[str, Any]]]:
    """The tree as pyroute2 `tc()` calls: (command, kind, kwargs), in the order to send them."""
    out: list[tuple[str, str, dict[str, Any]]] = [
        ("replace", "htb", {"handle": ROOT_HANDLE, "default": tree.default_minor})
    ]
    for minor, shape in _classes(tree):
        rate_bytes = class_rate_bps(shape) // 8
        burst = burst_bytes(class_rate_bps(shape))
        kwargs = {
            "handle": ROOT_HANDLE | minor,
            "parent": ROOT_HANDLE,
            "rate": rate_bytes,
            "ceil": rate_bytes,
            "burst": burst,
            "cburst": burst,
            "quantum": quantum_bytes(class_rate_bps(shape)),
        }
        out.append(("replace-class", "htb", kwargs))
    for cls in tree.classes:
        if cls.shape.needs_netem:
            kwargs = {"handle": cls.minor << 16, "parent": ROOT_HANDLE | cls.minor}
            out.append(("replace", "netem", kwargs | netem_kwargs(cls.shape)))
    for flt in tree.filters:
        kwargs = {
            "parent": ROOT_HANDLE,
            "prio": flt.prio,
            "protocol": ETH_P_IP,
            "target": ROOT_HANDLE | flt.minor,
            "keys": flt.match.keys(),
        }
        out.append(("add-filter", "u32", kwargs))
    return out


def tc_commands(tree: Tree, ifname: str) -> list[str]:
    """The same tree as `tc` command lines, for --dry-run."""
    dev = f"tc {{}} dev {ifname}"
    lines = [dev.format("qdisc replace") + f" root handle 1: htb default {tree.default_minor:x}"]
    for minor, shape in _classes(tree):
        rate = class_rate_bps(shape)
        burst = burst_bytes(rate)
        lines.append(
            dev.format("class replace")
            + f" parent 1: classid 1:{minor:x} htb"
            + f" rate {format_rate(rate)} ceil {format_rate(rate)}"
            + f" burst {burst} cburst {burst} quantum {quantum_bytes(rate)}"
        )
    for cls in tree.classes:
        if cls.shape.needs_netem:
            lines.append(
                dev.format("qdisc replace")
                + f" parent 1:{cls.minor:x} handle {cls.minor:x}: netem {_netem_words(cls.shape)}"
            )
    for flt in tree.filters:
        lines.append(
            dev.format("filter add")
            + f" parent 1: protocol ip prio {flt.prio} u32 {flt.match.tc_words()}"
            + f" flowid 1:{flt.minor:x}"
        )
    return lines


def _netem_words(shape: Profile) -> str:
    words = [f"delay {format_time(shape.delay_ms)}"]
    if shape.jitter_ms:
        words.append(format_time(shape.jitter_ms))
    for word, value in (
        ("loss", shape.loss_pct),
        ("duplicate", shape.duplicate_pct),
        ("reorder", shape.reorder_pct),
    ):
        if value:
            words.append(f"{word} {value:g}%")
    words.append(f"limit {shape.queue_limit}")
    return " ".join(words)
