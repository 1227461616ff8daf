"""A hostile user against results (issue 23, wrong or silent results): fixed settings that the search
varied anyway, ranges rounded or outside a setting's rules, infinite class weights, predictions that
disagree with the scores, bools taken for counts, and label names that a Markdown viewer would run as HTML.
Real tiny data and TF-IDF runs (seconds each) through the CLI and the Python API."""

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from tiny_runs import (
    INTENTS,
    SCRATCH_FLAGS,
    TINY_SCRATCH,
    assert_one_line_error,
    baseline_run,
    prepare_tiny_dataset,
)

import ftvs
from ftvs.cli import main
from ftvs.config import TrainConfig
from ftvs.errors import FtvsError
from ftvs.tune import tune_arm
from ftvs.tune.space import build_space


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return prepare_tiny_dataset(tmp_path_factory.mktemp("hostile_results"))


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key written twice (PyYAML keeps the last one silently)."""


def _unique_mapping(loader, node, deep=False):
    keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
    assert len(keys) == len(set(keys)), f"a key written twice: {keys}"
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def test_a_setting_fixed_by_the_user_is_never_searched(data, tmp_path, capsys):
    """Item 3: `--set num_train_epochs=1` and the trials still ran 11 and 7 epochs."""
    assert "num_train_epochs" not in build_space("scratch", None, None, fixed={"num_train_epochs": 1})
    out = tmp_path / "tune"
    argv = ["tune", "--arm", "baseline", "--data", str(data), "--output_dir", str(out), "--n_trials", "3"]
    assert main([*argv, "--set", "word_ngrams=[1, 1]"]) == 0
    summary = json.loads((out / "tune.json").read_text())
    assert "word_ngrams" not in summary["space"]
    assert len(summary["trials"]) == 3 and all("word_ngrams" not in t["params"] for t in summary["trials"])
    best = yaml.load((out / "best.yaml").read_text(), Loader=UniqueKeyLoader)
    assert best["word_ngrams"] == [1, 1]
    # searching it as well is a contradiction, said before any trial
    space = tmp_path / "space.yaml"
    space.write_text("num_train_epochs: {low: 2, high: 4}\n")
    scratch = ["tune", "--arm", "scratch", "--data", str(data), "--n_trials", "1", "--space", str(space)]
    assert_one_line_error(
        capsys,
        [*scratch, "--output_dir", str(tmp_path / "t2"), "--set", "num_train_epochs=1"],
        "'num_train_epochs' is fixed to 1",
    )
    assert not (tmp_path / "t2" / "trials").exists()


@pytest.mark.parametrize(
    "arm, space, needle",
    [
        (
            "scratch",
            "num_train_epochs: {low: 1.5, high: 3}",
            "num_train_epochs.low=1.5 is not a whole number",
        ),
        ("finetune", "lora_r: {low: 0, high: 4}", "lora_r=0"),
        ("scratch", "num_train_epochs: [2, true]", "num_train_epochs.choices=True is not a whole number"),
    ],
)
def test_each_search_range_follows_its_settings_rules(data, tmp_path, capsys, arm, space, needle):
    """Item 6: a range end of 1.5 became 1 silently, and `lora_r: {low: 0}` was accepted although
    `--lora_r 0` is not; both are refused before trial 1."""
    path = tmp_path / "space.yaml"
    path.write_text(space + "\n")
    out = tmp_path / "tune"
    argv = ["tune", "--arm", arm, "--data", str(data), "--output_dir", str(out), "--n_trials", "1"]
    # a model that does not exist: an accepted space would fail in its first trial instead
    model = ["--model_name_or_path", str(tmp_path / "no-model")] if arm == "finetune" else []
    assert_one_line_error(capsys, [*argv, *model, "--space", str(path)], needle)
    assert not (out / "trials").exists()


def test_class_weights_must_be_finite(data, tmp_path, capsys):
    """Item 4: a weight of Infinity ran the baseline for 0 iterations to macro-F1 0.10 (exit 0), and made
    `ftvs train` fail later with a learning-rate hint."""
    weights = tmp_path / "weights.json"
    weights.write_text(json.dumps({sorted(INTENTS)[0]: float("inf")}))  # JSON's `Infinity`
    flag = ["--class_weights", str(weights)]
    out = tmp_path / "bl"
    assert_one_line_error(
        capsys, ["baseline", "--data", str(data), "--output_dir", str(out), *flag], "finite number > 0"
    )
    assert not out.exists()
    run = tmp_path / "run"
    err = assert_one_line_error(
        capsys,
        ["train", "scratch", "--data", str(data), "--output_dir", str(run), *SCRATCH_FLAGS, *flag],
        "finite number > 0",
    )
    assert "learning_rate" not in err and not (run / "history.jsonl").exists()


def test_compare_refuses_predictions_that_disagree_with_the_metrics(data, tmp_path, capsys):
    """Item 7: predictions.json edited, metrics.json untouched: the report called the run the best model
    with accuracy 1.0 and, in the same breath, 1.0 below TF-IDF."""
    good = baseline_run(data, tmp_path / "good")
    edited = tmp_path / "edited"
    shutil.copytree(good, edited)
    p = json.loads((edited / "predictions.json").read_text())
    p["y_pred"] = [0] * len(p["y_pred"])
    (edited / "predictions.json").write_text(json.dumps(p))
    cmp = ["compare", str(good), str(edited), "--out", str(tmp_path / "cmp"), "--formats", "md"]
    err = assert_one_line_error(capsys, cmp, "predictions.json does not match metrics.json")
    assert str(edited) in err and "accuracy 0.2500 vs 1.0" in err
    assert not (tmp_path / "cmp" / "report.md").exists()


def test_one_rule_for_counts_everywhere(data, tmp_path, capsys):
    """Item 8: True trained 1 epoch, `--max_train_steps -5` exited 0, `tune --parallel 0` ran."""
    with pytest.raises(FtvsError, match="invalid num_train_epochs=True: must be an integer"):
        ftvs.train("scratch", data, tmp_path / "r", num_train_epochs=True, **TINY_SCRATCH)
    for key in ("num_train_epochs", "max_train_steps", "lora_r", "save_steps"):
        with pytest.raises(FtvsError, match=f"invalid {key}=True"):
            TrainConfig(**{key: True}).validate()
    assert not (tmp_path / "r").exists()
    train = ["train", "scratch", "--data", str(data), "--output_dir", str(tmp_path / "r"), *SCRATCH_FLAGS]
    assert_one_line_error(capsys, [*train, "--max_train_steps", "-5"], "max_train_steps=-5")
    assert_one_line_error(capsys, [*train, "--max_train_steps", "0"], "max_train_steps=0")
    tune = ["tune", "--arm", "baseline", "--data", str(data), "--output_dir", str(tmp_path / "t")]
    for n in ("0", "-3"):
        assert_one_line_error(capsys, [*tune, "--n_trials", "2", "--parallel", n], f"--parallel {n}")
    assert_one_line_error(capsys, [*tune, "--n_trials", "2", "--set", "min_df=0"], "--min_df 0")
    with pytest.raises(FtvsError, match="--n_trials True"):
        tune_arm("baseline", data, tmp_path / "t", n_trials=True)
    for bad in ({"max_iter": True}, {"min_df": 0}, {"max_features": 0}):
        with pytest.raises(FtvsError, match=f"--{next(iter(bad))} {next(iter(bad.values()))}"):
            ftvs.baseline(data, tmp_path / "b", **bad)
    with pytest.raises(FtvsError, match="--batch-size True"):
        ftvs.evaluate(tmp_path / "b", batch_size=True)
    study = ["study", "--preset", "quick", "--output_dir", str(tmp_path / "s"), "--set"]
    assert_one_line_error(capsys, [*study, "data.max_train_examples=true"], "data.max_train_examples")
    assert not any((tmp_path / name).exists() for name in ("t", "s", "b"))


def test_report_md_shows_html_in_label_names_as_text(tmp_path):
    """Also: label names and texts such as <script>...</script> went into report.md raw (report.html escaped
    them)."""
    names = {"<script>alert(1)</script>": "card", "<img src=x onerror=alert(1)>": "refund", "plain": "pin"}
    rows = [
        (f"<iframe src=x> {INTENTS[topic]} {i}", name) for name, topic in names.items() for i in range(24)
    ]
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "train.csv", "w", encoding="utf-8") as f:
        f.write("text,label\n" + "".join(f'"{t}","{n}"\n' for t, n in rows))
    data = tmp_path / "data"
    ftvs.prepare(str(src), data, tokenizer="none")
    run = baseline_run(data, tmp_path / "bl")
    ftvs.compare([run], out=tmp_path / "cmp", formats="md")
    md = (tmp_path / "cmp" / "report.md").read_text(encoding="utf-8")
    outside_code = re.sub(r"`[^`]+`", "", md)
    # the names and texts are shown (the data set's examples) ...
    for shown in ("&lt;script>alert(1)&lt;/script>", "&lt;img src=x onerror=alert(1)>", "&lt;iframe src=x>"):
        assert shown in md, shown
    assert not re.search(r"<[a-z/]", outside_code), outside_code  # ... and never as HTML
