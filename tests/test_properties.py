"""Property-based tests (hypothesis): padding never changes a prediction, and the trimmed tokenizer maps
every training token inside its table and everything else to unk.

Split properties (stratification, determinism, disjointness) live in tests/test_data_splitting.py.
"""

import pytest
import torch
from builders import build_tiny_tokenizer, finetune_arm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftvs.arms import PAD_ID, UNK_ID, TrimmedTokenizer, base_ids
from ftvs.batching import pad_token_batch
from ftvs.model import ScratchClassifier, ScratchConfig

SETTINGS = settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
VOCAB = 50
# a batch of 1-4 token sequences (ids 1..VOCAB-1: 0 is the pad id) of 1-12 tokens
sequences = st.lists(st.lists(st.integers(1, VOCAB - 1), min_size=1, max_size=12), min_size=1, max_size=4)


def _with_extra_pads(batch: dict, extra: int, pad_id: int) -> dict:
    ids, mask = batch["input_ids"], batch["attention_mask"]
    pad = torch.full((ids.shape[0], extra), pad_id, dtype=ids.dtype)
    return {
        "input_ids": torch.cat([ids, pad], 1),
        "attention_mask": torch.cat([mask, torch.zeros_like(pad)], 1),
    }


def _check_padding_invariance(model, seqs, extra, pad_id):
    """Logits of each sequence alone (no padding) == its logits in a right-padded batch with `extra`
    further pad columns."""
    with torch.inference_mode():
        alone = torch.cat([model(**pad_token_batch([s], pad_id)) for s in seqs])
        padded = model(**_with_extra_pads(pad_token_batch(seqs, pad_id), extra, pad_id))
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
@SETTINGS
@given(
    seqs=sequences,
    extra=st.integers(1, 8),
    positional=st.sampled_from(["learned", "sinusoidal"]),
    seed=st.integers(0, 2**16),
)
def test_scratch_logits_ignore_right_padding(pooling, seqs, extra, positional, seed):
    torch.manual_seed(seed)
    cfg = ScratchConfig(
        vocab_size=VOCAB,
        num_labels=5,
        n_layer=2,
        n_head=2,
        n_embd=16,
        d_ff=32,
        max_position=24,
        dropout=0.1,
        positional=positional,
        pooling=pooling,
        pad_id=PAD_ID,
    )
    model = ScratchClassifier(cfg).eval()
    with torch.no_grad():  # non-trivial weights everywhere (the init leaves biases/LayerNorms at 0/1)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    _check_padding_invariance(model, seqs, extra, PAD_ID)


@pytest.fixture(scope="module")
def llama_arm(tiny_llama_dir):
    torch.manual_seed(0)
    arm = finetune_arm(tiny_llama_dir, ["a", "b", "c"], method="full", max_seq_length=32)
    arm.model.eval()
    return arm


@SETTINGS
@given(
    seqs=st.lists(st.lists(st.integers(3, 400), min_size=1, max_size=12), min_size=1, max_size=4),
    extra=st.integers(1, 8),
)
def test_finetuned_llama_logits_ignore_right_padding(llama_arm, seqs, extra):
    """HF sequence classification pools the last non-pad token; pads (mask 0) must not change it."""
    pad = llama_arm.pad_id
    seqs = [[t if t != pad else pad + 1 for t in s] for s in seqs]
    _check_padding_invariance(llama_arm.model, seqs, extra, pad)


# --------------------------------------------------------------------------------------------------
# TrimmedTokenizer
# --------------------------------------------------------------------------------------------------

WORDS = [
    "card",
    "transfer",
    "refund",
    "pin",
    "atm",
    "cash",
    "top",
    "up",
    "limit",
    "fee",
    "exchange",
    "rate",
    "pending",
    "declined",
    "virtual",
    "phone",
    "lost",
    "stolen",
    "account",
    "verify",
    "identity",
    "money",
]
texts = st.lists(
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=10).map(" ".join), min_size=1, max_size=20
)


@pytest.fixture(scope="module")
def base_tokenizer():
    return build_tiny_tokenizer()


@SETTINGS
@given(train=texts, other=texts, max_length=st.integers(1, 16))
def test_trimmed_tokenizer_keeps_every_training_token(base_tokenizer, train, other, max_length):
    trimmed = TrimmedTokenizer.fit(base_tokenizer, train, max_length, max_vocab=10_000, name="tiny")
    train_base = {i for ids in base_ids(base_tokenizer, train, max_length) for i in ids}
    assert trimmed.vocab_size == 2 + len(train_base)
    for ids in trimmed.encode(train, max_length):  # never unk, never pad, inside the table
        assert all(2 <= i < trimmed.vocab_size for i in ids)
    for raw, mapped in zip(base_ids(base_tokenizer, other, max_length), trimmed.encode(other, max_length)):
        assert len(raw) == len(mapped)
        for b, m in zip(raw, mapped):
            assert (m == UNK_ID) == (b not in train_base)  # unseen ids -> unk (=1), seen ones keep their slot
            assert m != PAD_ID and m < trimmed.vocab_size


@SETTINGS
@given(train=texts, max_vocab=st.integers(2, 12))
def test_trimmed_tokenizer_caps_the_table_by_frequency(base_tokenizer, train, max_vocab):
    trimmed = TrimmedTokenizer.fit(base_tokenizer, train, 16, max_vocab=max_vocab, name="tiny")
    counts: dict = {}
    for ids in base_ids(base_tokenizer, train, 16):
        for i in ids:
            counts[i] = counts.get(i, 0) + 1
    assert trimmed.vocab_size == 2 + min(max_vocab - 2, len(counts))
    kept = set(trimmed.kept_ids)
    # no dropped token is more frequent than a kept one
    if kept and len(kept) < len(counts):
        assert min(counts[i] for i in kept) >= max(c for i, c in counts.items() if i not in kept)
    for raw, mapped in zip(base_ids(base_tokenizer, train, 16), trimmed.encode(train, 16)):
        for b, m in zip(raw, mapped):
            assert m == (2 + trimmed.kept_ids.index(b) if b in kept else UNK_ID)
