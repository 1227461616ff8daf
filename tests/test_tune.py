"""`ftvs tune`: real searches on small generated intent data with a tiny from-scratch model.

Each neural trial is a real `python -m ftvs train` child process; the tests check the search finishes and
writes a best.yaml that `ftvs train` accepts, resumes after SIGKILL without repeating finished trials, never
reads the test split, and tunes the TF-IDF baseline in process.
"""

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from tiny_runs import child_env
from tune_tiny import CLASSES, INTENTS, SIMILAR_INTENTS, SPACE, TINY_SETTINGS
from tune_tiny import finished as _finished
from tune_tiny import prepare_intents as _prepare_intents
from tune_tiny import run as _run
from tune_tiny import tune_cmd as _tune_cmd

from ftvs.cli import main
from ftvs.errors import FtvsError
from ftvs.tune import tune_arm
from ftvs.tune.space import DEFAULT_SPACES, build_space


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return _prepare_intents(tmp_path_factory.mktemp("intents"), INTENTS)


@pytest.fixture(scope="module")
def similar_data_dir(tmp_path_factory):
    return _prepare_intents(tmp_path_factory.mktemp("similar"), SIMILAR_INTENTS, confusion=1 / 3)


@pytest.fixture(scope="module")
def space_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("space") / "space.yaml"
    path.write_text(yaml.safe_dump(SPACE))
    return path


@pytest.mark.slow
def test_scratch_search_writes_best_yaml_that_train_accepts(data_dir, space_file, tmp_path):
    out = tmp_path / "tune"
    done = subprocess.run(
        _tune_cmd(data_dir, out, space_file, 3), env=child_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "trial 3/3" in done.stderr and "best val macro-F1" in done.stderr and "ETA" in done.stderr
    summary = json.loads((out / "tune.json").read_text())
    assert summary["status"] == "completed" and summary["arm"] == "scratch"
    assert len(_finished(summary)) == 3 and summary["budget"]["exhausted_by"] == "n_trials"
    for t in summary["trials"]:
        assert set(t["params"]) == {"learning_rate", "dropout", "pooling"}
        run = Path(t["run_dir"])
        assert (run / "history.jsonl").is_file() and (run / "trial.yaml").is_file()
        assert not (run / "checkpoint").exists() and not (run / "model").exists()  # trials keep no weights
        assert not (run / "metrics.json").exists()  # --no-evaluate: no test scores in a trial
    # the first trial is the arm's defaults (learning rate 1e-3, dropout 0.1) inside the space
    first = summary["trials"][0]
    assert first["defaults"] and first["params"]["learning_rate"] == pytest.approx(1e-3)
    best = summary["best"]
    complete = [t["value"] for t in summary["trials"] if t["state"] == "COMPLETE"]
    assert best["value"] == max(complete) > 1 / CLASSES
    # the score is the run's own best validation macro-F1
    run_summary = json.loads(
        (Path(summary["trials"][best["number"]]["run_dir"]) / "train_summary.json").read_text()
    )
    assert run_summary["best_val_macro_f1"] == pytest.approx(best["value"])
    hist = summary["history"]
    assert [h["finished"] for h in hist] == [1, 2, 3] and hist[-1]["best_value"] == best["value"]
    assert all(a["elapsed_seconds"] < b["elapsed_seconds"] for a, b in zip(hist, hist[1:]))
    assert summary["importance"]["evaluator"] == "fanova"
    if len(complete) >= 2:
        assert set(summary["importance"]["params"]) == {"learning_rate", "dropout", "pooling"}

    cfg = yaml.safe_load((out / "best.yaml").read_text())
    assert (
        cfg["learning_rate"] == best["params"]["learning_rate"] and cfg["n_embd"] == 32 and "data" not in cfg
    )
    run = tmp_path / "retrain"
    assert (
        main(
            [
                "train",
                "scratch",
                "--config",
                str(out / "best.yaml"),
                "--data",
                str(data_dir),
                "--output_dir",
                str(run),
                "--disable_tqdm",
            ]
        )
        == 0
    )
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["learning_rate"] == pytest.approx(best["params"]["learning_rate"])
    assert saved["pooling"] == best["params"]["pooling"]
    assert json.loads((run / "metrics.json").read_text())["test"]["accuracy"] > 1 / CLASSES


@pytest.mark.slow
def test_sigkilled_search_resumes_without_repeating_finished_trials(data_dir, space_file, tmp_path):
    out = tmp_path / "tune"
    cmd = _tune_cmd(data_dir, out, space_file, 3) + ["--pruner", "none"]
    proc = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = out / "trials" / "0001"
    try:
        deadline = time.time() + 240
        while not (second / "train.log").is_file():  # kill once the second trial's child has started
            assert proc.poll() is None, "the search ended before it could be killed"
            assert time.time() < deadline, "the second trial never started"
            time.sleep(0.1)
        time.sleep(1.0)
        children = _processes_mentioning(str(second))
        assert children, "no training child for the second trial"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    first = json.loads((out / "tune.json").read_text())
    done_before = {t["number"]: t for t in _finished(first)}
    assert list(done_before) == [0]
    stamp = (out / "trials" / "0000" / "history.jsonl").stat().st_mtime_ns
    for _ in range(100):  # the training child dies with the search: no orphan keeps training
        if not _processes_mentioning(str(second)):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"training child {children} outlived the killed search")

    done = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "tune.json").read_text())
    finished = _finished(summary)
    assert len(finished) == 3 and summary["budget"]["trials_finished"] == 3
    by_number = {t["number"]: t for t in summary["trials"]}
    assert by_number[0]["value"] == done_before[0]["value"]  # not rerun
    assert (out / "trials" / "0000" / "history.jsonl").stat().st_mtime_ns == stamp
    assert by_number[1]["state"] == "FAIL"  # the trial the kill interrupted...
    retry = [t for t in summary["trials"] if t["retry_of"] == 1]
    assert len(retry) == 1 and retry[0]["state"] == "COMPLETE"  # ...ran again with the same parameters
    assert retry[0]["params"] == by_number[1]["params"]
    assert sum(t["state"] == "COMPLETE" for t in summary["trials"]) == 3


def _spans(summary) -> list[tuple[float, float]]:
    return sorted((t["started_at"], t["ended_at"]) for t in summary["trials"])


def _most_at_once(spans) -> int:
    return max(sum(s <= start < e for s, e in spans) for start, _ in spans)


@pytest.mark.slow
def test_parallel_trials_run_two_at_once_within_the_budget(data_dir, space_file, tmp_path):
    out = tmp_path / "tune"
    done = _run(_tune_cmd(data_dir, out, space_file, 4) + ["--pruner", "none", "--parallel", "2"])
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "tune.json").read_text())
    assert len(_finished(summary)) == 4 == len(summary["trials"])  # the budget counts running trials
    assert summary["executor"] == {"name": "local", "trials_at_once": 2}
    assert summary["sampler"]["constant_liar"] and summary["storage"] == "sqlite:optuna.db"
    assert _most_at_once(_spans(summary)) == 2
    assert len({json.dumps(t["params"], sort_keys=True) for t in summary["trials"]}) == 4
    for t in summary["trials"]:  # each of the two runs at once got one of the two cores
        head = (Path(t["run_dir"]) / "train.log").read_text().splitlines()
        assert any(line.startswith("=== ") and "--no-evaluate" in line for line in head)
    assert summary["best"]["value"] == max(t["value"] for t in summary["trials"])


def test_storage_is_the_folders_own_then_the_executors_default(tmp_path):
    from ftvs.tune.storage import choose, open_storage

    assert choose(tmp_path, None, shared=False) == "sqlite"
    assert choose(tmp_path, None, shared=True) == "journal"
    (tmp_path / "optuna.db").write_bytes(b"")
    assert choose(tmp_path, None, shared=True) == "sqlite"  # a folder keeps the storage it started with
    with pytest.raises(FtvsError, match="holds a search in optuna.db"):
        choose(tmp_path, "journal", shared=True)
    with pytest.raises(FtvsError, match="use sqlite, journal or a database URL"):
        choose(tmp_path, "postgres", shared=False)
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    assert choose(tmp_path / "a", url, shared=False) == url
    with pytest.raises(FtvsError, match="--storage sqlite"):
        choose(tmp_path, url, shared=False)  # not a search that lives in the folder's optuna.db
    _, name, described = open_storage(tmp_path / "a", url)
    _, other, _ = open_storage(tmp_path / "b", url)
    assert name != other and described == url  # one database, a study per tune folder


def _processes_mentioning(text: str) -> list[int]:
    """Live (not zombie) processes whose command line contains `text`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if (
                text in (proc / "cmdline").read_bytes().decode(errors="replace")
                and "\nState:\tZ" not in (proc / "status").read_text()
            ):
                found.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return found


@pytest.mark.slow
def test_tuning_never_reads_the_test_split_and_prunes_a_trailing_trial(data_dir, tmp_path):
    import optuna

    blind = tmp_path / "data_without_test"
    shutil.copytree(data_dir, blind)
    (blind / "test.jsonl").unlink()
    out = tmp_path / "tune"
    out.mkdir()
    # two trials that learn (8 epochs), then one whose learning rate cannot move the model: the median
    # pruner must stop it after its 2nd epoch, below the median of the two completed trials there. That
    # one may run 400 epochs (~0.1 s each here): it must be stopped long before. With 8 or 24 epochs it
    # could end first when a loaded machine held up the search's 0.5 s polls for ~2 s (seen in CI)
    study = optuna.create_study(
        study_name="ftvs-tune", storage=f"sqlite:///{out / 'optuna.db'}", direction="maximize"
    )
    for lr, epochs in ((1e-2, 8), (5e-3, 8), (1e-6, 400)):
        params = {"learning_rate": lr, "dropout": 0.0, "pooling": "mean", "num_train_epochs": epochs}
        study.enqueue_trial(params)
    space = {
        **SPACE,
        "learning_rate": {"low": 1e-6, "high": 3e-2, "log": True},
        "num_train_epochs": [8, 400],
    }
    per_trial_epochs = {k: v for k, v in TINY_SETTINGS.items() if k != "num_train_epochs"}
    summary = tune_arm(
        "scratch",
        blind,
        out,
        base={**per_trial_epochs, "early_stopping_patience": 0},
        space=space,
        n_trials=3,
        seed=1,
        progress=False,
    )
    states = [t["state"] for t in summary["trials"]]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED"], summary["trials"]
    pruned = summary["trials"][2]
    assert pruned["epochs_run"] == 2 and list(pruned["val_macro_f1_per_epoch"]) == ["1", "2"]
    assert (
        len((Path(pruned["run_dir"]) / "history.jsonl").read_text().splitlines()) < 400
    )  # the child was stopped
    assert summary["best"]["number"] in (0, 1) and summary["budget"]["trials_finished"] == 3
    assert not (blind / "test.jsonl").exists()


def test_baseline_search_in_process(similar_data_dir, tmp_path):
    data_dir = similar_data_dir
    blind = tmp_path / "data_without_test"
    shutil.copytree(data_dir, blind)
    (blind / "test.jsonl").unlink()
    out = tmp_path / "tune"
    summary = tune_arm("baseline", blind, out, n_trials=4, seed=0, progress=False, base={"max_iter": 200})
    trials = summary["trials"]
    assert len(trials) == 4 and all(t["state"] == "COMPLETE" for t in trials)
    assert trials[0]["defaults"] and trials[0]["params"] == {
        "C": 10.0,
        "word_ngrams": "1,2",
        "char_ngrams": "2,5",
    }
    assert summary["best"]["value"] == max(t["value"] for t in trials) > 0.5
    assert summary["importance"]["params"] is not None
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["C"] == summary["best"]["params"]["C"] and best["max_iter"] == 200
    # the command in tune.json trains exactly that configuration with `ftvs baseline`
    args = summary["best"]["command"].split()[2:]
    run = tmp_path / "run"
    args = [str(data_dir) if a == "DATA" else str(run) if a == "RUN_DIR" else a for a in args]
    assert main(["baseline", *args]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["training"]["model_selection"]["chosen_C"] == pytest.approx(best["C"])
    assert metrics["best_val"]["macro_f1"] == pytest.approx(summary["best"]["value"], abs=1e-6)
    # rerun with the same budget: nothing left to do, nothing repeated
    again = tune_arm("baseline", blind, out, n_trials=4, seed=0, progress=False, base={"max_iter": 200})
    assert [t["number"] for t in again["trials"]] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "arm,method",
    [
        ("scratch", None),
        ("finetune", "lora"),
        ("finetune", "full"),
        ("finetune", "frozen"),
        ("finetune", "unfreeze"),
        ("baseline", None),
    ],
)
def test_default_spaces_only_hold_valid_settings(arm, method, tmp_path):
    import optuna

    from ftvs.config import build_config
    from ftvs.tune.search import _check_space
    from ftvs.tune.space import suggest
    from ftvs.tune.trials import baseline_settings

    space = build_space(arm, method)
    assert set(space) == set(DEFAULT_SPACES[method or arm])
    base = {} if arm == "baseline" else {"data": "d", "method": method} if method else {"data": "d"}
    _check_space(arm, space, base, 0)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        params = suggest(study.ask(), space)
        if arm == "baseline":
            baseline_settings(params, {}, 0)
        else:
            build_config({**base, **params}, {"arm": arm, "output_dir": str(tmp_path)})


def test_space_overrides_and_their_errors(data_dir, tmp_path, capsys):
    space = build_space(
        "scratch",
        None,
        {
            "pooling": ["mean"],
            "preset": "tiny",
            "token_dropout": None,
            "learning_rate": {"low": "1e-4", "high": "1e-2", "log": True},
            "num_train_epochs": {"low": 2, "high": 6},
        },
    )
    assert "token_dropout" not in space and space["preset"].fixed == "tiny"
    assert space["learning_rate"].low == 1e-4 and space["num_train_epochs"].kind is int
    bad = [
        ({"lora_r": [4, 8]}, "not a setting of the scratch arm"),
        ({"seed": [1, 2]}, "not searchable"),
        ({"dropout": {"low": 0.3, "high": 0.1}}, "must be below high"),
        ({"learning_rate": {"low": 0.0, "high": 0.1, "log": True}}, "log range needs low > 0"),
        ({"pooling": {"low": 1, "high": 2}}, "list of choices"),
        ({"learn_rate": [0.1]}, "did you mean 'learning_rate'"),
    ]
    for override, message in bad:
        with pytest.raises(FtvsError, match=message):
            build_space("scratch", None, override)
    # a value train refuses is caught before any trial runs
    with pytest.raises(FtvsError, match="search space dropout=1.5"):
        tune_arm(
            "scratch", data_dir, tmp_path / "t", space={"dropout": [0.1, 1.5]}, n_trials=1, progress=False
        )
    with pytest.raises(FtvsError, match="no budget"):
        tune_arm("scratch", data_dir, tmp_path / "t", progress=False)
    assert (
        main(
            [
                "tune",
                "--arm",
                "baseline",
                "--data",
                str(data_dir),
                "--output_dir",
                str(tmp_path / "b"),
                "--n_trials",
                "1",
                "--n_layer",
                "2",
            ]
        )
        == 2
    )
    # the command line, and a resumed search must be the same search
    cmd = ["tune", "--arm", "baseline", "--data", str(data_dir), "--output_dir", str(tmp_path / "same")]
    assert main([*cmd, "--n_trials", "1", "--set", "max_iter=300"]) == 0
    assert "train it: ftvs baseline" in capsys.readouterr().out
    assert yaml.safe_load((tmp_path / "same" / "best.yaml").read_text())["max_iter"] == 300
    assert main([*cmd, "--n_trials", "2", "--set", "max_iter=300", "--seed", "5"]) == 2
    assert "holds a different search" in capsys.readouterr().err


@pytest.mark.slow
def test_lora_search_on_a_tiny_pretrained_model(data_dir, tiny_llama_dir, tmp_path):
    out = tmp_path / "tune"
    base = {
        "model_name_or_path": str(tiny_llama_dir),
        "max_seq_length": 24,
        "num_train_epochs": 2,
        "mixed_precision": "no",
        "per_device_train_batch_size": 16,
    }
    space = {"defaults": False, "learning_rate": {"low": 1e-4, "high": 2e-3, "log": True}, "lora_r": [4, 8]}
    summary = tune_arm(
        "finetune", data_dir, out, method="lora", base=base, space=space, n_trials=2, progress=False
    )
    assert summary["method"] == "lora" and len(_finished(summary)) == 2
    assert summary["trials"][0]["params"]["learning_rate"] == pytest.approx(5e-4)  # the LoRA default first
    saved = yaml.safe_load((Path(summary["trials"][1]["run_dir"]) / "config.yaml").read_text())
    assert saved["arm"] == "finetune" and saved["method"] == "lora" and saved["lora_r"] in (4, 8)
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["method"] == "lora" and best["model_name_or_path"] == str(tiny_llama_dir)
    assert best["lora_r"] == summary["best"]["params"]["lora_r"]


def test_budget_in_seconds_counts_time_spent_in_trials(similar_data_dir, tmp_path, capsys):
    summary = tune_arm("baseline", similar_data_dir, tmp_path / "t", timeout=0.5, seed=0)
    used = summary["budget"]["seconds_used"]
    assert summary["budget"]["exhausted_by"] == "timeout" and used >= 0.5
    assert used == pytest.approx(sum(t["seconds"] for t in summary["trials"]))
    # the seconds before the last trial were under the budget: no trial started after it was spent
    assert used - summary["trials"][-1]["seconds"] < 0.5
    assert summary["history"][-1]["elapsed_seconds"] == pytest.approx(used)
    assert "ETA" in capsys.readouterr().err
