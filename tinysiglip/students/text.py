"""Compact text transformer that reads the TEACHER's token ids through a :class:`TokenVocab`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .vocab import TokenVocab


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"text width {width} is not divisible by text heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)); x + mlp(ln(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = int(round(width * mlp_ratio))
        self.ln_1 = nn.LayerNorm(width)
        self.attn = _Attention(width, heads, dropout)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, width)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln_1(x), attn_mask))
        return x + self.drop(self.mlp(self.ln_2(x)))


class TextTower(nn.Module):
    """Pre-LN transformer encoder over teacher token ids, pooled by MASKED MEAN over non-pad tokens.

    Input: ``input_ids`` (B, L) of TEACHER token ids, L <= ``max_length`` (64, the teacher's padded
    length). Ids are mapped to compact rows by ``vocab`` (unseen ids share the UNKNOWN row).

    Pooling choice: the teacher tokenizers pad every caption to ``max_length`` with ``pad_id``, and
    SigLIP's own text tower pools the LAST position (which only works because everything is padded to
    exactly 64). The student instead builds the mask ``input_ids != pad_id``, uses it as a key padding
    mask in every attention layer (no token attends to padding), and averages the final-LayerNorm
    token states over the non-pad positions. The output is therefore independent of how much padding
    follows a caption (64 vs. any shorter padded length gives the same vector) and of the row's
    neighbours in the batch. (For tokenizers whose pad id equals eos, e.g. SigLIP v1, eos is masked
    too, which loses nothing.) A row made only of padding attends over all its positions (so softmax
    never sees an all -inf row) and pools to the zero vector: finite, never NaN.

    Output: (B, width) pooled features (the projection to the teacher width lives in ``TinySigLIP``).
    """

    def __init__(
        self,
        vocab: TokenVocab,
        *,
        width: int = 384,
        layers: int = 4,
        heads: int = 6,
        mlp_ratio: float = 4.0,
        max_length: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"text layers must be >= 1, got {layers}")
        self.vocab = vocab
        self.width = width
        self.max_length = max_length
        self.pad_id = vocab.pad_id
        self.token_embedding = nn.Embedding(vocab.num_rows, width)
        self.positional_embedding = nn.Parameter(torch.zeros(1, max_length, width))
        self.blocks = nn.ModuleList([_Block(width, heads, mlp_ratio, dropout) for _ in range(layers)])
        self.ln_final = nn.LayerNorm(width)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    @property
    def num_features(self) -> int:
        return self.width

    def token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """True where a position holds a real (non-pad) token."""
        return input_ids != self.pad_id

    def forward_tokens(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) ids -> per-token states (B, L, width) after the final LayerNorm, and the token mask."""
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (B, L), got shape {tuple(input_ids.shape)}")
        length = input_ids.shape[1]
        if length > self.max_length:
            raise ValueError(
                f"input_ids has length {length} > max_length {self.max_length}; "
                "tokenize with truncation=True, max_length=64"
            )
        ids = input_ids.to(self.positional_embedding.device)
        mask = self.token_mask(ids)
        x = self.token_embedding(self.vocab(ids)) + self.positional_embedding[:, :length]
        # Rows with no real token attend over every position instead of none (no NaN).
        keys = mask | ~mask.any(dim=1, keepdim=True)
        attn_mask = keys[:, None, None, :]  # (B, 1, 1, L): True = may be attended to
        for block in self.blocks:
            x = block(x, attn_mask)
        return self.ln_final(x), mask

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x, mask = self.forward_tokens(input_ids)
        weights = mask.to(x.dtype).unsqueeze(-1)
        return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
