"""The Python API (`from ftvs import prepare, train, evaluate, compare, study`): one function per command,
keyword arguments named like the command's flags, results returned as the dicts the command writes.

    import ftvs
    meta = ftvs.prepare("sms_spam", "data/sms", max_train_examples=1000)
    metrics = ftvs.train(arm="scratch", data="data/sms", output_dir="runs/sms", num_train_epochs=3)
    ftvs.compare(["runs/sms", "runs/other"], out="reports/sms")

Errors a user can fix raise `ftvs.errors.FtvsError`, as on the command line. See docs/api.md.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path

from ftvs.errors import FtvsError, check_keywords


def _keywords_checked(func):
    """A call with a keyword the function does not take (or a missing argument) is an FtvsError naming
    it and the valid keywords, as the command line names a wrong flag."""
    signature = inspect.signature(func)
    named = [n for n, p in signature.parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]

    @functools.wraps(func)
    def checked(*args, **kwargs):
        try:
            signature.bind(*args, **kwargs)
        except TypeError as e:
            check_keywords(f"ftvs.{func.__name__}()", kwargs, named)
            raise FtvsError(f"ftvs.{func.__name__}(): {e}; valid keywords: {', '.join(named)}") from None
        return func(*args, **kwargs)

    return checked


@_keywords_checked
def prepare(source: str, output_dir, **kw) -> dict:
    """`ftvs prepare SOURCE --output_dir DIR`: returns the folder's metadata.json. Keywords as the flags:
    text_column, label_column, validation_split, test_split, max_train_examples, seed, tokenizer, ..."""
    from ftvs.data import prepare as prepare_data

    valid = [p.name for p in inspect.signature(prepare_data).parameters.values() if p.kind == p.KEYWORD_ONLY]
    check_keywords("ftvs.prepare()", kw, valid)
    return prepare_data(str(source), output_dir, **kw)


@_keywords_checked
def train(
    arm: str = "scratch",
    data=None,
    output_dir=None,
    *,
    config=None,
    resume: bool = False,
    evaluate: bool = True,
    **config_overrides,
) -> dict:
    """`ftvs train ARM --data DATA --output_dir RUN [--config YAML] [--flag value ...]`.

    Returns the run's metrics.json (test scores, cost, ...) when `evaluate` (the default), else the
    training summary. Keywords other than these are TrainConfig fields, as the flags
    (`num_train_epochs=3`, `learning_rate=1e-3`, `report_to="tensorboard"`, ...)."""
    from ftvs.config import build_config, load_yaml
    from ftvs.tracking import log_test_metrics
    from ftvs.train import train as train_run

    values = {k: v for k, v in config_overrides.items() if v is not None}
    values.update(
        arm=arm, data=str(data) if data else None, output_dir=str(output_dir) if output_dir else None
    )
    file_values = load_yaml(config) if config else {}
    cfg = build_config({k: v for k, v in file_values.items() if k != "arm"}, values)
    if not cfg.data:
        raise FtvsError("no data given; prepare a dataset with ftvs.prepare(...) and pass data=its folder")
    summary = train_run(cfg, resume=resume)
    if not evaluate or summary.get("status") != "completed":
        return summary
    from ftvs.evaluate import evaluate_run

    metrics = evaluate_run(cfg.output_dir)
    log_test_metrics(cfg, metrics)
    return metrics


@_keywords_checked
def baseline(data, output_dir, **settings) -> dict:
    """`ftvs baseline --data DATA --output_dir RUN`: the TF-IDF + logistic regression run; returns its
    metrics.json. Keywords are `BaselineSettings` fields (C_grid, word_ngrams, class_weights, seed, ...)."""
    import dataclasses

    from ftvs.baseline import BaselineSettings, run_baseline

    fields = [f.name for f in dataclasses.fields(BaselineSettings) if f.name != "extra"]
    check_keywords("ftvs.baseline()", settings, [*fields, "run_name"])
    run_name = settings.pop("run_name", None)
    return run_baseline(data, output_dir, BaselineSettings(**settings), run_name=run_name)


@_keywords_checked
def evaluate(run_dir, split: str = "test", data=None, batch_size: int = 128) -> dict:
    """`ftvs evaluate RUN_DIR`: scores the run's best model on a split; returns metrics.json."""
    from ftvs.evaluate import evaluate_run

    return evaluate_run(run_dir, data, split, batch_size)


@_keywords_checked
def compare(
    run_dirs,
    out,
    *,
    report: bool = True,
    formats: str = "md,html",
    bootstrap: int = 2000,
    seed=0,
    constraints: dict | None = None,
) -> dict:
    """`ftvs compare RUN_DIR... --out DIR`: returns comparison.json's content (plus `report`: the paths
    of the report files written, when `report`). `constraints`: the deployment limits of the
    recommendation, e.g. `{"max_latency_ms": 5}` (the `--max_*`/`--min_macro_f1` flag names)."""
    from ftvs.comparison import compare as build_comparison
    from ftvs.report import build_report, parse_formats

    if not isinstance(run_dirs, str | Path | list | tuple) or not run_dirs:
        raise FtvsError(
            f"ftvs.compare() needs run_dirs: a run or study folder, or a list of them (got {run_dirs!r})"
        )
    if not isinstance(out, str | Path) or not str(out):
        raise FtvsError(f"ftvs.compare() needs out: the folder to write the comparison into (got {out!r})")
    runs = [str(run_dirs)] if isinstance(run_dirs, str | Path) else [str(r) for r in run_dirs]
    comparison = build_comparison(runs, str(out), n_resamples=bootstrap, seed=seed, constraints=constraints)
    if report:
        written = build_report(comparison, str(out), formats=parse_formats(formats))
        return {**comparison, "report": {k: str(v) for k, v in written.items()}}
    return comparison


@_keywords_checked
def study(
    preset: str | None = None, config=None, output_dir=None, *, overrides=(), quiet: bool = True
) -> dict:
    """`ftvs study [CONFIG.yaml | --preset NAME] --output_dir DIR [--set key=value ...]`: runs (or resumes)
    the whole study; returns its registry (study.json)."""
    from ftvs.study import Progress, Study, load_study_config

    cfg, preset = load_study_config(config, preset, tuple(overrides))
    out = Path(output_dir or Path("studies") / cfg["name"])
    source = str(config) if config else f"preset:{preset}"
    runner = Study(cfg, out, preset=preset, progress=Progress(quiet=quiet), config_source=source)
    return runner.run()
