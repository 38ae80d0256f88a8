"""How long TCP takes to move a message: the window dynamics the ideal α + A/β leaves out.

A connection's congestion window starts at the initial window (the route's `initcwnd` segments)
and doubles every round trip (slow start) until it reaches the most the path can carry: the
bandwidth-delay product β·R, or the window the socket buffers allow, whichever is smaller. The
buffers allow the receiver's `tcp_rmem` maximum times the share of it the receiver's kernel
offers as window, and no more than the sender's `tcp_wmem` maximum in flight. That share is
what `tcp_adv_win_scale` leaves (1 − 2^−scale) on kernels before 6.6; from 6.6 it is the
payload's share of the packets' true size on the receiving path, which the probe measures
(`receive_share`: 0.72 on the local fleet, whose interfaces receive one segment per packet).
Below β·R the window, not the rate, sets the pace: W/R. With `tcp_slow_start_after_idle` a
connection idle for an RTO (≈ R + 200 ms on Linux) halves its window for every RTO it waited,
down to the initial window; without it the window stays.

A send completes once what is left of it fits in the backend's own buffer and the sockets' send
buffers (a process waiting for its send waits for the rest only). A send buffer holds its size
in payload: a bulk sender's packets carry it in page fragments, which the kernel counts at
their size (a blocked sender's queue held 99 % of its buffer on the local fleet, `SIOCOUTQ`
against `SO_SNDBUF`). A backend that spreads a
connection over k sockets gets k windows and k send buffers (`sockets`). Losses are not
modelled: the path is clean, if slow. With an unlimited window and a warm connection this is
the ideal A/β on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from experiments.costmodel.backend import Backend
from netem.probe import adv_win_share

DEFAULT_MTU = 1500
"""An interface's MTU where nothing else is known (Ethernet's)."""
SEGMENT_HEADER_BYTES = 52
"""What a segment carries besides payload inside the MTU: IPv4 20 B, TCP 20 B and the
timestamps option 12 B (on by default: Linux `tcp_timestamps = 1`; `tcp_mtu_to_mss` takes the
options' length off)."""
FRAME_HEADER_BYTES = 14
"""The Ethernet header a shaper counts on top of the MTU (netem's rate counts
`qdisc_pkt_len`: MAC, IP and TCP headers of every segment; no preamble or FCS)."""


def mss_of(mtu: int) -> int:
    """Payload per segment at `mtu`: 1,448 B at 1,500, 8,949 B at 9,001."""
    return mtu - SEGMENT_HEADER_BYTES


def payload_share(mtu: int) -> float:
    """Share of a shaped rate left for data at `mtu`: payload over the frame the shaper counts
    (1,448/1,514 at 1,500; 8,949/9,015 at 9,001)."""
    return mss_of(mtu) / (mtu + FRAME_HEADER_BYTES)


MSS_BYTES = mss_of(DEFAULT_MTU)
"""Payload per segment at a 1,500-byte MTU with timestamps."""
RTO_MIN_S = 0.2
"""Linux's smallest retransmission timeout; an idle connection's RTO is about R + this."""


@dataclass(frozen=True)
class TcpSide:
    """The TCP settings of each host that matter to a transfer (arrays, one entry per host)."""

    receive_window_bytes: np.ndarray
    send_buffer_bytes: np.ndarray
    initial_window_bytes: np.ndarray
    slow_start_after_idle: np.ndarray
    sockets: int = 1
    backend_buffer_bytes: float = 0.0
    """What a backend holds of a send in its own buffer before the sockets take it (NCCL's
    staging buffer; gloo writes straight into the socket)."""
    collective_sockets: int | None = None
    """Sockets of a collective's link (its channels' together); None: as `sockets`."""
    collective_buffer_bytes: float | None = None
    """The backend's buffer of a collective's link (its channels' together); None: as
    `backend_buffer_bytes`."""

    def for_collectives(self) -> TcpSide:
        """The same hosts as a collective's links see them: its sockets and buffers."""
        return replace(
            self,
            sockets=self.collective_sockets or self.sockets,
            backend_buffer_bytes=(
                self.backend_buffer_bytes
                if self.collective_buffer_bytes is None
                else self.collective_buffer_bytes
            ),
        )

    def buffered_bytes(self, src: np.ndarray) -> np.ndarray:
        """The most of a message still unsent when its send completes: the backend's buffer
        and the payload the sockets' send buffers hold."""
        sockets = self.send_buffer_bytes[src] * self.sockets
        return sockets + self.backend_buffer_bytes

    def initial_bytes(self, src: np.ndarray) -> np.ndarray:
        """A connection's initial window: each of its sockets starts from its own."""
        return self.initial_window_bytes[src] * self.sockets

    def window(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """The most a connection src → dst may have in flight (all its sockets together)."""
        one = np.minimum(self.receive_window_bytes[dst], self.send_buffer_bytes[src])
        return one * self.sockets


def receive_window(rmem_max: float, adv_win_scale: int, share: float | None = None) -> float:
    """The window a receive buffer of `rmem_max` bytes offers: its measured `share` where the
    probe gave one, else what `adv_win_scale` leaves."""
    return rmem_max * (share or adv_win_share(adv_win_scale))


def tcp_side(
    settings: list[dict | None],
    sockets: int = 1,
    backend_buffer_bytes: float = 0.0,
    mss: int = MSS_BYTES,
    backend: Backend | None = None,
) -> TcpSide | None:
    """Per-host TCP from recorded or preset settings (`netem.tcp.TcpSettings` fields), over
    `sockets` sockets per connection behind a backend buffer (or `backend`'s: its point-to-point
    and collective links), segments of `mss` bytes; None when no host's are known (the ideal
    network)."""
    if not any(settings):
        return None
    unknown = float("inf")
    receive, send, initial, restart = [], [], [], []
    for one in settings:
        one = one or {}
        rmem, wmem = one.get("rmem"), one.get("wmem")
        share, scale = one.get("receive_share"), one.get("adv_win_scale", 1)
        receive.append(receive_window(rmem[2], scale, share) if rmem else unknown)
        send.append(wmem[2] if wmem else unknown)
        initial.append((one.get("initcwnd") or 10) * mss)
        restart.append(bool(one.get("slow_start_after_idle", False)))
    side = TcpSide(
        np.array(receive), np.array(send), np.array(initial), np.array(restart), sockets,
        backend_buffer_bytes,
    )  # fmt: skip
    if backend is None:
        return side
    return replace(
        side,
        sockets=backend.sockets * backend.p2p_channels,
        backend_buffer_bytes=backend.p2p_buffer_bytes * backend.p2p_channels,
        collective_sockets=backend.sockets * backend.collective_channels,
        collective_buffer_bytes=backend.collective_buffer_bytes * backend.collective_channels,
    )


def path_cap(window: np.ndarray, rate: np.ndarray, rtt_s: np.ndarray) -> np.ndarray:
    """The most worth having in flight: the window, or the bandwidth-delay product β·R."""
    return np.maximum(np.minimum(window, rate * rtt_s), MSS_BYTES)


def start_window(
    cap: np.ndarray,
    initial: np.ndarray,
    restart: np.ndarray,
    idle_s: np.ndarray,
    rtt_s: np.ndarray,
) -> np.ndarray:
    """The window a warm connection (window `cap`) has after `idle_s` without sending."""
    rto = rtt_s + RTO_MIN_S
    halvings = np.floor(np.maximum(idle_s, 0.0) / rto)
    cooled = np.maximum(initial, cap / 2.0 ** np.minimum(halvings, 60))
    return np.where(restart, np.minimum(cooled, cap), cap)


def wire_s(
    size: float, rtt_s: np.ndarray, rate: np.ndarray, window: np.ndarray, start: np.ndarray
) -> np.ndarray:
    """Seconds from a message's first byte leaving to its last byte leaving, starting with a
    congestion window of `start` bytes: slow-start rounds of R each until the window reaches
    its cap min(window, β·R), then the rest at min(β, window/R)."""
    cap = path_cap(window, rate, rtt_s)
    start = np.minimum(np.maximum(start, MSS_BYTES), cap)
    steady = np.minimum(rate, window / np.maximum(rtt_s, 1e-12))
    rounds_to_cap = np.ceil(np.log2(cap / start) - 1e-9).clip(min=0)
    slow_start_bytes = start * (2.0**rounds_to_cap - 1)
    # a message that ends during slow start: k rounds, the last one's bytes at line rate
    k = np.ceil(np.log2(size / start + 1) - 1e-9).clip(min=1)
    before_last = start * (2.0 ** (k - 1) - 1)
    within = (k - 1) * rtt_s + (size - before_last) / rate
    beyond = rounds_to_cap * rtt_s + (size - slow_start_bytes) / steady
    return np.where(size <= slow_start_bytes, within, beyond)
