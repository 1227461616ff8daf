"""Inference timing: latency at batch 1 and throughput over length-sorted batches."""

import statistics
import time

import torch
from bench_machine import PeakMemory, percentile


def inference_bench(
    model,
    collate,
    examples,
    labels,
    device,
    latency_n: int,
    throughput_n: int,
    batch_size: int,
    memory: PeakMemory,
) -> dict:
    """Latency at batch 1 (collate + copy to device + forward + argmax back on the host, texts already
    tokenised) and throughput of `ftvs.inference.timed_predict` over sorted batches of `batch_size`."""
    from ftvs.batching import sorted_batches
    from ftvs.inference import timed_predict

    model.eval()
    memory.reset()
    times = []
    warm = 3
    with torch.inference_mode():
        for i, ex in enumerate(examples[: latency_n + warm]):
            t0 = time.perf_counter()
            batch = {k: v.to(device) for k, v in collate([ex]).items()}
            model(**batch).argmax(-1).cpu()
            if i >= warm:
                times.append(time.perf_counter() - t0)
    latency_mem = memory.read()

    sub, sub_labels = examples[:throughput_n], labels[:throughput_n]
    batches = []
    memory.reset()
    for idx in sorted_batches([len(e) for e in sub], batch_size):  # as ftvs.inference.make_eval_loader
        batch = collate([sub[i] for i in idx])
        batch["labels"] = torch.as_tensor([sub_labels[i] for i in idx], dtype=torch.long)
        batch["index"] = torch.as_tensor(idx, dtype=torch.long)
        batches.append({k: v.to(device) for k, v in batch.items()})
    out = timed_predict(model, batches, len(sub))
    return {
        "latency_batch1_ms": {
            "p50": 1e3 * percentile(times, 0.5),
            "p95": 1e3 * percentile(times, 0.95),
            "mean": 1e3 * statistics.fmean(times) if times else None,
            "n": len(times),
        },
        "throughput": {
            "batch_size": batch_size,
            "examples": len(sub),
            "seconds": out["seconds"],
            "examples_per_second": len(sub) / max(out["seconds"], 1e-12),
        },
        "peak_memory_latency": latency_mem,
        "peak_memory_throughput": memory.read(),
        "note": "latency: collate + copy to device + forward + argmax on the host, texts pre-tokenised, "
        "3 warm-up examples; throughput: ftvs.inference.timed_predict on length-sorted batches already "
        "on the device, after 2 warm-up batches",
    }
