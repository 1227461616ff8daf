"""`--class_weights` (ftvs/class_weights.py): the weight vector, the weighted loss of both neural arms, the
baseline on a real imbalanced subset of SMS Spam, and the report's imbalance sentence."""

import csv
import json

import pytest
import torch
import torch.nn.functional as F

from ftvs.baseline import BaselineSettings, run_baseline
from ftvs.class_weights import balanced_weights, imbalance_ratio, resolve
from ftvs.config import build_config
from ftvs.data import prepare
from ftvs.data.sources import load_source
from ftvs.errors import FtvsError
from ftvs.train import forward_backward


def test_balanced_weights_are_n_over_k_times_count():
    # 10 examples, 3 classes present: 10 / (3 * count); an absent class keeps 1
    assert balanced_weights([6, 3, 1, 0]) == pytest.approx([10 / 18, 10 / 9, 10 / 3, 1.0])
    assert resolve("balanced", [0] * 6 + [1] * 3 + [2], ["a", "b", "c"]) == pytest.approx(
        [10 / 18, 10 / 9, 10 / 3]
    )
    assert resolve("none", [0, 1], ["a", "b"]) is None
    assert imbalance_ratio({"a": 40, "b": 10, "c": 0}) == 4.0


def test_weights_file_by_label_name(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"spam": 4}))
    assert resolve(str(path), [0, 1], ["ham", "spam"]) == [1.0, 4.0]
    path.write_text(json.dumps({"spma": 4}))
    with pytest.raises(FtvsError, match="did you mean 'spam'"):
        resolve(str(path), [0, 1], ["ham", "spam"])
    with pytest.raises(FtvsError, match="class weights file not found"):
        build_config({}, {"class_weights": str(tmp_path / "missing.json")})
    with pytest.raises(FtvsError, match="none, balanced or a JSON file"):
        build_config({}, {"class_weights": "balance"})


def test_training_loss_is_the_weighted_cross_entropy_with_label_smoothing():
    from accelerate import Accelerator

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.tensor([0, 0, 0, 0, 0, 1, 1, 2])
    weight = torch.tensor(resolve("balanced", y.tolist(), ["a", "b", "c"]))
    cfg = build_config({}, {"label_smoothing": 0.1, "max_grad_norm": 0})

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            return self.inner(x)

    _, loss, _, _ = forward_backward(
        Accelerator(cpu=True), Wrap(), {"x": x, "labels": y, "index": None}, cfg, weight
    )
    expected = F.cross_entropy(model(x), y, weight=weight, label_smoothing=0.1)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss.item() != pytest.approx(F.cross_entropy(model(x), y, label_smoothing=0.1).item(), rel=1e-3)


@pytest.fixture(scope="module")
def imbalanced_sms(tmp_path_factory):
    """Real SMS Spam texts, 320 ham : 12 spam in training (ratio ~27), a balanced test split."""
    table = load_source("sms_spam", remove_headers=False).tables["train"]
    rows = list(zip(table.fetch("text"), table.fetch("label")))
    ham = [t for t, y in rows if y == "ham"]
    spam = [t for t, y in rows if y == "spam"]
    root = tmp_path_factory.mktemp("imbalanced")
    (root / "csv").mkdir()
    for name, part in (("train", (ham[:320], spam[:12])), ("test", (ham[400:500], spam[100:200]))):
        with open(root / "csv" / f"{name}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows([(t, "ham") for t in part[0]] + [(t, "spam") for t in part[1]])
    meta = prepare(str(root / "csv"), root / "data", tokenizer="none", validation_split=0.1, seed=0)
    return root, meta


@pytest.fixture(scope="module")
def baseline_runs(imbalanced_sms):
    root, _ = imbalanced_sms
    runs = {}
    for spec in ("none", "balanced"):
        settings = BaselineSettings(C_grid=(10.0,), class_weights=spec)
        runs[spec] = run_baseline(root / "data", root / f"run-{spec}", settings, log=lambda *a: None)
    return root, runs


def test_balanced_weights_raise_the_minority_recall_of_the_baseline(imbalanced_sms, baseline_runs):
    _, meta = imbalanced_sms
    root, runs = baseline_runs
    assert imbalance_ratio(meta["splits"]["train"]["per_class"]) > 3
    recall = {spec: m["test"]["per_class"]["spam"]["recall"] for spec, m in runs.items()}
    assert recall["balanced"] > recall["none"] + 0.05, recall
    assert "class_weights: balanced" in (root / "run-balanced" / "config.yaml").read_text()


def test_the_report_says_the_training_split_is_imbalanced_and_what_was_done(imbalanced_sms, baseline_runs):
    import ftvs

    _, meta = imbalanced_sms
    ratio = imbalance_ratio(meta["splits"]["train"]["per_class"])
    root, _ = baseline_runs
    out = ftvs.compare(
        [root / "run-none", root / "run-balanced"], out=root / "cmp", formats="md", bootstrap=200
    )
    text = " ".join(open(out["report"]["md"], encoding="utf-8").read().split())
    assert f"The training split is imbalanced (largest class {ratio:.1f}× the smallest)" in text
    assert "class-weighted loss (`--class_weights`) in **run-balanced** only" in text
