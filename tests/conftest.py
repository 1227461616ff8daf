# --- pre-trained model fixtures (tests/builders.py): tiny random decoder-only models, never downloaded ---
import pytest as _pytest


@_pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """Folder with a tiny random Llama (hidden 32, 2 layers, 4 heads) + a small BPE tokenizer with a pad
    token."""
    from builders import tiny_model_dir

    return tiny_model_dir(tmp_path_factory.mktemp("tiny_llama") / "model", model_type="llama")


@_pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    """Folder with a tiny random GPT-2 + a small BPE tokenizer WITHOUT a pad token (like the real GPT-2)."""
    from builders import tiny_model_dir

    return tiny_model_dir(tmp_path_factory.mktemp("tiny_gpt2") / "model", model_type="gpt2")


# --- a real from-scratch run on real 20 Newsgroups texts, shared by test_train, test_arms_scratch,
# test_evaluate ---


@_pytest.fixture(scope="session")
def intents_small(tmp_path_factory):
    """3,000 training texts of 20 classes (short 20 Newsgroups posts in Banking77's CSV format), 3,000
    test."""
    from builders import intents_csv_dir

    from ftvs.data import prepare

    out = tmp_path_factory.mktemp("intents")
    prepare(str(intents_csv_dir()), out, max_train_examples=3000, seed=0)
    return out


@_pytest.fixture(scope="session")
def trained_run(intents_small, tmp_path_factory):
    """Five epochs of the tiny preset in fp32 on 3,000 short texts (about a minute on one CPU thread)."""
    from ftvs.cli import main

    run = tmp_path_factory.mktemp("runs") / "tiny"
    code = main(
        [
            "train",
            "scratch",
            "--data",
            str(intents_small),
            "--output_dir",
            str(run),
            "--preset",
            "tiny",
            "--num_train_epochs",
            "5",
            "--max_seq_length",
            "48",
            "--learning_rate",
            "2e-3",
            "--pooling",
            "mean",
            "--mixed_precision",
            "no",  # fp32 on any CPU and GPU (auto may differ by device): tests compare against it
            "--disable_tqdm",
        ]
    )
    assert code == 0
    return run


# --- a local Ray instance of 2 CPUs, shared by the Ray executor tests of studies and of searches ---


@_pytest.fixture(scope="session")
def ray_address():
    ray = _pytest.importorskip("ray")
    ctx = ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ctx.address_info["gcs_address"]
    ray.shutdown()
