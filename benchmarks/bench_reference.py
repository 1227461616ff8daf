"""Baseline (a): the seed repository's from-scratch model and loop: the same ScratchClassifier with unfused
attention and an explicit causal mask, every batch padded to max length, shuffled batches."""

import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from bench_machine import sync, window

from ftvs.model import ScratchClassifier
from ftvs.precision import autocast_dtype


class ReferenceCausalSelfAttention(nn.Module):
    """Unfused attention with an explicit causal mask (GPT-2 style `tril` buffer), as the seed repo did it.
    Same parameters (qkv, proj) as ftvs.model.CausalSelfAttention."""

    def __init__(self, cfg):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.attn_dropout = nn.Dropout(cfg.dropout)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        mask = torch.tril(torch.ones(cfg.max_position, cfg.max_position, dtype=torch.bool))
        self.register_buffer(
            "causal_mask", mask.view(1, 1, cfg.max_position, cfg.max_position), persistent=False
        )

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.shape[-1]))
        att = att.masked_fill(~self.causal_mask[:, :, :T, :T], float("-inf"))
        att = self.attn_dropout(F.softmax(att, dim=-1))
        y = att @ v
        return self.resid_dropout(self.proj(y.transpose(1, 2).contiguous().view(B, T, C)))


class PaddedReferenceClassifier(ScratchClassifier):
    """Baseline (a): the ftvs ScratchClassifier with every attention replaced by the reference one. Same
    sizes and parameter names (a state_dict moves between the two), so the comparison isolates the
    implementation: batches padded to max length + unfused attention with an explicit mask."""

    def __init__(self, cfg):
        super().__init__(cfg)
        for block in self.blocks:
            block.attn = ReferenceCausalSelfAttention(cfg)


def pad_to_length(sequences, length: int, pad_id: int) -> dict:
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, seq in enumerate(sequences):
        seq = seq[:length]
        input_ids[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        attention_mask[i, : len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


class ReferenceStepRunner:
    """The seed repo's loop: shuffled batches, each padded to max_length, plain AdamW (same groups and
    fusing as ftvs), clipping, the same schedule and precision (autocast in the run's mixed precision)."""

    def __init__(
        self, state_dict, model_cfg, examples, labels, cfg, device, precision: str, total_steps: int
    ):
        from torch.utils.data import DataLoader

        from ftvs.arms import PAD_ID, decay_param_groups, embedding_param_ids
        from ftvs.batching import IndexedDataset
        from ftvs.train import lr_lambda

        self.model = PaddedReferenceClassifier(model_cfg)
        self.model.load_state_dict(state_dict)
        self.model.to(device)
        self.device, self.cfg = device, cfg
        self.autocast_dtype = autocast_dtype(precision)
        max_len = model_cfg.max_position

        def collate(items):
            _, seqs, ys = zip(*items)
            batch = pad_to_length(seqs, max_len, PAD_ID)
            batch["labels"] = torch.as_tensor(ys, dtype=torch.long)
            return batch

        g = torch.Generator().manual_seed(cfg.seed)
        self.loader = DataLoader(
            IndexedDataset(examples, labels),
            batch_size=cfg.per_device_train_batch_size,
            shuffle=True,
            generator=g,
            collate_fn=collate,
            pin_memory=device.type == "cuda",
        )
        fused = {"fused": True} if device.type == "cuda" else {}
        groups = decay_param_groups(
            self.model.named_parameters(), cfg.weight_decay, no_decay_ids=embedding_param_ids(self.model)
        )
        for group in groups:
            group.pop("names", None)
        self.optimizer = torch.optim.AdamW(
            groups, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), **fused
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(cfg.lr_scheduler_type, int(cfg.warmup_ratio * total_steps), total_steps)
        )
        self._it = None

    def _next_batch(self):
        while True:
            if self._it is None:
                self._it = iter(self.loader)
            try:
                return next(self._it)
            except StopIteration:
                self._it = None

    def run(self, steps: int) -> dict:
        model, device = self.model, self.device
        model.train()
        sync(device)
        t0 = time.perf_counter()
        shapes = []
        for _ in range(steps):
            batch = self._next_batch()
            ids, mask = batch["input_ids"], batch["attention_mask"]
            shapes.append((ids.shape[0], ids.shape[1], int(mask.sum())))
            ids, mask, labels = (
                batch[k].to(device, non_blocking=True) for k in ("input_ids", "attention_mask", "labels")
            )
            with torch.autocast(
                device.type,
                dtype=self.autocast_dtype or torch.float32,
                enabled=self.autocast_dtype is not None,
            ):
                logits = model(ids, mask)
            loss = F.cross_entropy(logits.float(), labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        sync(device)
        return window(time.perf_counter() - t0, shapes)


def reference_equivalence(arm, examples, state_dict) -> float:
    """Max |logit difference| between the ftvs model (dynamic padding, SDPA) and the padded reference (max
    length, masked attention) on a few examples, in eval mode: ~0 shows both compute the same function."""
    from ftvs.arms import PAD_ID

    ref = PaddedReferenceClassifier(arm.model.config)
    ref.load_state_dict(state_dict)
    ref.eval()
    was = arm.model.training
    arm.model.eval()
    try:
        with torch.inference_mode():
            sample = examples[:8]
            ours = arm.model(**arm.collate(sample))
            theirs = ref(**pad_to_length(sample, arm.model.config.max_position, PAD_ID))
    finally:
        arm.model.train(was)
    return float((ours.float() - theirs.float()).abs().max())
