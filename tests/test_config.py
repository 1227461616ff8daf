"""The training configuration (ftvs.config): every flag of `ftvs train` comes from a TrainConfig field, which
holds its default, its help and its allowed values."""

import dataclasses

import pytest

from ftvs.cli import main
from ftvs.config import FINETUNE_ONLY, SCRATCH_ONLY, TrainConfig, build_config, default_learning_rates
from ftvs.errors import FtvsError


def _train_help(arm: str, capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "1000")  # one line per flag: help texts are not wrapped
    with pytest.raises(SystemExit) as exit_:
        main(["train", arm, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("arm", ["scratch", "finetune"])
def test_train_help_explains_every_flag_with_its_field_help_and_default(arm, capsys, monkeypatch):
    text = _train_help(arm, capsys, monkeypatch)
    entries = []  # one per option: its flag line and, for long flags, the help on the next line
    for line in text.splitlines():
        if line.startswith("  -"):
            entries.append(line.strip())
        elif line.startswith("   ") and entries:
            entries[-1] += " " + line.strip()
    other_arm = FINETUNE_ONLY if arm == "scratch" else SCRATCH_ONLY
    for f in dataclasses.fields(TrainConfig):
        if f.name in {"arm", "extra"}:
            continue
        flag_lines = [entry for entry in entries if entry.startswith((f"--{f.name} ", f"--{f.name},"))]
        if f.name in other_arm:
            assert not flag_lines, f.name
            continue
        assert len(flag_lines) == 1, f.name
        assert f.metadata["help"] in flag_lines[0], f.name
        if f.default not in (None, ""):
            assert f"(default {f.default})" in flag_lines[0], f.name


def test_the_learning_rate_help_shows_the_arms_default_table(capsys, monkeypatch):
    text = _train_help("finetune", capsys, monkeypatch)
    assert f"(default per arm/method: {default_learning_rates()})" in text
    for name in ("scratch", "lora", "full", "frozen", "unfreeze"):
        assert f"{name} " in default_learning_rates()


def test_allowed_values_live_on_the_fields():
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for f in fields.values():
        assert not f.metadata.get("choices") or f.default in f.metadata["choices"], f.name
    with pytest.raises(FtvsError, match="invalid pooling='maxx': must be one of last, mean, max.*'max'"):
        build_config({}, {"pooling": "maxx"})
    assert build_config({}, {"lr_scheduler_type": "linear"}).lr_scheduler_type == "linear"


def test_yaml_config_is_overridden_by_flags_and_unknown_keys_suggest_the_closest(tmp_path):
    cfg = build_config({"learning_rate": 1e-4, "num_train_epochs": 7}, {"learning_rate": 3e-4})
    assert cfg.learning_rate == 3e-4 and cfg.num_train_epochs == 7
    with pytest.raises(FtvsError, match="did you mean 'learning_rate'"):
        build_config({"learnig_rate": 1e-4}, {})
    with pytest.raises(FtvsError, match="preset"):
        build_config({}, {"preset": "huge"})
