"""Serving latency, measured the same way for every run (TF-IDF baseline, from scratch, fine-tuned).

What is timed is the whole path from raw text to a label: tokenising (or TF-IDF features), padding, the
forward pass and the arg-max, on the scoring device in the scoring precision. Two numbers:

- batch 1: one text at a time, `BATCH1_TEXTS` test texts after `WARMUP` untimed ones; the p50 and p95 of
  the per-text milliseconds (what one request waits). A single short text gives a thread pool too little
  work to share: a 0.75M-parameter model answers faster on one thread than on two, a 135M one the other
  way round. So the torch thread count for batch 1 is chosen as a server would choose it, by timing the
  candidates (1 and the process's count) on `THREAD_PROBE_TEXTS` texts, and recorded beside the numbers;
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
THREAD_PROBE_TEXTS = 8
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
    threads = torch.get_num_threads()
    batch1_threads = _fastest_threads(predict, pool[:THREAD_PROBE_TEXTS], device, threads)
    torch.set_num_threads(batch1_threads)
    try:
        ms = _batch1_ms(predict, pool[: BATCH1_TEXTS + WARMUP], device)[WARMUP:]
    finally:
        torch.set_num_threads(threads)
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
        "torch_threads": threads,
        "batch1_torch_threads": batch1_threads,
        "scope": SCOPE,
    }


def _batch1_ms(predict, texts: list[str], device: str) -> list[float]:
    ms = []
    for text in texts:
        start = time.perf_counter()
        predict([text])
        _sync(device)
        ms.append(1000 * (time.perf_counter() - start))
    return ms


def _fastest_threads(predict, texts: list[str], device: str, threads: int) -> int:
    """The torch thread count (1 or `threads`) with the lower median batch-1 time on `texts` (after one
    untimed pass at each count, so that neither pays the warm-up)."""
    if threads <= 1 or not str(device).startswith("cpu"):
        return threads
    median = {}
    for n in (threads, 1, threads, 1):  # interleaved, the second pass of each counts
        torch.set_num_threads(n)
        median[n] = float(np.median(_batch1_ms(predict, texts, device)))
    torch.set_num_threads(threads)
    return min(median, key=lambda n: (median[n], -n))


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
