"""Averaging a stage's gradients over the D pipelines (its replicas), in one of four modes.

- `ps`, the reference system's centralized parameter server: bucket after bucket (one bucket
  per parameter tensor by default), a reduce of the gradients to replica 0, which divides by
  D, then a broadcast of the average from it. Both are pipelined in chunks along the chain of
  replicas, so each costs about (N + (D − 1)·chunk)/β + (D − 1)·α, nearly independent of D.
- `sharded-ps`: each bucket is owned by one replica, round-robin; every bucket's reduce to its
  owner runs at once, then every broadcast from it, each along the chain rotated to start at
  its owner. Each host then sends about (D − 1)/D of the gradients per phase.
- `ps-star`: replica 0 is a server that receives every other replica's whole gradients and
  sends each of them the average: (D − 1)·N through the server's link each way.
- `allreduce`: the backend's all-reduce inside the stage's replica group.
- `fsdp`: the stage fully sharded over its replicas (trainer/fullyshard.py): its gradients are
  reduce-scattered inside the last backward, and each replica keeps and steps one shard.

Every replica then applies the same average with its own optimizer, so replicas stay equal
(under `fsdp`, to its own shard).
On NCCL the chains are the backend's own `reduce` and `broadcast` (it pipelines them along a
ring); on gloo, whose collectives do not, they are chunked `isend`/`irecv` between neighbours.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
from torch import nn

from trainer.config import DP_MODES
from trainer.gradsync import GradientSync
from trainer.layout import Layout, Position

STAR_PUSH_TAG = 1 << 20
STAR_PULL_TAG = STAR_PUSH_TAG + 1
CHAIN_TAG_BASE = 1 << 24
CHUNKS_PER_TAG_BLOCK = 1 << 16
"""A chain message's tag: base + (bucket·2 + phase)·CHUNKS_PER_TAG_BLOCK + chunk, unique within
a sync, so no message is ever taken for another."""


def flatten(params: list[nn.Parameter]) -> torch.Tensor:
    """The gradients of `params` as one flat tensor (a view of the gradient for one tensor)."""
    if len(params) == 1:
        return params[0].grad.view(-1)
    return torch.cat([p.grad.reshape(-1) for p in params])


def unflatten(flat: torch.Tensor, params: list[nn.Parameter]) -> None:
    """Copy `flat` back into the gradients it was made from (nothing to do for a view)."""
    if len(params) == 1:
        return
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
        offset += p.numel()


def bucket_spans(sizes: list[int], bucket_bytes: float) -> list[range]:
    """Consecutive items (of `sizes` bytes) grouped up to `bucket_bytes` each (0: one per item;
    infinite: all in one)."""
    spans: list[range] = []
    start, total = 0, 0
    for index, size in enumerate(sizes):
        if index > start and (bucket_bytes == 0 or total + size > bucket_bytes):
            spans.append(range(start, index))
            start, total = index, 0
        total += size
    if sizes:
        spans.append(range(start, len(sizes)))
    return spans


def make_buckets(params: list[nn.Parameter], bucket_bytes: float) -> list[list[nn.Parameter]]:
    """The parameters in buckets of up to `bucket_bytes` of gradient (0: one per tensor;
    infinite: one for all)."""
    sizes = [p.numel() * p.element_size() for p in params]
    return [params[span.start : span.stop] for span in bucket_spans(sizes, bucket_bytes)]


@dataclass
class ChainJob:
    """One flat tensor to reduce to `chain[0]` and broadcast from it, along `chain` (ranks)."""

    flat: torch.Tensor
    chain: list[int]
    position: int  # this rank's place in the chain; 0 is the root
    bucket: int  # which bucket of the stage: it makes the messages' tags

    def chunks(self, chunk_elems: int) -> list[torch.Tensor]:
        """Views of `flat`, `chunk_elems` each (the last may be shorter)."""
        return list(self.flat.split(chunk_elems))

    def tag(self, phase: int, chunk: int) -> int:
        """The tag of chunk `chunk` in phase 0 (reduce) or 1 (broadcast)."""
        return CHAIN_TAG_BASE + (self.bucket * 2 + phase) * CHUNKS_PER_TAG_BLOCK + chunk


Incoming = dict[int, list[tuple[torch.Tensor, dist.Work]]]
"""Posted receives by bucket: each chunk's buffer and its pending receive."""


def reduce_receives(jobs: list[ChainJob], chunk_elems: int) -> Incoming:
    """Post every receive of the jobs' reduce (from the next rank in each chain)."""
    incoming: Incoming = {}
    for job in jobs:
        if job.position < len(job.chain) - 1:
            src = job.chain[job.position + 1]
            parts = torch.empty_like(job.flat).split(chunk_elems)
            incoming[job.bucket] = [
                (part, dist.irecv(part, src=src, tag=job.tag(0, i))) for i, part in enumerate(parts)
            ]
    return incoming


def broadcast_receives(jobs: list[ChainJob], chunk_elems: int) -> Incoming:
    """Post every receive of the jobs' broadcast (from the previous rank, into the tensor)."""
    incoming: Incoming = {}
    for job in jobs:
        if job.position > 0:
            src = job.chain[job.position - 1]
            incoming[job.bucket] = [
                (part, dist.irecv(part, src=src, tag=job.tag(1, i)))
                for i, part in enumerate(job.chunks(chunk_elems))
            ]
    return incoming


def chain_reduce(
    jobs: list[ChainJob], chunk_elems: int, dp_degree: int, incoming: Incoming
) -> None:
    """Sum every job's tensor into its root, chunk by chunk from the chain's tail (each rank
    adds its own chunk to what came from behind and passes it on); the root divides by D.

    The jobs advance together, chunk after chunk, in the same order on every rank, and every
    receive was posted first (`incoming`): no rank ever waits for one that waits for it.
    """
    sends = []
    chunked = [job.chunks(chunk_elems) for job in jobs]
    for i in range(max(len(parts) for parts in chunked)):
        for job, parts in zip(jobs, chunked, strict=True):
            if i >= len(parts):
                continue
            own = parts[i]
            if job.bucket in incoming:
                part, work = incoming[job.bucket][i]
                work.wait()
                own += part
            if job.position > 0:
                dst = job.chain[job.position - 1]
                sends.append(dist.isend(own, dst=dst, tag=job.tag(0, i)))
    for work in sends:
        work.wait()
    for job in jobs:
        if job.position == 0:
            job.flat /= dp_degree


def chain_broadcast(jobs: list[ChainJob], chunk_elems: int, incoming: Incoming) -> None:
    """Send every job's tensor from its root down the chain, chunk by chunk: each rank
    receives a chunk (posted in `incoming`) into its tensor and passes it on to the next."""
    sends = []
    chunked = [job.chunks(chunk_elems) for job in jobs]
    for i in range(max(len(parts) for parts in chunked)):
        for job, parts in zip(jobs, chunked, strict=True):
            if i >= len(parts):
                continue
            if job.bucket in incoming:
                incoming[job.bucket][i][1].wait()
            if job.position < len(job.chain) - 1:
                dst = job.chain[job.position + 1]
                sends.append(dist.isend(parts[i], dst=dst, tag=job.tag(1, i)))
    for work in sends:
        work.wait()


class ChainedParameterServer(GradientSync):
    """`ps` and `sharded-ps`: reduce each bucket to its owner, then broadcast it from there."""

    def __init__(
        self, module, ranks, replica, group, *, sharded: bool, bucket_bytes: int,
        chunk_bytes: int, collectives: bool,
    ):  # fmt: skip
        super().__init__(module, ranks, replica)
        self.group, self.sharded, self.collectives = group, sharded, collectives
        self.buckets = make_buckets(self.params, bucket_bytes)
        self.chunk_elems = max(1, chunk_bytes // 4)
        self.pool = ThreadPoolExecutor(self.dp_degree, thread_name_prefix="sharded-ps")
        largest = max(sum(p.numel() for p in bucket) for bucket in self.buckets)
        if -(-largest // self.chunk_elems) > CHUNKS_PER_TAG_BLOCK:
            raise ValueError(f"a bucket of {largest} gradients needs larger chunks")
        if CHAIN_TAG_BASE + 2 * len(self.buckets) * CHUNKS_PER_TAG_BLOCK >= 1 << 31:
            raise ValueError(f"{len(self.buckets)} buckets are too many: set a bucket size")

    def owner(self, bucket_index: int) -> int:
        """The replica that a bucket is reduced to: replica 0 for `ps`, round-robin if sharded."""
        return bucket_index % self.dp_degree if self.sharded else 0

    def _job(self, flat: torch.Tensor, bucket: int) -> ChainJob:
        owner = self.owner(bucket)
        chain = self.ranks[owner:] + self.ranks[:owner]
        return ChainJob(flat, chain, (self.replica - owner) % self.dp_degree, bucket)

    def sync(self) -> None:
        if self.dp_degree == 1:
            return
        flats = [flatten(bucket) for bucket in self.buckets]
        jobs = [self._job(flat, i) for i, flat in enumerate(flats)]
        # the reference's central PS: one bucket after another; sharded: all at once (grouped)
        if self.collectives:
            for together in [jobs] if self.sharded else [[job] for job in jobs]:
                self._collective(together)
        elif self.sharded:
            self._sharded_chains(jobs)
        else:
            # a bucket's receives are posted as it starts: a rank's notice to the next one then
            # follows the previous bucket's broadcast to it, which that rank needs first anyway
            chunk = self.chunk_elems
            for job in jobs:
                chain_reduce([job], chunk, self.dp_degree, reduce_receives([job], chunk))
                chain_broadcast([job], chunk, broadcast_receives([job], chunk))
        for flat, bucket in zip(flats, self.buckets, strict=True):
            unflatten(flat, bucket)

    def _sharded_chains(self, jobs: list[ChainJob]) -> None:
        """Every owner's chains at once, one thread per owner: within a thread every rank
        takes that owner's buckets in the same order, and no owner's chain waits for
        another's (one thread for all of them would make each bucket wait for the last).

        Every receive of both phases is posted before any thread sends: gloo sends only into
        a posted receive, and the receive's notice to its sender is written behind whatever
        this rank is already sending that way. Posted by the threads, a notice often went
        out behind the other thread's data and the two directions ran one after the other
        (at D = 2 under 100 Mbit/s the sync took 1.45x its busiest egress's time that way,
        1.1x now). A broadcast chunk lands in the tensor only after the root reduced it,
        which needs this rank's own chunk sent first, so receiving into the tensor early is
        safe. It holds one more copy of the gradients meanwhile.
        """
        by_owner = [[job for job in jobs if job.chain[0] == rank] for rank in self.ranks]
        by_owner = [owned for owned in by_owner if owned]
        reduce_in = reduce_receives(jobs, self.chunk_elems)
        broadcast_in = broadcast_receives(jobs, self.chunk_elems)
        reduce = partial(chain_reduce, chunk_elems=self.chunk_elems, dp_degree=self.dp_degree,
                         incoming=reduce_in)  # fmt: skip
        list(self.pool.map(reduce, by_owner))
        broadcast = partial(chain_broadcast, chunk_elems=self.chunk_elems, incoming=broadcast_in)
        list(self.pool.map(broadcast, by_owner))

    def _collective(self, jobs: list[ChainJob]) -> None:
        """The backend's own reduce, then broadcast (what NCCL pipelines along its ring)."""
        reduces = [
            dist.reduce(job.flat, dst=job.chain[0], group=self.group, async_op=True) for job in jobs
        ]
        for work in reduces:
            work.wait()
        for job in jobs:
            if job.position == 0:
                job.flat /= self.dp_degree
        broadcasts = [
            dist.broadcast(job.flat, src=job.chain[0], group=self.group, async_op=True)
            for job in jobs
        ]
        for work in broadcasts:
            work.wait()


class StarParameterServer(GradientSync):
    """`ps-star`: push whole gradients to the stage's server (the pipeline-0 rank), which
    averages and sends the average back to each replica."""

    def sync(self) -> None:
        if self.dp_degree == 1:
            return
        flat = flatten(self.params)
        server = self.ranks[0]
        if self.replica == 0:
            pushed = [torch.empty_like(flat) for _ in self.ranks[1:]]
            works = [
                dist.irecv(buf, src=src, tag=STAR_PUSH_TAG)
                for buf, src in zip(pushed, self.ranks[1:], strict=True)
            ]
            for work, buf in zip(works, pushed, strict=True):
                work.wait()
                flat += buf
            flat /= self.dp_degree
            for work in [dist.isend(flat, dst=dst, tag=STAR_PULL_TAG) for dst in self.ranks[1:]]:
                work.wait()
        else:
            push = dist.isend(flat, dst=server, tag=STAR_PUSH_TAG)
            averaged = torch.empty_like(flat)
            pull = dist.irecv(averaged, src=server, tag=STAR_PULL_TAG)
            push.wait()
            pull.wait()
            flat.copy_(averaged)
        unflatten(flat, self.params)


class AllReduce(GradientSync):
    """The backend's all-reduce over the stage's replicas, then divide by D."""

    def __init__(self, module, ranks, replica, group):
        super().__init__(module, ranks, replica)
        self.group = group

    def sync(self) -> None:
        if self.dp_degree == 1:
            return
        flat = flatten(self.params)
        dist.all_reduce(flat, group=self.group)
        flat /= self.dp_degree
        unflatten(flat, self.params)


def make_gradient_sync(
    mode: str,
    module: nn.Module,
    layout: Layout,
    position: Position,
    *,
    bucket_bytes: float = 0,
    chunk_bytes: int = 256 * 1024,
    collectives: bool | None = None,
) -> GradientSync:
    """The sync for `mode` (one of DP_MODES). Collective: every rank must call it.

    `collectives`: run `ps`/`sharded-ps` on the backend's reduce and broadcast (default: on
    NCCL only) instead of chunked point-to-point chains.
    """
    if mode not in DP_MODES:
        raise ValueError(f"unknown data-parallel mode {mode!r}; known: {DP_MODES}")
    ranks = layout.replica_ranks(position.stage, position.shard)
    if mode == "ps-star" or layout.dp_degree == 1:
        return StarParameterServer(module, ranks, position.replica)
    groups = {
        (s, t): dist.new_group(layout.replica_ranks(s, t))
        for s in range(layout.stages)
        for t in range(layout.tensor)
    }
    group = groups[position.stage, position.shard]
    if mode == "fsdp":
        # Imported only here: torch.distributed.fsdp adds about a second to a rank's start-up.
        from trainer.fullyshard import FullyShardedSync

        device_type = next(module.parameters()).device.type
        return FullyShardedSync(module, ranks, position.replica, group, device_type)
    if mode == "allreduce":
        return AllReduce(module, ranks, position.replica, group)
    if collectives is None:
        collectives = dist.get_backend() == "nccl"
    return ChainedParameterServer(
        module, ranks, position.replica, group, sharded=mode == "sharded-ps",
        bucket_bytes=bucket_bytes, chunk_bytes=chunk_bytes, collectives=collectives,
    )  # fmt: skip
