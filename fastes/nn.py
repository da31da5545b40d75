"""Small models built only from layers low-rank ES corrects in place (:mod:`fastes.lowrank`):
``nn.Linear``, ``nn.Embedding``, ``nn.LayerNorm`` and activations, with attention written out
(softmax(q kᵀ/√d) v on ``nn.Linear`` projections) rather than ``nn.MultiheadAttention``, which
reads its output projection's weight without calling it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ._validate import positive_int

__all__ = ["Block", "TinyTransformer"]


class Block(nn.Module):
    """A pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, n_heads: int, causal: bool = False, mlp_ratio: int = 4):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model must be a multiple of n_heads={n_heads}; got {d_model}")
        self.n_heads, self.causal = n_heads, causal
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.fc = nn.Linear(d_model, mlp_ratio * d_model)
        self.out = nn.Linear(mlp_ratio * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d)
        *batch, T, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        heads = (*batch, T, self.n_heads, d // self.n_heads)
        q, k, v = (t.reshape(heads).transpose(-3, -2) for t in (q, k, v))  # (B, h, T, d/h)
        # Attention written out: F.scaled_dot_product_attention has no vmap batching rule on
        # the CPU (torch 2.13 falls back to a per-member loop), these ops all have one.
        s = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)  # (B, h, T, T)
        if self.causal:
            s = s.masked_fill(
                torch.ones(T, T, dtype=torch.bool, device=s.device).triu(1), -torch.inf
            )
        a = torch.softmax(s, dim=-1) @ v
        x = x + self.proj(a.transpose(-3, -2).reshape(*batch, T, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class TinyTransformer(nn.Module):
    """Tokens (B, T) -> logits (B, T, n_out): token + position embeddings, ``n_layers`` blocks,
    a final norm and a linear head (``n_out`` defaults to ``vocab``)."""

    def __init__(
        self,
        vocab: int,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        max_len: int = 64,
        n_out: int | None = None,
        causal: bool = False,
    ):
        super().__init__()
        for name, v in (("vocab", vocab), ("d_model", d_model), ("n_layers", n_layers),
                        ("max_len", max_len)):  # fmt: skip
            positive_int(v, name)
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, causal) for _ in range(n_layers))
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_out or vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        T = tokens.shape[-1]
        if T > self.pos.num_embeddings:
            raise ValueError(f"sequence length {T} exceeds max_len={self.pos.num_embeddings}")
        x = self.tok(tokens) + self.pos(torch.arange(T, device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))
