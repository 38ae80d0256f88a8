"""Token batches: synthetic from a seed (a learnable Markov chain), or windows of a local file.

Every rank that needs a batch (a pipeline's first and last stage) builds the same one from
(seed, iteration, replica), so no tokens travel between stages.
"""

from __future__ import annotations

from pathlib import Path

import torch

FOLLOW_PROBABILITY = 0.9


class TokenSource:
    """Batches of (tokens, next tokens), each of shape (batch, seq)."""

    def __init__(self, dataset: str, vocab_size: int, seq: int, seed: int):
        self.vocab_size, self.seq, self.seed = vocab_size, seq, seed
        if dataset == "synthetic":
            gen = torch.Generator().manual_seed(seed)
            self.successor = torch.randperm(vocab_size, generator=gen)
            self.text = None
        else:
            self.text = torch.frombuffer(bytearray(Path(dataset).read_bytes()), dtype=torch.uint8)
            if self.text.numel() < seq + 2:
                raise ValueError(f"{dataset}: shorter than one sequence of {seq} tokens")

    def batch(self, iteration: int, replica: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch pipeline `replica` trains on at `iteration`."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + iteration * 7919 + replica)
        seqs = self._text(size, gen) if self.text is not None else self._markov(size, gen)
        return seqs[:, :-1].contiguous(), seqs[:, 1:].contiguous()

    def _markov(self, size: int, gen: torch.Generator) -> torch.Tensor:
        noise = torch.randint(self.vocab_size, (size, self.seq + 1), generator=gen)
        follow = torch.rand(size, self.seq + 1, generator=gen) < FOLLOW_PROBABILITY
        seqs = noise.clone()
        for t in range(1, self.seq + 1):
            seqs[:, t] = torch.where(follow[:, t], self.successor[seqs[:, t - 1]], noise[:, t])
        return seqs

    def _text(self, size: int, gen: torch.Generator) -> torch.Tensor:
        starts = torch.randint(self.text.numel() - self.seq - 1, (size,), generator=gen)
        return torch.stack([self.text[s : s + self.seq + 1] for s in starts.tolist()]).long()
