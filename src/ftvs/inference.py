"""Batched prediction shared by validation, `ftvs evaluate`, `ftvs predict` and the benchmarks.

Batches are sorted by length (little padding), run under `torch.inference_mode`, and the outputs are put
back in input order through each example's index. With several processes every process predicts its
shard; the shards are gathered and de-duplicated by index, so the padded tail that a distributed
sampler repeats is never counted twice and nothing is dropped.
"""

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ftvs.batching import IndexedDataset, make_collate, sorted_batches


def make_eval_loader(arm, examples, labels, batch_size: int, num_workers: int = 0) -> DataLoader:
    lengths = [arm.example_length(e) for e in examples]
    return DataLoader(
        IndexedDataset(examples, labels),
        batch_sampler=sorted_batches(lengths, batch_size),
        collate_fn=make_collate(arm),
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
    )


@torch.inference_mode()
def predict_loader(model, loader, num_examples: int, accelerator=None) -> dict:
    """Predictions for every example of `loader`, in dataset order.

    Labels < 0 mean "unknown" (prediction on raw texts): they are left out of the loss.
    """
    was_training = model.training
    model.eval()
    parts = []
    for batch in loader:
        index = batch.pop("index")
        labels = batch.pop("labels")
        logits = model(**batch).float()
        logp = F.log_softmax(logits, dim=-1)
        conf, pred = logp.exp().max(dim=-1)
        nll = F.nll_loss(logp, labels.clamp(min=0), reduction="none") * (labels >= 0)
        # stays on the device: a .cpu() per batch would make the host wait for the GPU after every batch
        parts.append(
            torch.cat(
                [torch.stack([index.float(), pred.float(), conf, nll, (labels >= 0).float()], dim=1), logits],
                dim=1,
            )
        )
    local = torch.cat(parts).cpu() if parts else torch.zeros((0, 5))
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        local = torch.cat([torch.as_tensor(p) for p in gather_object([local.numpy()])])
    model.train(was_training)
    rows = local.numpy()
    index = rows[:, 0].astype(np.int64)
    _, first = np.unique(index, return_index=True)  # drop the duplicates of a sharded tail
    rows = rows[first]
    index = rows[:, 0].astype(np.int64)
    if len(index) != num_examples:
        raise RuntimeError(f"prediction covered {len(index)} of {num_examples} examples")
    y_pred = np.empty(num_examples, dtype=np.int64)
    confidence = np.empty(num_examples, dtype=np.float64)
    y_pred[index] = rows[:, 1].astype(np.int64)
    confidence[index] = rows[:, 2]
    logits = np.empty((num_examples, rows.shape[1] - 5), dtype=np.float32)  # for calibration
    logits[index] = rows[:, 5:]
    labelled = rows[:, 4].sum()
    loss = float(rows[:, 3].sum() / labelled) if labelled else None
    return {"y_pred": y_pred, "confidence": confidence, "loss": loss, "logits": logits}


def timed_predict(model, loader, num_examples: int, accelerator=None, warmup_batches: int = 2) -> dict:
    """`predict_loader` plus wall-clock inference time, after a few warm-up batches (kernel selection,
    allocator growth and lazy initialisation are not part of the steady-state cost)."""
    with torch.inference_mode():
        model.eval()
        for i, batch in enumerate(loader):
            if i >= warmup_batches:
                break
            model(**{k: v for k, v in batch.items() if k not in ("index", "labels")})
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = predict_loader(model, loader, num_examples, accelerator)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    out["seconds"] = time.perf_counter() - start
    return out
