"""Batches with as little padding as possible.

Training: a length-grouped batch sampler. Each epoch the examples are shuffled (seeded by seed and
epoch, so a resumed run replays the same order), cut into mega-batches of `group_size` batches, sorted
by length inside each mega-batch, cut into batches, and the batches shuffled again: batches hold
similar lengths yet the order stays random across epochs.
Evaluation: batches of examples sorted by length (each batch carries the examples' original indices so
outputs are put back in input order).
Padding is per batch (right side), never to max length.
"""

import numpy as np
import torch


class LengthGroupedBatchSampler:
    def __init__(self, lengths, batch_size: int, seed: int, group_batches: int = 50, grouped: bool = True):
        self.lengths = np.asarray(lengths)
        # deliberately not named `batch_size`: accelerate's BatchSamplerShard treats a sampler WITH that
        # attribute as fixed-size and, when the shuffled short batch ends a round of processes, silently
        # drops that whole round; without it every batch is dealt out and the tail is padded with whole
        # batches
        self.per_batch = batch_size
        self.seed = seed
        self.group_batches = group_batches
        self.grouped = grouped
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        if self.grouped:
            mega = self.per_batch * self.group_batches
            chunks = [order[i : i + mega] for i in range(0, len(order), mega)]
            order = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks])
        batches = [order[i : i + self.per_batch].tolist() for i in range(0, len(order), self.per_batch)]
        if self.grouped:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.per_batch)


def sorted_batches(lengths, batch_size: int) -> list[list[int]]:
    """Evaluation batches: longest first (memory peaks at the start, not at the end)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]


def pad_token_batch(sequences, pad_id: int) -> dict:
    """Right-pad token id lists to the longest in the batch."""
    width = max(1, max(len(s) for s in sequences))
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        input_ids[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        attention_mask[i, : len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


class IndexedDataset(torch.utils.data.Dataset):
    """(index, example, label) triples: the index survives sorting, sharding and gathering."""

    def __init__(self, examples, labels):
        self.examples = examples
        self.labels = labels

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        return i, self.examples[i], self.labels[i]


def make_collate(arm):
    def collate(items):
        idx, examples, labels = zip(*items)
        batch = arm.collate(list(examples))
        batch["labels"] = torch.as_tensor(labels, dtype=torch.long)
        batch["index"] = torch.as_tensor(idx, dtype=torch.long)
        return batch

    return collate
