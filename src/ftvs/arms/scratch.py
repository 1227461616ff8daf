"""The from-scratch arm: the decoder-only transformer of `ftvs.model` and its trimmed tokenizer.

The tokenizer is a pre-trained one (or a BPE learnt on the training split) whose ids are remapped onto
a small table of the tokens that occur in the training split, so both arms see the same segmentation.
"""

import collections
import dataclasses
from pathlib import Path

import numpy as np
import torch.nn as nn

from ftvs.arms.base import DEFAULT_LEARNING_RATES, Arm, base_ids
from ftvs.errors import FtvsError
from ftvs.fileio import load_tensors, read_json, save_tensors, write_json
from ftvs.model import PRESETS, ScratchClassifier, ScratchConfig
from ftvs.pretrained import load_tokenizer, safe_pretrained_kwargs
from ftvs.rundir import MODEL_MARKER

PAD_ID, UNK_ID = 0, 1


# --- tokenisation for the from-scratch arm --------------------------------------------------------


class TrimmedTokenizer:
    """A pre-trained tokenizer whose ids are remapped onto a small table (pad=0, unk=1, then the kept
    ids by training-split frequency). Both arms see the same segmentation; the scratch model only pays
    embeddings for tokens that actually occur."""

    def __init__(self, base, kept_ids, name: str, lowercase: bool = False):
        self.base = base
        self.name = name
        self.lowercase = lowercase
        self.kept_ids = [int(i) for i in kept_ids]
        self.lookup = np.full(max(len(base), max(self.kept_ids, default=0) + 1), UNK_ID, dtype=np.int64)
        self.lookup[self.kept_ids] = np.arange(2, 2 + len(self.kept_ids))

    @property
    def vocab_size(self) -> int:
        return 2 + len(self.kept_ids)

    @classmethod
    def fit(cls, base, texts, max_length: int, max_vocab: int, name: str, lowercase: bool = False):
        counts = collections.Counter()
        for ids in base_ids(base, cased(texts, lowercase), max_length):
            counts.update(ids)
        kept = [i for i, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: max(0, max_vocab - 2)]]
        return cls(base, kept, name, lowercase)

    def encode(self, texts, max_length: int) -> list[list[int]]:
        texts = cased(texts, self.lowercase)
        return [
            self.lookup[np.asarray(ids, dtype=np.int64)].tolist()
            for ids in base_ids(self.base, texts, max_length)
        ]

    def save(self, out_dir: Path) -> None:
        self.base.save_pretrained(out_dir / "tokenizer")
        write_json(
            out_dir / "vocab_map.json",
            {
                "base_tokenizer": self.name,
                "pad_id": PAD_ID,
                "unk_id": UNK_ID,
                "lowercase": self.lowercase,
                "kept_ids": self.kept_ids,
            },
        )

    @classmethod
    def load(cls, model_dir: Path):
        from transformers import AutoTokenizer

        info = read_json(model_dir / "vocab_map.json", "vocabulary map")
        folder = model_dir / "tokenizer"
        base = AutoTokenizer.from_pretrained(folder, **safe_pretrained_kwargs(folder))
        return cls(base, info["kept_ids"], info["base_tokenizer"], info.get("lowercase", False))

    def describe(self) -> dict:
        lower = ", lower-cased input" if self.lowercase else ""
        return {
            "type": f"{type(self.base).__name__} ({self.name}), trimmed to the training vocabulary{lower}",
            "base_vocab_size": len(self.base),
            "vocab_size": self.vocab_size,
        }


def cased(texts, lowercase: bool):
    """The texts as the scratch tokenizer reads them (`--lowercase`)."""
    return [t.lower() for t in texts] if lowercase else texts


def train_bpe_tokenizer(texts, vocab_size: int):
    """A byte-level BPE of `vocab_size` tokens learnt on the training split (pad=0, unk=1)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")


# --- the from-scratch arm ---------------------------------------------------------------------------


class ScratchArm(Arm):
    kind = "scratch"
    default_learning_rate = DEFAULT_LEARNING_RATES["scratch"]
    pad_id = PAD_ID

    def __init__(self, model: ScratchClassifier, tokenizer: TrimmedTokenizer, label_names, max_length: int):
        self.model = model
        self.tokenizer = tokenizer
        self.label_names = list(label_names)
        self.max_length = max_length

    def blocks(self) -> nn.ModuleList:
        return self.model.blocks

    def encode(self, texts):
        return self.tokenizer.encode(texts, self.max_length)

    def save_pretrained(self, out_dir) -> None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_tensors(out_dir / "model.safetensors", self.model.state_dict(), metadata={"format": "pt"})
        write_json(out_dir / "config.json", self.model.config.to_dict())
        self.tokenizer.save(out_dir)
        write_json(
            out_dir / MODEL_MARKER,
            {"arm": "scratch", "label_names": self.label_names, "max_length": self.max_length},
        )

    @classmethod
    def load(cls, model_dir: Path, info: dict) -> "ScratchArm":
        cfg = _scratch_config(model_dir / "config.json")
        model = ScratchClassifier(cfg)
        state = load_tensors(model_dir / "model.safetensors")
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise FtvsError(
                f"weights in {model_dir} do not match its config.json ({str(e).splitlines()[0]})"
            ) from None
        return cls(model.eval(), TrimmedTokenizer.load(model_dir), info["label_names"], info["max_length"])

    def describe(self) -> dict:
        c = self.model.config
        n = self.model.num_parameters()
        return {
            "architecture": {
                "type": "decoder-only transformer (pre-LN, causal SDPA attention, GELU MLP)",
                "n_layer": c.n_layer,
                "n_head": c.n_head,
                "n_embd": c.n_embd,
                "d_ff": c.d_ff,
                "max_position": c.max_position,
                "positional": c.positional,
                "dropout": c.dropout,
                "token_dropout": c.token_dropout,
            },
            "params_total": n["total"],
            "params_trainable": n["total"],
            "params_embedding": n["embedding"],
            "head": f"{c.pooling} pooling -> Linear({c.n_embd},{c.n_embd}) -> GELU -> Dropout -> "
            f"Linear({c.n_embd},{c.num_labels})",
            "tokenizer": self.tokenizer.describe(),
        }


def _scratch_config(path: Path) -> ScratchConfig:
    """A saved model/config.json as a ScratchConfig; keys it does not take (an edited or foreign file)
    or keys it lacks are one-line errors naming them."""
    values = read_json(path, "model config")
    if not isinstance(values, dict):
        raise FtvsError(f"{path} is not a JSON object of model settings; restore it or re-run the training")
    fields = {f.name: f for f in dataclasses.fields(ScratchConfig)}
    unknown = sorted(set(values) - set(fields))
    missing = sorted(n for n, f in fields.items() if n not in values and f.default is dataclasses.MISSING)
    if unknown or missing:
        what = "; ".join(
            part
            for part in (
                unknown and f"keys a from-scratch model does not take: {', '.join(unknown)}",
                missing and f"required keys missing: {', '.join(missing)}",
            )
            if part
        )
        raise FtvsError(
            f"{path} is not a from-scratch model config ({what}); restore the file written by `ftvs train` "
            f"(valid keys: {', '.join(fields)})"
        )
    return ScratchConfig(**values)


def scratch_model_config(cfg, vocab_size: int, num_labels: int) -> ScratchConfig:
    sizes = dict(PRESETS[cfg.preset])
    for key in ("n_layer", "n_head", "n_embd", "d_ff"):
        if getattr(cfg, key) is not None:
            sizes[key] = getattr(cfg, key)
    if sizes["n_embd"] % sizes["n_head"]:
        raise FtvsError(
            f"n_embd={sizes['n_embd']} is not divisible by n_head={sizes['n_head']}; change one of them"
        )
    return ScratchConfig(
        vocab_size=vocab_size,
        num_labels=num_labels,
        max_position=cfg.max_seq_length,
        dropout=cfg.dropout,
        token_dropout=cfg.token_dropout,
        positional=cfg.positional,
        pooling=cfg.pooling,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        **sizes,
    )


def build_scratch_tokenizer(cfg, train_texts) -> TrimmedTokenizer:
    if cfg.tokenizer == "bpe":
        base = train_bpe_tokenizer(cased(train_texts, cfg.lowercase), cfg.bpe_vocab_size)
        name = f"bpe-{cfg.bpe_vocab_size}"
    else:
        base, name = load_tokenizer(cfg.tokenizer), cfg.tokenizer
    return TrimmedTokenizer.fit(base, train_texts, cfg.max_seq_length, cfg.max_vocab, name, cfg.lowercase)


def build_scratch_arm(cfg, train_texts, label_names) -> ScratchArm:
    tokenizer = build_scratch_tokenizer(cfg, train_texts)
    model = ScratchClassifier(scratch_model_config(cfg, tokenizer.vocab_size, len(label_names)))
    return ScratchArm(model, tokenizer, label_names, cfg.max_seq_length)
