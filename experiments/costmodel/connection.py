"""A connection that carries many messages one after another, its window carried between them.

`Network.wire_s` times one message on its own: from the window an idle connection has, up to its
cap. A chain of chunks is many messages on one connection, some back to back and some after a
wait for their input, so each starts from the window the ones before it left. Slow start grows
the window by what was acknowledged (`tcp.wire_s`'s doubling per round), up to the cap; a
message that waited is cooled as `tcp.start_window` says (with slow start after idle, one
halving per retransmission timeout); one sent right behind the previous one continues its burst,
so a run of chunks ramps as a single transfer of their sum would.
"""

from __future__ import annotations

import numpy as np

from experiments.costmodel.network import Network
from experiments.costmodel.tcp import path_cap, start_window, wire_s


class Connection:
    """The connection src → dst (arrays of hosts, one per placement) through one sync."""

    def __init__(self, network: Network, src: np.ndarray, dst: np.ndarray):
        """A connection warm when it went idle, long enough ago (since the last iteration)
        to have cooled fully."""
        self.network, self.src, self.dst = network, src, dst
        self.rate = network.bytes_per_s[src, dst]
        self.free = np.full(np.shape(src), -np.inf)  # when its last message's last byte left
        tcp = network.tcp
        if tcp is None:
            return
        self.rtt = network.latency_s[src, dst] + network.latency_s[dst, src]
        self.limit = tcp.window(src, dst)
        self.cap = path_cap(self.limit, self.rate, self.rtt)
        self.window = self.cap.copy()
        self.burst_start = np.zeros(np.shape(src))
        self.burst_window = self.window.copy()
        self.burst_bytes = np.zeros(np.shape(src))

    def send(self, size: float, ready: np.ndarray) -> np.ndarray:
        """Send `size` bytes once they are `ready` and the connection is free: when their last
        byte leaves."""
        begin = np.maximum(ready, self.free)
        tcp = self.network.tcp
        if tcp is None:
            self.free = begin + size / self.rate
            return self.free
        waited = begin > self.free
        idle = begin - self.free  # inf before its first message
        cooled = start_window(
            self.window, tcp.initial_bytes(self.src), tcp.slow_start_after_idle[self.src],
            idle, self.rtt,
        )  # fmt: skip
        self.burst_start = np.where(waited, begin, self.burst_start)
        self.burst_window = np.where(waited, cooled, self.burst_window)
        self.burst_bytes = np.where(waited, 0.0, self.burst_bytes) + size
        in_burst = wire_s(self.burst_bytes, self.rtt, self.rate, self.limit, self.burst_window)
        end = np.maximum(self.burst_start + in_burst, begin + size / self.rate)
        self.window = np.minimum(self.burst_window + self.burst_bytes, self.cap)
        same = self.network.same_machine
        if same is not None:
            end = np.where(same[self.src, self.dst], begin + size / self.rate, end)
        self.free = end
        return end
