"""gloo's dissemination barrier, played out with gloo's send/receive rendezvous.

gloo's TCP transport holds a send until the receiver has posted its receive and said so: the
receiver's "ready" notice crosses the link back before the data goes out. In round k of the
barrier (d = 2^k) rank r posts a receive from r − d and a send to r + d, both at t_r, and
leaves the round when both are done:

- the message from r − d leaves at max(t_{r−d}, t_r + α(r → r−d)), arrives α(r−d → r) later;
- its own send to r + d is handed over at max(t_r, t_{r+d} + α(r+d → r)).

With every rank entering together a round costs a round trip (2α), not one hop: ⌈log₂ W⌉
round trips in all. Ranks that leave at different times start the next phase skewed.
"""

from __future__ import annotations

import math

import numpy as np

ALGORITHM = "dissemination"
"""The barrier this module plays (gloo's: gloo/barrier.cc)."""


def rounds(world: int) -> int:
    """Rounds of the dissemination barrier among `world` ranks."""
    return math.ceil(math.log2(world)) if world > 1 else 0


def dissemination_barrier(
    latency_s: np.ndarray, host_of: np.ndarray, entry: np.ndarray
) -> np.ndarray:
    """When each rank leaves the barrier; `entry` and `host_of` have shape (K, W), rank order."""
    world = entry.shape[1]
    times = entry
    ranks = np.arange(world)
    for k in range(rounds(world)):
        before, after = np.roll(ranks, 1 << k), np.roll(ranks, -(1 << k))
        from_before = latency_s[host_of[:, before], host_of]
        to_before = latency_s[host_of, host_of[:, before]]
        from_after = latency_s[host_of[:, after], host_of]
        received = np.maximum(times[:, before], times + to_before) + from_before
        sent = np.maximum(times, times[:, after] + from_after)
        times = np.maximum(received, sent)
    return times
