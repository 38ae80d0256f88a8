"""What the collectives cost: each DP mode's gradient sync, and the rings inside a stage.

Messages go as gloo sends them (see `experiments.costmodel.analytic`).

Each stage's replicas average gradients of N bytes:
- `ps` (the reference system's): bucket after bucket (one per tensor unless a bucket size is
  set), a reduce to replica 0 pipelined in chunks of c along the chain of replicas, then a
  broadcast back along it; a bucket of B bytes costs per phase its first chunk through the
  D − 1 hops (c/β + α each) and the rest at the slowest hop's rate: with equal links
  2·(B + (D − 2)·c)/β + 2·(D − 1)·α. Only the first bucket waits for the receives' notice (α):
  a bucket's receives are posted as a rank starts it, and a rank's notice to the next one
  follows the previous bucket's broadcast to it, which that one waits for anyway.
- `sharded-ps`: every bucket at once, owned round-robin, each along the chain rotated to its
  owner, played chunk by chunk (`_sharded_chains`): host r sends toward r − 1 in the reduce
  and toward r + 1 in the broadcast, on one connection each whose window carries from chunk to
  chunk (`connection.py`). A link starts at once with the buckets it is the tail of and the
  other chains' chunks come in while it is busy, so with equal links and balanced buckets a
  phase takes about the (D − 1)/D·N each host sends; the busiest host sets the pace, and a
  replica broadcasts once its own reduce is done, while others may still be reducing.
- `ps-star`: the stage's replica-0 host is the server. Each other replica pushes N to it once the
  server's receive is heard (α + N/β over its own egress, all at once; the server's native
  ingress rate bounds their sum), then the server sends the average back to all D − 1 over
  its one egress: (D − 1)·N/β, + α. With an ingress as slow as the egress and everyone done
  together this is 2·(α + (D − 1)·N/β) + α.
- `allreduce`: a ring, 2·(D − 1) steps of N/D bytes over the slowest ring hop:
  2·(D − 1)·k·α + 2·(D − 1)/D·N/β, where a step waits k one-way latencies: 2 on gloo (each
  segment goes once the receiver's notice that it posted the receive has arrived), 1 on NCCL.
  Every ring collective below (tensor all-reduces, fsdp gathers) steps the same way.
- `fsdp` (trainer/fullyshard.py): each block, and the rest of the stage as one more unit, is
  all-gathered over the replicas' ring ((D − 1) steps, α each, and (D − 1)/D of its bytes over
  the slowest hop) before every forward, and the blocks once more for the backwards; those
  gathers hold the stage as its compute does (the root's is spread over the micro-batches, as
  is the backwards' one). Once every replica is done, one reduce-scatter of the same size.

Under tensor parallelism of degree T a stage's T shards sit on consecutive hosts (rank order)
and compute together: each of a micro-batch's activation all-reduces (workload.py counts them)
is a ring over those hosts, 2·(T − 1) steps of A/T bytes over its slowest hop, and holds the
stage as its compute does.
"""

from __future__ import annotations

import heapq

import numpy as np

from experiments.costmodel.connection import Connection
from experiments.costmodel.network import Network
from experiments.costmodel.workload import Workload
from trainer.layout import Layout

SHARDED_PIECES = 256
"""`sharded-ps` is played in at most about this many pieces per stage: where a stage has more
chunks, whole chunks are merged into pieces (a chain's fill then counts the larger piece, but
it hides behind the links' other chains: `seed-gpt3xl.toml` with `sharded-ps`, d50b1 DP 4,
predicts 49.63 s at 64 and 1,024 pieces and unmerged alike), and a prediction takes about a
second, not ten."""


def tensor_offsets(layout: Layout) -> np.ndarray:
    """Where a tensor group's ranks sit from its shard 0's, (T,): the same for every group."""
    return np.array(layout.tensor_ranks(0, 0)) - layout.rank(0, 0)


def ring_collective_s(
    workload: Workload, network: Network, ring: np.ndarray, size, units=1.0
) -> np.ndarray:
    """An all-gather or reduce-scatter of `size` bytes in all over `ring` (hosts on its last
    axis; `size` broadcasts against it), in `units` separate collectives: (D − 1) steps, each k·α
    and 1/D of the bytes."""
    n = ring.shape[-1]
    following = np.roll(ring, -1, axis=-1)
    latency = workload.ring_step_latencies * network.latency_s[ring, following].max(axis=-1)
    wire = network.wire_s(size / n, ring, following, 0.0).max(axis=-1)
    return (n - 1) * (units * latency + wire)


def tensor_allreduce_s(workload: Workload, network: Network, hosts: np.ndarray) -> np.ndarray:
    """Seconds of one activation all-reduce in the tensor group whose shard 0 is on `hosts`
    (any shape): a ring over the hosts of its ranks (one rank per host, hosts in rank order),
    2·(T − 1) steps of A/T bytes over its slowest hop, each k·α, the connections busy (no
    restart after idle)."""
    n = workload.layout.tensor
    ring = np.asarray(hosts)[..., np.newaxis] + tensor_offsets(workload.layout)
    following = np.roll(ring, -1, axis=-1)
    piece = workload.activation_bytes / n
    latency = workload.ring_step_latencies * network.latency_s[ring, following]
    step = latency + network.wire_s(piece, ring, following, 0.0)
    return 2 * (n - 1) * step.max(axis=-1)


def gradient_sync(workload: Workload, network: Network, hosts: np.ndarray, done: np.ndarray):
    """When each rank holds the averaged gradients of its stage."""
    dp_degree = workload.layout.dp_degree
    done = np.broadcast_to(done, hosts.shape).astype(float)
    if dp_degree == 1:
        return done
    network = network.for_collectives()
    if workload.dp_mode in ("ps", "sharded-ps"):
        return _chain_sync(workload, network, hosts, done)
    size = workload.grad_bytes.reshape(-1, 1)
    if workload.dp_mode == "fsdp":  # one reduce-scatter per unit, once every replica is there
        units = workload.stage_blocks.reshape(-1, 1) + 1
        end = done.max(axis=2) + ring_collective_s(workload, network, hosts, size[..., None], units)
        return np.broadcast_to(end[..., None], done.shape)
    if workload.dp_mode == "allreduce":
        ring_next = np.roll(hosts, -1, axis=2)
        piece = size[..., None] / dp_degree
        latency = workload.ring_step_latencies * network.latency_s[hosts, ring_next]
        first = (latency + network.wire_s(piece, hosts, ring_next)).max(axis=2)  # after idle
        step = (latency + network.wire_s(piece, hosts, ring_next, 0.0)).max(axis=2)
        end = done.max(axis=2) + first + (2 * dp_degree - 3) * step
        return np.broadcast_to(end[..., None], done.shape)
    server, others = hosts[..., :1], hosts[..., 1:]
    posted = done[..., :1] + network.latency_s[server, others]  # the server's receive, heard
    push_start = np.maximum(done[..., 1:], posted)
    push_latency = network.latency_s[others, server]
    arrivals = push_start + push_latency + network.wire_s(size[..., None], others, server)
    ingress = network.ingress_bytes_per_s[server[..., 0]]
    ingress_bound = (push_start + push_latency).min(axis=2) + (dp_degree - 1) * size / ingress
    push_end = np.maximum(arrivals.max(axis=2), ingress_bound)
    pull_wire = (size[..., None] / network.bytes_per_s[server, others]).sum(axis=2)
    if network.tcp is not None:  # D − 1 connections share the egress, each within its window
        share = network.wire_s(size[..., None], server, others, rate_share=1 / (dp_degree - 1))
        pull_wire = np.maximum(pull_wire, share.max(axis=2))
    sent = push_end + pull_wire
    received = sent[..., None] + network.latency_s[server, others]
    return np.concatenate([sent[..., None], received], axis=2)


def _chain_phase(
    first_s: np.ndarray, latency: np.ndarray, rest_s: np.ndarray, notice: bool = True
) -> np.ndarray:
    """One pipelined pass along a chain, its hops on the last axis: the receives' notice (α;
    none when they were posted ahead), the first chunk through every hop (`first_s` on the
    wire, then α), then the rest of the busiest hop's bytes (`rest_s`: its wire time less the
    first chunk's)."""
    through = (first_s + latency).sum(axis=-1)
    wait = latency.max(axis=-1) if notice else 0.0
    return wait + through + np.maximum(rest_s.max(axis=-1), 0.0)


def _chain_sync(workload: Workload, network: Network, hosts: np.ndarray, done: np.ndarray):
    """`ps` (bucket after bucket to replica 0 and back, once every replica is done) or
    `sharded-ps` (every bucket at once, each to its own owner): when each rank holds its
    stage's averaged gradients, (S, K, D)."""
    synced = np.empty(done.shape)
    for s, buckets in enumerate(workload.sync_buckets):
        if workload.dp_mode == "ps":
            synced[s] = _central_chain(workload, network, hosts[s], done[s].max(axis=1), buckets)
        else:
            synced[s] = _sharded_chains(workload, network, hosts[s], done[s], buckets)
    return synced


def _central_chain(
    workload: Workload, network: Network, h: np.ndarray, start: np.ndarray, buckets
) -> np.ndarray:
    """`ps` from `start` (K,): per bucket a chunked reduce along the chain of replicas to
    replica 0, then a broadcast back; (K, 1), when the last broadcast ends.

    A direction's first bucket of the iteration follows a long idle; its next one follows the
    other direction's pass in between. Each hop forwards a chunk once it has all of it, so the
    first chunk crosses the chain hop after hop, each from its own window (after an idle, each
    hop's slow start in turn)."""
    end = start.copy()
    links = ((h[:, 1:], h[:, :-1]), (h[:, :-1], h[:, 1:]))  # reduce, broadcast
    idle = [np.inf, np.inf]
    for index, size in enumerate(buckets):
        first = min(workload.chunk_bytes, size)
        for direction, (src, dst) in enumerate(links):
            first_s = network.wire_s(first, src, dst, idle[direction])
            rest = network.wire_s(size, src, dst, idle[direction]) - first_s
            notice = index == 0 and direction == 0  # later ones follow the broadcast
            phase = _chain_phase(first_s, network.latency_s[src, dst], rest, notice)
            end += phase
            idle[direction] = 0.0
            idle[1 - direction] += phase  # the other direction waited this long too
    return end[:, np.newaxis]


def _chunk_sizes(size: float, chunk: float) -> list[float]:
    """The pieces a bucket of `size` bytes goes in: whole chunks, then what is left."""
    whole = int(size // chunk)
    rest = size - whole * chunk
    return [chunk] * whole + ([rest] if rest > 0 else [])


def _sharded_chains(
    workload: Workload, network: Network, h: np.ndarray, start: np.ndarray, buckets
) -> np.ndarray:
    """`sharded-ps` chunk by chunk: (K, D), when each replica holds its stage's averaged
    gradients, the replicas having started at `start` (K, D); each placement played in turn
    (`_sharded_play`)."""
    dp_degree = workload.layout.dp_degree
    per_piece = np.ceil(float(np.sum(buckets)) / (SHARDED_PIECES * workload.chunk_bytes))
    piece = workload.chunk_bytes * max(1.0, per_piece)
    pieces = [_chunk_sizes(float(size), piece) for size in buckets]
    owners = [bucket % dp_degree for bucket in range(len(buckets))]
    return np.stack([_sharded_play(network, h[k], start[k], owners, pieces) for k in range(len(h))])


def _sharded_play(
    network: Network, hosts: np.ndarray, start: np.ndarray, owners: list[int], pieces: list
) -> np.ndarray:
    """One placement's `sharded-ps` sync: (D,), when each replica holds the average.

    Bucket b is owned by replica owners[b] and its chain runs from the owner (position 0)
    through the next replicas, so replica r sends toward r − 1 in the reduce and toward r + 1 in
    the broadcast, on one connection each (the same one at D = 2; its window carries from
    chunk to chunk, `connection.py`). Every receive of both phases is posted at a replica's
    start: a reduce chunk leaves once the receiver's notice has come and, but at the tail, once
    its partial sum has come from behind; a replica broadcasts once its own reduce is done (its
    sends gone, its chunks in), a chunk once it has it. Each connection sends its chunks in the
    order they became ready (the order the owners' threads hand them to it), so a link starts at
    once with the chains it is the tail of and the other chains' chunks queue behind them: with
    equal links a phase takes about the busiest replica's (D − 1)/D·N, the fill hidden."""
    dp_degree = len(hosts)
    links: dict[tuple[int, int], Connection] = {}
    held = start.astype(float)  # when each replica has sent and received all it has so far

    def send(r: int, t: int, size: float, ready: float) -> float:
        if (r, t) not in links:
            links[r, t] = Connection(network, hosts[[r]], hosts[[t]])
        end = float(links[r, t].send(size, np.array([ready]))[0])
        arrival = end + network.latency_s[hosts[r], hosts[t]]
        held[r], held[t] = max(held[r], end), max(held[t], arrival)
        return arrival

    def notice(r: int, t: int) -> float:  # r may send to t: both started, t's notice in
        return max(start[r], start[t] + network.latency_s[hosts[t], hosts[r]])

    tail = dp_degree - 1
    queue = []
    for bucket, chunks in enumerate(pieces):
        r = (owners[bucket] + tail) % dp_degree
        ready = notice(r, (r - 1) % dp_degree)
        queue += [(ready, i, bucket, tail) for i in range(len(chunks))]
    reduced = {}
    heapq.heapify(queue)
    while queue:
        ready, i, bucket, position = heapq.heappop(queue)
        r = (owners[bucket] + position) % dp_degree
        arrival = send(r, (r - 1) % dp_degree, pieces[bucket][i], ready)
        if position == 1:
            reduced[bucket, i] = arrival
            continue
        t = (r - 1) % dp_degree
        ready = max(arrival, notice(t, (t - 1) % dp_degree))
        heapq.heappush(queue, (ready, i, bucket, position - 1))
    reduce_done = held.copy()
    queue = [
        (max(reduced[bucket, i], reduce_done[owners[bucket]]), i, bucket, 0)
        for bucket, chunks in enumerate(pieces)
        for i in range(len(chunks))
    ]
    heapq.heapify(queue)
    while queue:
        ready, i, bucket, position = heapq.heappop(queue)
        r = (owners[bucket] + position) % dp_degree
        arrival = send(r, (r + 1) % dp_degree, pieces[bucket][i], ready)
        if position + 1 < tail:
            t = (r + 1) % dp_degree
            heapq.heappush(queue, (max(arrival, reduce_done[t]), i, bucket, position + 1))
    return held
