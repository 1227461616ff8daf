"""Test assets: tiny random decoder-only models built from a config (never downloaded), and a data folder
in Banking77's CSV format built from real 20 Newsgroups posts (installed by `make test`), so that no test
needs the Banking77 CSVs of ../shared. Test modules import these as `from builders import ...` (pytest puts
tests/ on the path)."""

import csv
import functools
import os
import re
import tempfile
from pathlib import Path

# The real Banking77 CSVs, beside the repository where CI has them; FTVS_NO_SHARED=1 hides them (a fresh
# clone). Only benchmarks/checks/ (`make extra-checks`) uses them; the main suite never does.
BANKING77 = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77"
if os.environ.get("FTVS_NO_SHARED"):
    BANKING77 = Path("/nonexistent/shared/data/banking77")

# Banking77-sized: 20 intents (newsgroups), ~11k train texts, 150 test texts per class (3,000)
NEWSGROUPS_TEST_PER_CLASS = 150


def _short_post(raw: str, words: int) -> str:
    """A newsgroup post as a short query-like text: its subject line and the first words of its body."""
    head, _, body = raw.partition("\n\n")
    subject = next((line[8:] for line in head.splitlines() if line.startswith("Subject:")), "")
    subject = re.sub(r"^\s*(re:\s*)+", "", subject.strip(), flags=re.I)
    body_words = [w for w in body.split() if not w.startswith((">", "|")) and "@" not in w][:words]
    return " ".join([subject.rstrip(".?!") + "."] + body_words) if subject else " ".join(body_words)


@functools.cache
def _newsgroups_posts() -> dict:
    """{"train"|"test": [(short text, newsgroup)]}: the scikit-learn bydate split of 20 Newsgroups."""
    from ftvs.data.sources import load_source

    source = load_source("20newsgroups", remove_headers=False)  # the subject line is in the headers
    out = {}
    for split, table in source.tables.items():
        names = table.class_names["label"]
        out[split] = [
            (_short_post(t, 12), names[y]) for t, y in zip(table.fetch("text"), table.fetch("label"))
        ]
    return out


def newsgroups_csv(
    folder,
    per_class_train: int | None = None,
    per_class_test: int = NEWSGROUPS_TEST_PER_CLASS,
    num_classes: int = 20,
) -> Path:
    """Write `folder/train.csv` and `folder/test.csv` in Banking77's format (`text,category`): real 20
    Newsgroups texts (subject + first 12 words), the first `per_class_*` of each of the first `num_classes`
    groups
    (alphabetical)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    keep = sorted({group for _, group in _newsgroups_posts()["train"]})[:num_classes]
    for split, cap in (("train", per_class_train), ("test", per_class_test)):
        rows, taken = [], {}
        for text, group in _newsgroups_posts()[split]:
            if not text.strip() or group not in keep:
                continue
            if cap is None or taken.get(group, 0) < cap:
                taken[group] = taken.get(group, 0) + 1
                rows.append((text, group))
        with open(folder / f"{split}.csv", "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "category"])
            writer.writerows(rows)
    return folder


@functools.cache
def intents_csv_dir() -> Path:
    """One Banking77-format folder (train.csv, test.csv) of real texts per test process, for the tests that
    used to read the Banking77 CSVs: 20 classes, every training post, 150 test posts per class."""
    folder = Path(tempfile.mkdtemp(prefix="ftvs-tests-20ng-"))
    import atexit
    import shutil

    atexit.register(shutil.rmtree, folder, True)
    return newsgroups_csv(folder)


_TINY_CORPUS = """\
I am still waiting on my card? What can I do if my card still hasn't arrived after 2 weeks?
How do I top up my account with a transfer? My transfer has not arrived yet, why is it pending?
Why was I charged a fee for my cash withdrawal? The exchange rate on my payment looks wrong.
Can I change my PIN at an ATM? My card was declined at the shop. I lost my phone, please freeze my card.
How long does a bank transfer take to arrive? Is there a limit on top ups? I want to close my account.
The quick brown fox jumps over the lazy dog. Hello world! Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 2024.
"""


def build_tiny_tokenizer(vocab_size: int = 512, *, with_pad: bool = True):
    """A small byte-level BPE tokenizer trained in milliseconds on a fixed corpus (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<|endoftext|>"] + (["<pad>"] if with_pad else [])
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TINY_CORPUS.splitlines() * 4, trainer=trainer)
    kwargs = {"unk_token": "<unk>", "eos_token": "<|endoftext|>"}
    if with_pad:
        kwargs["pad_token"] = "<pad>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def tiny_model_dir(path, *, model_type: str = "llama", with_pad: bool = True, seed: int = 0) -> Path:
    """Write a tiny random decoder-only causal LM (hidden 32, 2 layers, 4 heads) + tokenizer to `path`.

    model_type "llama" (tokenizer with a pad token by default) or "gpt2" (tokenizer without a pad
    token by default, like the real GPT-2). Used by tests so nothing is ever downloaded.
    """
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    path = Path(path)
    if model_type == "gpt2" and with_pad is True:
        with_pad = False
    tokenizer = build_tiny_tokenizer(with_pad=with_pad)
    vocab = len(tokenizer)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    if model_type == "llama":
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            bos_token_id=eos,
            eos_token_id=eos,
            pad_token_id=pad,
            tie_word_embeddings=True,
        )
    elif model_type == "gpt2":
        config = GPT2Config(
            vocab_size=vocab,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=256,
            bos_token_id=eos,
            eos_token_id=eos,
        )
    else:
        raise ValueError(f"tiny_model_dir: unsupported model_type {model_type!r}")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def finetune_arm(model_dir, label_names, **settings):
    """A fresh fine-tuning arm of `model_dir`: `TrainConfig` defaults, then `settings` (its field names)."""
    from ftvs.arms import build_finetune_arm
    from ftvs.config import TrainConfig

    cfg = TrainConfig(arm="finetune", model_name_or_path=str(model_dir), **settings)
    return build_finetune_arm(cfg, [], label_names)


# the documented keys of metrics.json and of a history.jsonl row (docs/design.md)
METRIC_KEYS = {
    "run_name",
    "arm",
    "method",
    "model_name",
    "dataset",
    "data_dir",
    "seed",
    "test",
    "num_test_examples",
    "inference",
    "params",
    "size_on_disk_bytes",
    "training",
    "best_val",
    "train_val_gap",
    "model",
}
HISTORY_KEYS = {
    "epoch",
    "step",
    "train_loss",
    "train_accuracy",
    "train_macro_f1",
    "val_loss",
    "val_accuracy",
    "val_macro_f1",
    "lr",
    "epoch_seconds",
    "elapsed_seconds",
    "examples_per_second",
}
# what an interrupted-and-resumed run must reproduce exactly (not the clock)
REPRODUCIBLE_HISTORY_KEYS = HISTORY_KEYS - {"epoch_seconds", "elapsed_seconds", "examples_per_second"}
