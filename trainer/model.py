"""The GPT decoder: one config dataclass, the named configs, and the full (unpartitioned) model.

Weights are initialised per parameter from a generator seeded by the seed and the parameter's
name, so a pipeline stage that builds only its own layers gets exactly the weights the full
model has under the same names.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GPTConfig:
    """Shape of a GPT decoder; `block_size` is the longest sequence it accepts."""

    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    vocab_size: int = 50257
    bias: bool = True
    head: str = "lm"
    """What the last stage ends in: `lm` (final norm and an untied projection to the
    vocabulary, next-token loss) or `classification` (a pooler d × d with tanh on the last
    token, then `n_classes` logits: one label per sequence)."""
    n_classes: int = 2
    """Classes of the `classification` head."""

    def head_sizes(self) -> list[int]:
        """Element count of each parameter tensor of the head, in its own order."""
        d = self.n_embd
        if self.head == "classification":
            c = self.n_classes
            return [d * d, d, c * d, c] if self.bias else [d * d, c * d]
        return ([d, d] if self.bias else [d]) + [self.vocab_size * d]

    def head_flops_per_sequence(self, seq_len: int) -> float:
        """Forward FLOPs of the head for one sequence: every token through the vocabulary
        projection (`lm`), or one token through the pooler and the classes."""
        d = self.n_embd
        if self.head == "classification":
            return 2.0 * (d * d + d * self.n_classes)
        return 2.0 * self.vocab_size * d * seq_len

    def n_params(self) -> int:
        """Parameter count (embeddings and an untied head included)."""
        d, v, t = self.n_embd, self.vocab_size, self.block_size
        per_block = 12 * d * d + (13 * d if self.bias else 2 * d)
        return v * d + t * d + self.n_layer * per_block + sum(self.head_sizes())

    def flops_per_token(self, seq_len: int) -> float:
        """Forward plus backward FLOPs per token: 6·N + 12·L·d·T."""
        return 6 * self.n_params() + 12 * self.n_layer * self.n_embd * seq_len


CONFIGS: dict[str, GPTConfig] = {
    "gpt3-xl": GPTConfig(n_layer=24, n_head=16, n_embd=2048, block_size=2048),
    "gpt3-small": GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=2048),
    "cpu-small": GPTConfig(n_layer=8, n_head=4, n_embd=256, block_size=256, vocab_size=4096),
    "cpu-mini": GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=128, vocab_size=1024),
    "tiny": GPTConfig(n_layer=4, n_head=2, n_embd=32, block_size=32, vocab_size=64),
}


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))


class MLP(nn.Module):
    """Two-layer feed-forward block with GELU."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Embedding(nn.Module):
    """Token plus learned position embedding."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        return self.wte(idx) + self.wpe(pos)


class Head(nn.Module):
    """Final layer norm and the (untied) projection to the vocabulary."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.ln_f(x))

    @staticmethod
    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy."""
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


class ClassificationHead(nn.Module):
    """A pooler (d × d, tanh) on the last token, then one logit per class. The last token is
    the one a causal decoder lets see the whole sequence."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_classes = cfg.n_classes
        self.pooler = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.fc = nn.Linear(cfg.n_embd, cfg.n_classes, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.pooler(x[:, -1])))

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy against each sequence's label: the class of the token that
        follows it (its id modulo the classes), so the next-token data serves as labels."""
        return F.cross_entropy(logits.float(), targets[:, -1] % self.n_classes)


HEADS = {"lm": Head, "classification": ClassificationHead}


def make_head(cfg: GPTConfig) -> nn.Module:
    """The last stage's head for `cfg.head`."""
    return HEADS[cfg.head](cfg)


def init_parameters(module: nn.Module, cfg: GPTConfig, seed: int) -> None:
    """Set every parameter from a generator seeded by `seed` and the parameter's name."""
    std_proj = 0.02 / math.sqrt(2 * cfg.n_layer)
    with torch.no_grad():
        for name, p in module.named_parameters():
            gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            leaf = name.rsplit(".", 1)[-1]
            if ".ln_" in f".{name}":
                p.fill_(1.0 if leaf == "weight" else 0.0)
            elif leaf == "bias":
                p.zero_()
            else:
                std = std_proj if name.endswith("c_proj.weight") else 0.02
                p.copy_(torch.randn(p.shape, generator=gen) * std)


class GPT(nn.Module):
    """The whole decoder in one module: the reference the pipeline stages are checked against."""

    def __init__(self, cfg: GPTConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.embed = Embedding(cfg)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.head = make_head(cfg)
        init_parameters(self, cfg, seed)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Logits for `idx`, and the loss when `targets` are given."""
        x = self.embed(idx)
        for block in self.h:
            x = block(x)
        logits = self.head(x)
        return logits, (self.head.loss(logits, targets) if targets is not None else None)
