"""The model card every evaluated run gets (RUN_DIR/model/README.md): Hub metadata and the sections a
reader needs, parsed back with huggingface_hub's own `ModelCard.load`."""

import json
import shutil

import pytest
import torch
from huggingface_hub import ModelCard
from tiny_runs import baseline_run, finetune_run, scratch_run, sms_data

from ftvs.modelcard import _hub_base_model, most_confused_pairs, write_model_card

SECTIONS = (
    "## Data",
    "## Model",
    "## Hyperparameters",
    "## Test results",
    "## Training and inference cost",
    "## Intended use and limitations",
    "## How to load",
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_llama_dir):
    root = tmp_path_factory.mktemp("cards")
    data = sms_data(root)
    return {
        "scratch": scratch_run(data, root / "scratch"),
        "lora": finetune_run(data, root / "lora", tiny_llama_dir),
        "baseline": baseline_run(data, root / "baseline"),
    }


def test_most_confused_pairs_reads_the_off_diagonal():
    matrix = [[5, 3, 0], [1, 7, 2], [0, 4, 6]]
    pairs = most_confused_pairs(matrix, ["a", "b", "c"], k=2)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [("c", "b", 4), ("a", "b", 3)]
    assert pairs[0]["share_of_true"] == pytest.approx(0.4)


def test_base_model_metadata_only_names_hub_models(tmp_path):
    assert _hub_base_model("smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert _hub_base_model("EleutherAI/pythia-160m") == "EleutherAI/pythia-160m"
    assert _hub_base_model(str(tmp_path)) is None  # a local folder is no Hub id


@pytest.mark.parametrize("name,library", [("scratch", "ftvs"), ("lora", "peft"), ("baseline", "sklearn")])
def test_every_evaluated_run_has_a_card_that_parses(runs, name, library):
    run = runs[name]
    path = run / "model" / "README.md"
    card = ModelCard.load(path)  # written by evaluation (baseline: by `ftvs baseline`)
    metrics = json.loads((run / "metrics.json").read_text())
    meta = card.data.to_dict()
    assert meta["library_name"] == library and meta["pipeline_tag"] == "text-classification"
    assert "base_model" not in meta  # the tiny Llama is a local folder
    results = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert results["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-6)
    assert results["ece"] == pytest.approx(metrics["test"]["ece"], abs=1e-6)
    text = card.text
    for section in SECTIONS:
        assert section in text, (name, section)
    assert "| train | 200 |" in text and "`ham`, `spam`" in text
    assert f"| accuracy | {metrics['test']['accuracy']:.4f} |" in text
    assert (
        "Most confused pairs" in text
        or max(  # nothing to list when every test text is right
            sum(row) - row[i] for i, row in enumerate(metrics["test"]["confusion_matrix"])
        )
        == 0
    )


def test_hyperparameters_are_the_arms_own(runs):
    scratch = ModelCard.load(runs["scratch"] / "model" / "README.md").text
    lora = ModelCard.load(runs["lora"] / "model" / "README.md").text
    assert "| `n_embd` | 32 |" in scratch and "`lora_r`" not in scratch
    assert "| `lora_r` | 8 |" in lora and "`n_embd`" not in lora and "`output_dir`" not in lora
    assert "AutoPeftModelForSequenceClassification" in lora


def test_a_hub_base_model_is_named_in_the_metadata(runs, tmp_path):
    run = tmp_path / "lora"
    shutil.copytree(runs["lora"], run)
    marker = run / "model" / "ftvs.json"
    marker.write_text(json.dumps(json.loads(marker.read_text()) | {"base_model": "smollm2-135m"}))
    card = ModelCard.load(write_model_card(run))
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_a_run_without_metrics_gets_a_clear_error(tmp_path):
    from ftvs.errors import FtvsError

    with pytest.raises(FtvsError, match="ftvs evaluate"):
        write_model_card(tmp_path)
