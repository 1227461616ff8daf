# --- pre-trained model fixtures (ftvs.pretrained): tiny random decoder-only models, never downloaded ---
import pytest as _pytest


@_pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """Folder with a tiny random Llama (hidden 32, 2 layers, 4 heads) + a small BPE tokenizer with a pad token."""
    from ftvs.pretrained import tiny_model_dir

    return tiny_model_dir(tmp_path_factory.mktemp("tiny_llama") / "model", model_type="llama")


@_pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    """Folder with a tiny random GPT-2 + a small BPE tokenizer WITHOUT a pad token (like the real GPT-2)."""
    from ftvs.pretrained import tiny_model_dir

    return tiny_model_dir(tmp_path_factory.mktemp("tiny_gpt2") / "model", model_type="gpt2")
