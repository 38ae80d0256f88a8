"""The network as the cost model sees it: per ordered host pair a latency α and a bandwidth β.

A profile's delay is one-way on the sender's egress, so the hop src → dst has
α = native latency + the sender's delay and β = min(native rate, the data share of the sender's
shaped rate). The shaper counts whole frames, headers included, while the native rate is what
the probe measured: payload.
Shaping is on egress only: a host's ingress runs at its native rate. Loss, duplication and
reordering are not modelled (the prediction assumes a clean, if slow, link).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from experiments.costmodel.tcp import (
    DEFAULT_MTU,
    TcpSide,
    path_cap,
    payload_share,
    start_window,
    wire_s,
)
from netem.pairs import PairMatrix
from netem.profile import Profile

DEFAULT_NATIVE_LATENCY_S = 50e-6
"""One-way latency of an unshaped hop when nothing better is known (a LAN: 0.05 ms)."""
DEFAULT_NATIVE_RATE_BPS = 10e9
"""Line rate of an unshaped host when nothing better is known: 10 Gbit/s."""
TCP_PAYLOAD_SHARE = payload_share(DEFAULT_MTU)
"""Share of a shaped rate left for data at a 1,500-byte MTU: the shaper counts whole Ethernet
frames (1,514 B), of which TCP carries 1,448 B (less IPv4 20 B, TCP 20 B, timestamps 12 B)."""
LOOPBACK_BYTES_PER_S = 1e12
"""A host talking to itself: no latency, practically unlimited bandwidth."""
MACHINE_LATENCY_S = 10e-6
"""One-way latency between two ranks on one machine (two GPUs of one host): 10 µs."""
MACHINE_BYTES_PER_S = 50e9
"""Rate between two ranks on one machine: 50 GB/s, two V100s of a p3.16xlarge over their GPU
interconnect; a shaped profile does not touch it, and no TCP window limits it."""


@dataclass(frozen=True)
class Native:
    """What the fleet does with no shaping: one-way latency (s) and line rate (bit/s)."""

    latency_s: float = DEFAULT_NATIVE_LATENCY_S
    rate_bps: float = DEFAULT_NATIVE_RATE_BPS
    mtu: int = DEFAULT_MTU
    """The hosts' interface MTU: it sets TCP's segment (MSS), so the initial window in bytes and
    the share of a shaped rate left for data."""


DEFAULT_NATIVE = Native()


@dataclass(frozen=True)
class Network:
    """Per ordered host pair: latency_s[i, j] and bytes_per_s[i, j]; each host's ingress rate;
    and the hosts' TCP settings where known (None: every transfer at the ideal A/β)."""

    latency_s: np.ndarray
    bytes_per_s: np.ndarray
    ingress_bytes_per_s: np.ndarray
    tcp: TcpSide | None = None
    same_machine: np.ndarray | None = None
    """[i, j] True where ranks i and j share a machine (their transfers skip TCP); None: each
    rank on its own."""

    @property
    def n_hosts(self) -> int:
        """Hosts the network spans."""
        return len(self.ingress_bytes_per_s)

    def wire_s(
        self, size, src: np.ndarray, dst: np.ndarray, idle_s=np.inf, rate_share: float = 1.0
    ) -> np.ndarray:
        """Seconds `size` bytes take to leave src for dst (the latency comes on top), on a
        connection idle for `idle_s` (its first use in an iteration: idle since the last one),
        with `rate_share` of the sender's rate (connections sharing its egress)."""
        rate = self.bytes_per_s[src, dst] * rate_share
        if self.tcp is None:
            return size / rate
        rtt = self.latency_s[src, dst] + self.latency_s[dst, src]
        window = self.tcp.window(src, dst)
        cap = path_cap(window, rate, rtt)
        initial = self.tcp.initial_bytes(src)
        start = start_window(cap, initial, self.tcp.slow_start_after_idle[src], idle_s, rtt)
        over_tcp = wire_s(size, rtt, rate, window, start)
        if self.same_machine is None:
            return over_tcp
        return np.where(self.same_machine[src, dst], size / rate, over_tcp)

    def buffered_bytes(self, src: np.ndarray) -> np.ndarray | float:
        """The most of a message from `src` still unsent when its send completes (0 when the
        hosts' TCP is unknown: a send completes as its last byte leaves)."""
        return 0.0 if self.tcp is None else self.tcp.buffered_bytes(src)

    def with_tcp(self, tcp: TcpSide | None) -> Network:
        """The same network with these hosts' TCP settings."""
        return replace(self, tcp=tcp)

    def for_collectives(self) -> Network:
        """The same network as a collective's links see it (the backend's channels)."""
        return self if self.tcp is None else replace(self, tcp=self.tcp.for_collectives())

    def on_machines(self, machine_of: Sequence[str]) -> Network:
        """The same network where ranks i and j with machine_of[i] == machine_of[j] share a
        machine: they reach each other at `MACHINE_LATENCY_S` and `MACHINE_BYTES_PER_S`."""
        names = np.array(machine_of)
        shared = names[:, np.newaxis] == names[np.newaxis, :]
        inside = shared & ~np.eye(len(names), dtype=bool)
        return replace(
            self,
            latency_s=np.where(inside, MACHINE_LATENCY_S, self.latency_s),
            bytes_per_s=np.where(inside, MACHINE_BYTES_PER_S, self.bytes_per_s),
            same_machine=shared,
        )


def _egress(native: Native, shape: Profile | None) -> tuple[float, float]:
    """(α in s, β in bytes/s) of a hop whose sender's egress has `shape`."""
    latency = native.latency_s + (shape.delay_ms / 1000 if shape else 0.0)
    if shape is None or shape.rate_bps is None:
        return latency, native.rate_bps / 8
    return latency, min(shape.rate_bps * payload_share(native.mtu), native.rate_bps) / 8


def _with_loopback(latency: np.ndarray, rate: np.ndarray, native: Native) -> Network:
    np.fill_diagonal(latency, 0.0)
    np.fill_diagonal(rate, LOOPBACK_BYTES_PER_S)
    ingress = np.full(len(latency), native.rate_bps / 8)
    return Network(latency_s=latency, bytes_per_s=rate, ingress_bytes_per_s=ingress)


def uniform_network(n_hosts: int, profile: Profile, native: Native = DEFAULT_NATIVE) -> Network:
    """Every host's egress shaped with `profile` (`default` leaves the native network)."""
    latency, rate = _egress(native, None if profile.is_default else profile)
    return _with_loopback(
        np.full((n_hosts, n_hosts), latency), np.full((n_hosts, n_hosts), rate), native
    )


def pair_network(
    keys: Sequence[str], matrix: PairMatrix, native: Native = DEFAULT_NATIVE
) -> Network:
    """Host i → host j shaped by the matrix's link (keys[i], keys[j]); unlisted pairs unshaped.

    `keys` holds each host's name in the matrix: its host name, or its label's value when the
    matrix is keyed by a label such as the region.
    """
    names = sorted(set(keys))
    index = {name: i for i, name in enumerate(names)}
    base_latency, base_rate = _egress(native, None)
    latency = np.full((len(names), len(names)), base_latency)
    rate = np.full((len(names), len(names)), base_rate)
    for link in matrix.links:
        if link.src in index and link.dst in index:
            a, b = index[link.src], index[link.dst]
            latency[a, b], rate[a, b] = _egress(native, link.shape)
    host_index = np.array([index[key] for key in keys])
    grid = np.ix_(host_index, host_index)
    return _with_loopback(latency[grid], rate[grid], native)
