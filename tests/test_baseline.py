"""TF-IDF + logistic-regression baseline: real 20 Newsgroups texts in Banking77's CSV format, same run-dir
outputs as a neural run."""

import json

import numpy as np
import pytest
import yaml
from builders import HISTORY_KEYS, METRIC_KEYS, newsgroups_csv

from ftvs.baseline import BaselineModel
from ftvs.cli import main
from ftvs.data import load_split, prepare
from ftvs.errors import FtvsError
from ftvs.metrics import classification_metrics


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("baseline_data")
    src = newsgroups_csv(root / "csv", per_class_train=45, per_class_test=23)  # 20 classes: 900 / 460
    prepare(str(src), root / "data", seed=0, tokenizer="none")
    return root / "data"


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "baseline"
    assert main(["baseline", "--data", str(data_dir), "--output_dir", str(out), "--C_grid", "5,20"]) == 0
    return out


def test_writes_the_documented_run_dir(run, data_dir):
    for name in (
        "metrics.json",
        "predictions.json",
        "config.yaml",
        "history.jsonl",
        "train_summary.json",
        "training_curves.png",
        "confusion_matrix.png",
        "model/ftvs.json",
    ):
        assert (run / name).is_file(), name
    m = json.loads((run / "metrics.json").read_text())
    assert METRIC_KEYS <= set(m)
    assert (m["arm"], m["method"]) == ("baseline", "tfidf_logreg")
    tr = m["training"]
    assert tr["epochs_run"] == 1 and tr["best_epoch"] == 1 and tr["status"] == "completed"
    assert tr["seconds_per_epoch"] == tr["seconds_total"] > 0
    assert m["inference"]["seconds_per_1000"] == pytest.approx(
        m["inference"]["seconds_total"] / m["num_test_examples"] * 1000
    )
    assert set(m["train_val_gap"]) == {"best", "last"} and set(m["best_val"]) == {
        "accuracy",
        "macro_f1",
        "loss",
    }
    # params = coefficients + intercepts of every class
    n_feat = m["model"]["architecture"]["num_features"]
    assert m["params"]["total"] == m["params"]["trainable"] == 20 * (n_feat + 1)
    assert m["model"]["tokenizer"]["vocab_size"] == n_feat
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["arm"] == "baseline" and cfg["C"] in (5.0, 20.0) and cfg["C_grid"] == [5.0, 20.0]
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert len(history) == 1 and HISTORY_KEYS <= set(history[0])
    # the gap follows `ftvs evaluate`: train minus val
    assert m["train_val_gap"]["last"]["macro_f1"] == pytest.approx(
        history[0]["train_macro_f1"] - history[0]["val_macro_f1"]
    )


def test_scores_come_from_the_one_metrics_function_on_the_test_file_order(run, data_dir):
    m = json.loads((run / "metrics.json").read_text())
    pred = json.loads((run / "predictions.json").read_text())
    texts, labels = load_split(data_dir, "test")
    assert pred["y_true"] == labels and len(pred["y_pred"]) == len(texts) == m["num_test_examples"]
    assert all(0.0 < c <= 1.0 for c in pred["confidence"])
    again = classification_metrics(pred["y_true"], pred["y_pred"], pred["label_names"])
    for key in ("accuracy", "macro_f1", "weighted_f1", "confusion_matrix"):
        assert m["test"][key] == again[key]
    # 20 classes, 45 examples each: chance is 5%; TF-IDF must be far above it
    assert m["test"]["accuracy"] > 0.4, m["test"]["accuracy"]


def test_model_is_saved_without_pickle_and_reloads_to_the_same_predictions(run, data_dir):
    model_dir = run / "model"
    files = sorted(p.name for p in model_dir.iterdir())
    assert files == [
        "README.md",
        "ftvs.json",
        "vocab.json",
        "weights.safetensors",
    ]  # README.md: the model card
    for p in model_dir.iterdir():
        assert not p.read_bytes()[:2] == b"\x80\x04", f"{p} looks like a pickle"
    m = json.loads((run / "metrics.json").read_text())
    # the card is written from metrics.json, after the size was measured
    assert m["size_on_disk_bytes"] == sum(
        p.stat().st_size for p in model_dir.iterdir() if p.name != "README.md"
    )
    model = BaselineModel.load(model_dir)
    texts, _ = load_split(data_dir, "test")
    proba = model.predict_proba(texts)
    pred = json.loads((run / "predictions.json").read_text())
    assert proba.argmax(1).tolist() == pred["y_pred"]
    assert np.allclose(proba.max(1), pred["confidence"], atol=1e-6)
    assert model.param_count() == m["params"]["total"]


def test_refuses_to_overwrite_a_neural_run_and_reports_bad_input(run, data_dir, tmp_path, capsys):
    neural = tmp_path / "scratch_run"
    (neural / "model").mkdir(parents=True)
    (neural / "model" / "ftvs.json").write_text(json.dumps({"arm": "scratch", "label_names": ["a"]}))
    assert main(["baseline", "--data", str(data_dir), "--output_dir", str(neural), "--C", "1"]) == 2
    assert "holds a 'scratch' run, not a 'baseline' one" in capsys.readouterr().err
    assert main(["baseline", "--data", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "r")]) == 2
    assert "ftvs prepare" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["baseline", "--data", str(data_dir), "--output_dir", str(tmp_path / "r"), "--C_grid", "a,b"])
    assert e.value.code == 2
    with pytest.raises(FtvsError, match="holds a 'scratch' model"):
        BaselineModel.load(neural / "model")


def test_a_config_file_is_taken_as_is_and_flags_override_it(tmp_path, capsys):
    from tiny_runs import prepare_tiny_dataset

    data = prepare_tiny_dataset(tmp_path, num_train=80, num_test=20)
    best = tmp_path / "best.yaml"  # as `ftvs tune --arm baseline` writes it
    best.write_text('C: 3.5\nword_ngrams: "1,1"\nchar_ngrams: [2, 4]\nmax_iter: 300\n')
    run = tmp_path / "run"
    assert main(["baseline", "--data", str(data), "--output_dir", str(run), "--config", str(best)]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["C_grid"] == [3.5] and saved["word_ngrams"] == [1, 1] and saved["char_ngrams"] == [2, 4]
    assert saved["max_iter"] == 300 and saved["min_df"] == 1
    other = tmp_path / "other"
    argv = ["baseline", "--data", str(data), "--output_dir", str(other), "--config", str(best), "--C", "2"]
    assert main([*argv, "--word_ngrams", "1,3"]) == 0
    saved = yaml.safe_load((other / "config.yaml").read_text())
    assert saved["C_grid"] == [2.0] and saved["word_ngrams"] == [1, 3] and saved["max_iter"] == 300
    best.write_text("C: 1\nmax_iters: 5\n")
    assert (
        main(["baseline", "--data", str(data), "--output_dir", str(tmp_path / "x"), "--config", str(best)])
        == 2
    )
    assert "unknown key 'max_iters'" in capsys.readouterr().err


def test_one_text_logits_equal_the_batched_scikit_learn_path(run, data_dir):
    """A single text (a served request, the batch-1 latency) skips scikit-learn's transform; on every test
    text its logits are the batched path's (sparse TF-IDF matrix @ weights) to float32 rounding."""
    model = BaselineModel.load(run / "model")
    texts, _ = load_split(data_dir, "test")
    texts = [*texts, "", "zzzz qqqq", "THE the The"]  # nothing in the vocabulary; case folding
    batched = model.logits(texts)
    one = np.stack([model.logits([t])[0] for t in texts])
    np.testing.assert_allclose(one, batched, rtol=1e-5, atol=1e-5)
    assert (one.argmax(1) == batched.argmax(1)).all()
    assert model.settings.sublinear_tf and model.word.norm == model.char.norm == "l2"
