"""A small study config shared by the unit tests of ftvs.study (tests/test_study_*.py)."""


def raw_config(**over) -> dict:
    """A study config as a user writes it: three arms, two seeds, both sweeps."""
    raw = {
        "name": "unit",
        "data": {"source": "somewhere", "tokenizer": "none"},
        "seeds": [0, 1],
        "train": {"max_seq_length": 32},
        "arms": [
            {"name": "tfidf", "arm": "baseline"},
            {"name": "scratch", "arm": "scratch", "preset": "tiny", "num_train_epochs": 3},
            {"name": "lora", "arm": "finetune", "model_name_or_path": "smollm2-135m", "method": "lora"},
        ],
        "sweeps": {
            "data_size": {"fractions": [0.1, 0.5], "arms": ["tfidf", "scratch"]},
            "model_size": {"arm": "scratch", "sizes": ["tiny", "small", {"name": "wide", "n_embd": 256}]},
        },
    }
    raw.update(over)
    return raw
