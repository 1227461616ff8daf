"""The ftvs training step under the clock: `ftvs.train.build_train_step` builds it exactly as `ftvs train`
does; here it is only fed, and each batch's shape recorded on the host (timing never syncs the device)."""

import collections
import time

import numpy as np
import torch
from bench_machine import sync, window

from ftvs.batching import make_collate
from ftvs.train import build_train_step, make_train_sampler


class RecordedBatches:
    """The batches of the ftvs sampler's epoch, each one's (batch size, padded length, real tokens) recorded
    as the loader draws it. With `spread`, visited in van der Corput order over the batches sorted by padded
    size, so that any run of consecutive steps samples the epoch's range of batch sizes evenly.

    Length grouping makes batch shapes vary a lot (most batches short, a few long); the first few batches
    of a shuffled epoch are then a biased sample, and a benchmark timing only some steps would over- or
    under-state the throughput of a whole epoch. The batches themselves are the sampler's own."""

    def __init__(self, sampler, lengths, spread: bool):
        self.sampler, self.lengths, self.spread = sampler, np.asarray(lengths), spread
        self.shapes: collections.deque = collections.deque()

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def ordered(self) -> list[list[int]]:
        batches = self.sampler.batches()
        if not self.spread:
            return batches
        n = len(batches)
        by_size = np.argsort([len(b) * int(self.lengths[b].max()) for b in batches], kind="stable")
        # quantile (j + 1/2) / n of each batch, as a 24-bit fraction, bit-reversed: the median comes
        # first, then the quartiles, the octiles, ... (a van der Corput sequence over the quantiles)
        fractions = [int((j + 0.5) / n * 2**24) for j in range(n)]
        visit = sorted(range(n), key=lambda j: (int(format(fractions[j], "024b")[::-1], 2), j))
        return [batches[by_size[j]] for j in visit]

    def __iter__(self):
        for batch in self.ordered():
            lengths = self.lengths[batch]  # padding is to the batch's longest example (at least 1 token)
            self.shapes.append((len(batch), max(1, int(lengths.max())), int(lengths.sum())))
            yield batch

    def __len__(self) -> int:
        return len(self.sampler)


class FtvsStepTimer:
    """Runs `ftvs.train.TrainStep` over its own loader, epoch after epoch, keeping the per-batch statistics
    the training loop keeps (predictions, loss sum); `run(steps)` is one timed window."""

    def __init__(self, arm, cfg, examples, labels, accelerator, spread: bool = True):
        self.examples, self.labels, self.collate = examples, labels, make_collate(arm)
        sampler = make_train_sampler(arm, examples, cfg)
        self.batches = RecordedBatches(sampler, [arm.example_length(e) for e in examples], spread)
        self.step = build_train_step(cfg, arm, examples, labels, accelerator, batch_sampler=self.batches)
        self.model, self.device = self.step.model, accelerator.device
        self.run_loss = torch.zeros((), device=self.device, dtype=torch.float64)
        self.run_preds: list = []
        self.epoch, self._it = 0, None
        self.fused_adamw = bool(self.step.optimizer.defaults.get("fused"))

    def _next_batch(self):
        while True:
            if self._it is None:
                self.step.sampler.set_epoch(self.epoch)
                self._it = iter(self.step.loader)
            try:
                return next(self._it)
            except StopIteration:
                self.epoch += 1
                self._it = None

    def _train_on(self, batch) -> None:
        logits, loss, labels = self.step(batch)
        self.run_preds.append(logits.detach().argmax(-1))
        self.run_loss += loss.detach().double() * labels.shape[0]

    def sample_batch(self) -> dict:
        """One collated training batch on the device (for FLOP profiling), outside the timed stream."""
        batches = self.batches.ordered()
        idx = batches[len(batches) // 2]
        batch = self.collate([(i, self.examples[i], self.labels[i]) for i in idx])
        batch.pop("index")
        return {k: v.to(self.device) for k, v in batch.items()}

    def count_host_syncs(self, steps: int) -> dict:
        """CUDA only: run `steps` more steps under torch.cuda.set_sync_debug_mode("warn") and count the
        operations that made the host wait for the GPU (item(), blocking copies, ...)."""
        import warnings

        self.model.train()
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(steps):
                    batch = self._next_batch()
                    self.batches.shapes.popleft()
                    self._train_on(batch)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]
        return {
            "steps": steps,
            "synchronizing_ops": len(syncs),
            "per_step": len(syncs) / max(1, steps),
            "examples": sorted(set(syncs))[:5],
        }

    def run(self, steps: int) -> dict:
        self.model.train()
        sync(self.device)
        t0 = time.perf_counter()
        shapes = []
        for _ in range(steps):
            batch = self._next_batch()
            shapes.append(self.batches.shapes.popleft())
            self._train_on(batch)
        sync(self.device)
        seconds = time.perf_counter() - t0
        if len(self.run_preds) > 1000:
            self.run_preds = self.run_preds[-10:]
        return window(seconds, shapes)
