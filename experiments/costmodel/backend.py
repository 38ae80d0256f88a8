"""How a communication backend moves tensors over TCP: what the cost model takes from it.

gloo sends each message over one socket per peer, writing straight into it, and its ring steps
wait for the receiver's notice (two one-way latencies). NCCL's socket transport spreads a
connection over several sockets, stages a send in its own buffer in fixed steps, opens more
than one connection (channel) per ring neighbour for collectives, pipelines its reduce and
broadcast in steps along a chain, and hands out receive credit ahead (one latency per ring
step). The reference's figures, with their sources, are in reference.toml.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backend:
    """One backend's transport, as the cost model sees it."""

    name: str
    sockets: int = 1
    """TCP sockets per connection: each has its own window, initial window and send buffer."""
    p2p_channels: int = 1
    """Connections between two point-to-point peers (a pipeline's activation sends)."""
    collective_channels: int = 1
    """Connections to each ring neighbour of a collective (a reduce, a broadcast)."""
    p2p_buffer_bytes: float = 0.0
    """What the backend holds of a point-to-point send before its sockets do (steps in flight ×
    step size): a send completes once the rest of it fits there and in the sockets."""
    collective_step_bytes: float | None = None
    """The piece a collective's chain forwards at a time (None: the trainer's `ps_chunk_kb`,
    gloo's chained sends)."""
    collective_buffer_bytes: float = 0.0
    """What the backend holds of a collective's send per channel."""
    ring_step_latencies: int = 2
    """One-way latencies a ring collective's step waits."""

    def describe(self) -> dict:
        """Plain dict for JSON."""
        return dict(self.__dict__)


GLOO = Backend("gloo")
"""gloo: one socket, no buffer of its own, ring steps of two latencies, the trainer's chunks."""
NCCL_DEFAULT = Backend("nccl", ring_step_latencies=1)
"""NCCL as the model knew it without a host description: one socket, credit ahead."""
