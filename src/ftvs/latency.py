"""Serving latency, measured the same way for every run (TF-IDF baseline, from scratch, fine-tuned).

What is timed is the whole path from raw text to a label: tokenising (or TF-IDF features), padding, the
forward pass and the arg-max, on the scoring device in the scoring precision. Two numbers:

- batch 1: one text at a time, `BATCH1_TEXTS` test texts after `WARMUP` untimed ones; the p50 and p95 of
  the per-text milliseconds (what one request waits);
- batch 64: `THROUGHPUT_TEXTS` test texts in batches of `THROUGHPUT_BATCH` after one untimed batch;
  seconds per 1,000 texts (what a bulk job pays).

`measure_latency` records them as metrics.json `latency`; `ftvs evaluate` writes it for neural runs and
re-measures it for a baseline run, and `ftvs baseline` writes it when it fits. A run evaluated before
this existed has no `latency` and is shown as "not measured" until `ftvs evaluate RUN` re-measures it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

BATCH1_TEXTS = 64
WARMUP = 3
THROUGHPUT_BATCH = 64
THROUGHPUT_TEXTS = 512
SCOPE = "raw text to label (tokenise or featurise, pad, forward, arg-max)"


def _sync(device: str) -> None:
    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()


def measure_latency(
    predict: Callable[[list[str]], object], texts: list[str], device: str, precision: str
) -> dict:
    """Time `predict(texts) -> labels` at batch 1 (p50/p95 ms per text) and at batch 64 (s per 1,000)."""
    texts = [t for t in texts if isinstance(t, str)] or ["x"]
    need = max(BATCH1_TEXTS + WARMUP, THROUGHPUT_TEXTS)
    pool = (texts * (need // len(texts) + 1))[:need]  # a small test set is cycled
    ms = []
    for i, text in enumerate(pool[: BATCH1_TEXTS + WARMUP]):
        start = time.perf_counter()
        predict([text])
        _sync(device)
        if i >= WARMUP:
            ms.append(1000 * (time.perf_counter() - start))
    batches = [pool[i : i + THROUGHPUT_BATCH] for i in range(0, THROUGHPUT_TEXTS, THROUGHPUT_BATCH)]
    predict(batches[0])  # warm-up: allocator growth and kernel choice for the larger shapes
    _sync(device)
    start = time.perf_counter()
    for batch in batches:
        predict(batch)
    _sync(device)
    seconds = time.perf_counter() - start
    return {
        "batch1_p50_ms": float(np.percentile(ms, 50)),
        "batch1_p95_ms": float(np.percentile(ms, 95)),
        "batch1_texts": len(ms),
        "throughput_batch_size": THROUGHPUT_BATCH,
        "throughput_texts": len(pool),
        "throughput_seconds_per_1000": 1000 * seconds / len(pool),
        "device": str(device),
        "precision": precision,
        "torch_threads": torch.get_num_threads(),
        "scope": SCOPE,
    }


def neural_predictor(arm, model, device) -> Callable[[list[str]], object]:
    """Raw texts -> predicted label ids through a neural arm's own encode/collate and its model."""

    @torch.inference_mode()
    def predict(texts: list[str]):
        batch = arm.collate(arm.encode(texts))
        logits = model(**{k: v.to(device) for k, v in batch.items()})
        return logits.argmax(-1).cpu()

    return predict


def latency_row(metrics: dict) -> dict:
    """The latency numbers of a metrics.json for the comparison table (None when not measured)."""
    lat = metrics.get("latency") or {}
    return {
        "latency_p50_ms": lat.get("batch1_p50_ms"),
        "latency_p95_ms": lat.get("batch1_p95_ms"),
        "throughput_s_per_1k": lat.get("throughput_seconds_per_1000"),
        "latency_device": lat.get("device"),
        "latency_precision": lat.get("precision"),
    }
