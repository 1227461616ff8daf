"""What the benchmark reports: timing windows summed up, the side-by-side ratios and the printed table."""

import statistics

from bench_machine import summary

TARGETS = {
    "a_scratch_vs_padded_reference": 2.0,
    "b_finetune_vs_trainer": 1.0,
    "c_finetune_mfu_cpu": 0.40,
    "d_finetune_bf16_vs_fp32_step_cpu": 1.4,  # where bf16 is native
}


def summarise_windows(windows, flop_model, peak_gflops, warmup=None) -> dict:
    seconds = sum(w["seconds"] for w in windows)
    examples = sum(w["examples"] for w in windows)
    tokens = sum(w["tokens"] for w in windows)
    padded = sum(w["padded_tokens"] for w in windows)
    out = {
        "steps": sum(w["steps"] for w in windows),
        "seconds": seconds,
        "examples": examples,
        "examples_per_second": examples / seconds,
        "tokens_per_second": tokens / seconds,
        "padded_tokens_per_second": padded / seconds,
        "padding_fraction": 1 - tokens / max(1, padded),
        "tokens_per_example": tokens / max(1, examples),
        "per_round_examples_per_second": summary([w["examples"] / w["seconds"] for w in windows]),
        "step_seconds_median": statistics.median([w["seconds"] / w["steps"] for w in windows]),
    }
    peaks = [w["peak_memory"] for w in [*windows, *([warmup] if warmup else [])] if "peak_memory" in w]
    if peaks:
        out["peak_memory"] = {
            "bytes": max(m["bytes"] for m in peaks),
            "kind": peaks[0]["kind"] + ", max over "
            "the timed windows and the warm-up; on CPU the RSS includes whatever the process "
            "already holds (weights, allocator caches): compare CUDA numbers",
        }
    if flop_model is not None:
        flops = sum(flop_model.train_step(b, t) for w in windows for b, t in w["shapes"])
        useful = flops * tokens / max(1, padded)
        achieved = flops / seconds / 1e9
        out.update(
            flops=flops,
            achieved_gflops=achieved,
            mfu=achieved / peak_gflops,
            mfu_useful=useful / seconds / 1e9 / peak_gflops,
            peak_gflops_used=peak_gflops,
        )
    return out


def best_dtype(probes: dict) -> dict:
    """The machine's best dtype: the fastest of the matmul probes (median of each probe's measurements)."""
    peaks = {name: p.peak() for name, p in probes.items()}
    name = max(peaks, key=peaks.get)
    return {"dtype": name, "peak_gflops": peaks[name], "peaks_gflops": peaks}


def with_dtypes_side_by_side(by_dtype: dict, in_use: str, best: dict) -> dict:
    """The arm's result in the dtype in use, with MFU against the machine's best dtype added to every
    dtype's training step, and `by_dtype`: the training step and inference of each timed dtype."""
    table = {}
    for name, r in by_dtype.items():
        t, inf = r["train"], r["inference"]
        # never below the peak this dtype's own MFU is taken against: MFU vs best <= MFU vs own peak
        t["best_peak_gflops_used"] = max(best["peak_gflops"], t.get("peak_gflops_used") or 0.0)
        t["mfu_vs_best_dtype"] = (
            t["achieved_gflops"] / t["best_peak_gflops_used"] if "achieved_gflops" in t else None
        )
        t["best_dtype"] = best["dtype"]
        table[name] = {
            "step_seconds_median": t["step_seconds_median"],
            "train_examples_per_second": t["examples_per_second"],
            "achieved_gflops": t.get("achieved_gflops"),
            "peak_gflops_own_dtype": t.get("peak_gflops_used"),
            "mfu_own_dtype": t.get("mfu"),
            "mfu_vs_best_dtype": t["mfu_vs_best_dtype"],
            "inference_examples_per_second": inf["throughput"]["examples_per_second"],
            "latency_batch1_p50_ms": inf["latency_batch1_ms"]["p50"],
        }
    if "fp32" in table:
        base = table["fp32"]
        for name, row in table.items():
            if name != "fp32":
                row["train_speedup_vs_fp32"] = base["step_seconds_median"] / row["step_seconds_median"]
                row["inference_speedup_vs_fp32"] = (
                    row["inference_examples_per_second"] / base["inference_examples_per_second"]
                )
    return {**by_dtype[in_use], "dtype": in_use, "by_dtype": table}


def ratio_block(ours, theirs, target: float) -> dict:
    per_round = [
        (a["examples"] / a["seconds"]) / (b["examples"] / b["seconds"]) for a, b in zip(ours, theirs)
    ]
    overall = (sum(a["examples"] for a in ours) / sum(a["seconds"] for a in ours)) / (
        sum(b["examples"] for b in theirs) / sum(b["seconds"] for b in theirs)
    )
    return {
        "examples_per_second_ratio": overall,
        "per_round": per_round,
        "per_round_median": statistics.median(per_round),
        "target": target,
        "meets_target": overall >= target,
    }


def comparisons_of(results: dict, cuda: bool) -> dict:
    """The three side-by-side numbers: (a) scratch vs the padded reference, (b) LoRA vs Trainer, (c) MFU."""
    comparisons = {}
    if "scratch" in results and "reference" in results["scratch"]:
        r = results["scratch"]["reference"]["ratio"]
        comparisons["a_scratch_vs_padded_reference"] = {
            "what": "examples/s of the ftvs scratch training step / the padded reference loop",
            **r,
        }
    if "finetune" in results:
        ft = results["finetune"]
        if "trainer" in ft:
            comparisons["b_finetune_vs_trainer"] = {
                "what": "examples/s of the ftvs fine-tuning step / transformers.Trainer",
                **ft["trainer"]["ratio"],
            }
        comparisons["c_finetune_mfu"] = {
            "what": f"analytic FLOP/s of the ftvs fine-tuning step in {ft['dtype']} / probed matmul FLOP/s "
            "of "
            "that dtype (probe interleaved with the timed rounds); also against the machine's best dtype",
            "mfu": ft["train"]["mfu"],
            "mfu_useful": ft["train"]["mfu_useful"],
            "dtype": ft["dtype"],
            "mfu_vs_best_dtype": ft["train"].get("mfu_vs_best_dtype"),
            "best_dtype": ft["train"].get("best_dtype"),
            "target": TARGETS["c_finetune_mfu_cpu"] if not cuda else None,
            "meets_target": ft["train"]["mfu"] >= TARGETS["c_finetune_mfu_cpu"] if not cuda else None,
        }
    for kind, r in results.items():
        bf16 = r["by_dtype"].get("bf16", {})
        if "train_speedup_vs_fp32" in bf16:
            target = TARGETS["d_finetune_bf16_vs_fp32_step_cpu"] if kind == "finetune" and not cuda else None
            comparisons[f"d_{kind}_bf16_vs_fp32"] = {
                "what": "fp32 step seconds / bf16 step seconds (median); inference examples/s bf16 / fp32",
                "step_speedup": bf16["train_speedup_vs_fp32"],
                "inference_speedup": bf16["inference_speedup_vs_fp32"],
                "target": target,
                "meets_target": bf16["train_speedup_vs_fp32"] >= target if target else None,
            }
    return comparisons


def fmt_load(load) -> str:
    return "-" if load is None else f"{load:.1f}"


def format_table(report: dict) -> str:
    lines = _machine_lines(report)
    for kind, r in report["results"].items():
        lines += _arm_lines(kind, r)
    if report["comparisons"]:
        lines += ["", f"{'comparison':<36} {'value':>10} {'target':>8}  per-round"]
        lines += [_comparison_line(key, c) for key, c in report["comparisons"].items()]
    return "\n".join(lines)


def _machine_lines(report: dict) -> list[str]:
    """The machine, its matmul probes and the precision in use."""
    m = report["machine"]
    lines = [
        f"benchmarks/bench.py | {m['cpu_model']} | {m['cpu_count']} cpus | torch {m['torch']} "
        f"({m['threads_choice']['threads']} threads) | {m.get('gpu', 'CPU only')} | load average "
        f"{fmt_load(m['loadavg_1min'])} at start, {fmt_load(m.get('loadavg_1min_end'))} at the end",
        "matmul probes: "
        + ", ".join(
            f"{name} {p['size']}^2 {p['gflops']['median']:.1f} GFLOP/s"
            f" (load {p['conditions']['loadavg_1min_at_probes'].get('max', float('nan')):.1f})"
            for name, p in report["matmul_probes"].items()
        )
        + f"; best dtype {report['best_dtype']['dtype']}",
    ]
    lines += [
        f"{kind}: precision in use {p['in_use']} ({p['reason']}), auto here {p['auto_resolves_to']}"
        + (f"; {p['note']}" if p["note"] else "")
        for kind, p in report["precision"].items()
    ]
    lines += [
        f"WARNING {name} probe: {p['warning']}"
        for name, p in report["matmul_probes"].items()
        if "warning" in p
    ]
    return lines


def _arm_lines(kind: str, r: dict) -> list[str]:
    """One arm: ftvs and its baseline side by side, then its dtypes side by side."""
    lines = [
        "",
        f"{kind}: {r['model']} | {r['params_total']:,} params ({r['params_trainable']:,} trainable) | "
        f"batch {r['batch_size']} | {r['device']} {r['mixed_precision']}",
        f"  {'metric':<36} {'ftvs':>14} {'baseline':>14}",
    ]
    base = r.get("reference", r.get("trainer"))
    lines += _train_lines(r["train"], base["train"] if base else {}, r["inference"])
    if len(r["by_dtype"]) > 1:
        lines += _by_dtype_lines(r["by_dtype"])
    if base:
        lines.append(f"  baseline: {base['name']}")
    if r.get("reference"):
        lines.append(
            f"  reference logits max |diff| vs ftvs: {r['reference']['logit_max_abs_diff_vs_ftvs']:.2e}"
        )
    return lines


def _train_lines(t: dict, bt: dict, inf: dict) -> list[str]:
    """Training rows (ftvs vs baseline), peak memory and inference."""
    lines = []
    for label, key, fmt in (
        ("train examples/s", "examples_per_second", ".1f"),
        ("train tokens/s (real)", "tokens_per_second", ".0f"),
        ("train tokens/s (padded)", "padded_tokens_per_second", ".0f"),
        ("real tokens per example", "tokens_per_example", ".1f"),
        ("padding fraction", "padding_fraction", ".2f"),
        ("step seconds (median)", "step_seconds_median", ".4f"),
        ("achieved GFLOP/s", "achieved_gflops", ".1f"),
        ("MFU (padded tokens)", "mfu", ".1%"),
        ("MFU (real tokens)", "mfu_useful", ".1%"),
        (f"MFU vs best dtype ({t.get('best_dtype')})", "mfu_vs_best_dtype", ".1%"),
    ):
        a = t.get(key)
        b = bt.get(key) if bt else None
        lines.append(
            f"  {label:<36} {format(a, fmt) if a is not None else '-':>14} "
            f"{format(b, fmt) if b is not None else '-':>14}"
        )
    lines.append(
        f"  {'train peak memory (MiB)':<36} {t['peak_memory']['bytes'] / 2**20:>14.0f} "
        f"{bt['peak_memory']['bytes'] / 2**20 if bt.get('peak_memory') else float('nan'):>14.0f}"
    )
    lines.append(
        f"  {'latency batch 1 p50 / p95 (ms)':<36} "
        f"{inf['latency_batch1_ms']['p50']:>7.2f} / {inf['latency_batch1_ms']['p95']:.2f}"
    )
    lines.append(
        f"  {'inference ex/s (batch ' + str(inf['throughput']['batch_size']) + ')':<36} "
        f"{inf['throughput']['examples_per_second']:>14.1f}"
    )
    return lines


def _by_dtype_lines(by_dtype: dict) -> list[str]:
    names = list(by_dtype)
    lines = [f"  {'by dtype':<36} " + " ".join(f"{n:>14}" for n in names)]
    for label, key, fmt in (
        ("step seconds (median)", "step_seconds_median", ".4f"),
        ("MFU, own dtype peak", "mfu_own_dtype", ".1%"),
        ("MFU, best dtype peak", "mfu_vs_best_dtype", ".1%"),
        ("inference ex/s", "inference_examples_per_second", ".1f"),
        ("train speed-up vs fp32", "train_speedup_vs_fp32", ".2f"),
        ("inference speed-up vs fp32", "inference_speedup_vs_fp32", ".2f"),
    ):
        cells = [by_dtype[n].get(key) for n in names]
        lines.append(
            f"  {label:<36} " + " ".join(f"{format(c, fmt) if c is not None else '-':>14}" for c in cells)
        )
    return lines


def _comparison_line(key: str, c: dict) -> str:
    """One comparison: a speed-up, a throughput ratio against its target, or an MFU."""
    if "step_speedup" in c:
        target = f"{c['target']:.1f}x" if c.get("target") else "-"
        return (
            f"{key:<36} {c['step_speedup']:>9.2f}x {target:>8}  (inference {c['inference_speedup']:.2f}x)"
            f"{'  BELOW TARGET' if c.get('meets_target') is False else ''}"
        )
    if "examples_per_second_ratio" in c:
        rounds = ", ".join(f"{x:.2f}" for x in c["per_round"])
        return (
            f"{key:<36} {c['examples_per_second_ratio']:>9.2f}x {c['target']:>7.1f}x  [{rounds}]"
            f"{'' if c['meets_target'] else '  BELOW TARGET'}"
        )
    target = f"{c['target']:.0%}" if c.get("target") is not None else "-"
    best = c.get("mfu_vs_best_dtype")
    return (
        f"{key:<36} {c['mfu']:>10.1%} {target:>8}  (real tokens only: {c['mfu_useful']:.1%}; "
        f"vs best dtype {c.get('best_dtype')}: {format(best, '.1%') if best is not None else '-'})"
        f"{'  BELOW TARGET' if c.get('meets_target') is False else ''}"
    )
