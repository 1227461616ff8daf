"""The from-scratch arm: a small decoder-only (causal) transformer with a pooling + MLP classification head.

Read top to bottom: config, attention, MLP, block, classifier. Inputs are right-padded token ids with
an attention mask; causal attention means real tokens never look at the pads that follow them, so the
pads only need to be excluded when pooling.
"""

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# Sizes chosen so that every preset stays inside 0.5M–10M parameters *including embeddings* with the
# default tokenizer trimmed to Banking77's training vocabulary (~5k tokens); `ftvs models` prints them.
PRESETS = {
    "tiny": dict(n_layer=2, n_head=4, n_embd=128, d_ff=512),
    "small": dict(n_layer=4, n_head=4, n_embd=192, d_ff=768),
    "medium": dict(n_layer=4, n_head=8, n_embd=256, d_ff=1024),
    "large": dict(n_layer=6, n_head=8, n_embd=288, d_ff=1152),
}


# most positions a from-scratch model may have (its position table and attention grow with them; text
# classification rarely needs more than a few hundred tokens)
MAX_POSITIONS = 8192


@dataclass
class ScratchConfig:
    vocab_size: int
    num_labels: int
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    d_ff: int = 512
    max_position: int = 128
    dropout: float = 0.1
    token_dropout: float = 0.0  # training only: each real token becomes <unk> with this probability
    positional: str = "learned"  # learned | sinusoidal
    pooling: str = "last"  # last | mean | max
    pad_id: int = 0
    unk_id: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ScratchConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        # SDPA picks the fused flash / memory-efficient kernel when one applies; is_causal avoids building a
        # mask
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(B, T, C)))


class MLP(nn.Module):
    def __init__(self, cfg: ScratchConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, cfg.d_ff)
        self.proj = nn.Linear(cfg.d_ff, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm residual block, as in GPT-2."""

    def __init__(self, cfg: ScratchConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


def sinusoidal_table(n_positions: int, dim: int) -> torch.Tensor:
    pos = torch.arange(n_positions, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(n_positions, dim)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq[: dim // 2])
    return table


class ScratchClassifier(nn.Module):
    def __init__(self, cfg: ScratchConfig):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd, padding_idx=cfg.pad_id)
        if cfg.positional == "learned":
            self.pos_emb = nn.Embedding(cfg.max_position, cfg.n_embd)
        else:  # a fixed table is a buffer, not a parameter: it is not counted, nor trained
            self.register_buffer(
                "pos_table", sinusoidal_table(cfg.max_position, cfg.n_embd), persistent=False
            )
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Sequential(
            nn.Linear(cfg.n_embd, cfg.n_embd),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.n_embd, cfg.num_labels),
        )
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer) so the residual stream's variance
        # does not grow with depth
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()

    def hidden_states(self, input_ids):
        T = input_ids.shape[1]
        if T > self.config.max_position:
            raise ValueError(f"sequence length {T} exceeds max_position {self.config.max_position}")
        pos = torch.arange(T, device=input_ids.device)
        pos_vec = self.pos_emb(pos) if self.config.positional == "learned" else self.pos_table[:T]
        if self.training and self.config.token_dropout > 0:  # word dropout: no single token can carry a class
            hit = torch.rand(input_ids.shape, device=input_ids.device) < self.config.token_dropout
            input_ids = input_ids.masked_fill(hit & (input_ids != self.config.pad_id), self.config.unk_id)
        x = self.drop(self.tok_emb(input_ids) + pos_vec)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def pool(self, h, attention_mask):
        mask = attention_mask.to(h.dtype).unsqueeze(-1)
        if self.config.pooling == "last":  # right padding: the last real token sits at length - 1
            last = attention_mask.sum(dim=1).clamp(min=1) - 1
            return h[torch.arange(h.shape[0], device=h.device), last]
        if self.config.pooling == "mean":
            return (h * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return h.masked_fill(mask == 0, torch.finfo(h.dtype).min).max(dim=1).values

    def forward(self, input_ids, attention_mask):
        h = self.hidden_states(input_ids)
        if not torch.is_autocast_enabled(h.device.type):
            return self.head(self.pool(h, attention_mask))
        # under bf16/fp16 autocast the blocks' matmuls run in low precision, but the pooled vector, the
        # head and the logits stay fp32: bf16 logits (8 mantissa bits) round the small differences between
        # classes that the loss and its gradient are made of (benchmarks/RESULTS.md, "bf16 and the scratch
        # arm"); the head is two small matmuls per sequence, so this costs nothing measurable
        with torch.autocast(h.device.type, enabled=False):
            return self.head(self.pool(h.float(), attention_mask))

    def num_parameters(self) -> dict:
        total = sum(p.numel() for p in self.parameters())
        embedding = self.tok_emb.weight.numel() + (
            self.pos_emb.weight.numel() if hasattr(self, "pos_emb") else 0
        )
        head = sum(p.numel() for p in self.head.parameters())
        return {"total": total, "embedding": embedding, "head": head, "non_embedding": total - embedding}
