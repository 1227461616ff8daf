"""Experiment tracking (`--report_to`) through Accelerate's trackers: TensorBoard, MLflow, Trackio, W&B.

A run logs its resolved config as hyperparameters, the training loss and learning rate every
`--logging_steps` batches, the train/val metrics of every epoch and, when the test split is evaluated
after training, the test metrics. Everything lands under RUN/logs/: TensorBoard in
`logs/tensorboard/<run name>`, MLflow in a local SQLite store `logs/mlflow.db` (unless MLFLOW_TRACKING_URI
is set; MLflow 3 no longer creates plain-folder stores), in the experiment `--tracking_project` (a study
passes its own name) or else the run's name.
Only the main process logs. The MLflow run id is kept in `logs/tracking.json`, so that a resumed run and
its later evaluation continue the same MLflow run.

A tracker never hangs or kills a run: an MLflow server set by MLFLOW_TRACKING_URI is checked once
before training, with short timeouts (`check_reachable`, a one-line error); a tracker that fails later
is dropped with one warning, training goes on, and the failure is kept in `logs/tracking.json` and in
metrics.json (`training.tracker_failures`).
"""

import contextlib
import importlib.util
import os
import sys
from pathlib import Path

from ftvs.errors import FtvsError, closest

# tracker name -> the pip package that provides it
TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "trackio": "trackio", "wandb": "wandb"}
LOGS_DIR = "logs"
STATE_FILE = "tracking.json"
MLFLOW_DB = "mlflow.db"
# MLflow's HTTP client retries for minutes by default; a run waits seconds for a server that is gone
MLFLOW_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# (run folder, tracker) that failed in this process; a resumed run, a new process, tries them again
_FAILED_HERE: set[tuple[Path, str]] = set()


def parse_report_to(value) -> list[str]:
    """`none`, `all`, one tracker name or a comma list of them (a list is accepted too) -> tracker names."""
    parts = value if isinstance(value, list | tuple) else str(value or "none").split(",")
    names = [str(p).strip().lower() for p in parts if str(p).strip()]
    if names in ([], ["none"]):
        return []
    if names == ["all"]:
        return [n for n, package in TRACKERS.items() if importlib.util.find_spec(package)]
    for word in ("none", "all"):
        if word in names:  # a word that stands alone, in a list with tracker names
            raise FtvsError(
                f"invalid report_to={value!r}: {word!r} stands alone, not in a list with other names; "
                f"use --report_to {word}, or a comma list of {', '.join(TRACKERS)}"
            )
    allowed = ("none", "all", *TRACKERS)
    for name in names:
        if name not in TRACKERS:
            raise FtvsError(
                f"invalid report_to={value!r}: unknown tracker {name!r}{closest(name, allowed)}; "
                f"use none, all, or a comma list of {', '.join(TRACKERS)}"
            )
    return list(dict.fromkeys(names))


def check_installed(names: list[str]) -> None:
    for name in names:
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise FtvsError(
                f"--report_to {name} needs the {TRACKERS[name]} package; `pip install {TRACKERS[name]}` "
                "(or `pip install ftvs[tracking]`) or drop it from --report_to"
            )


def check_reachable(cfg) -> None:
    """Before a run starts: the MLflow store that MLFLOW_TRACKING_URI names answers (one quick query with
    short timeouts), or a one-line error. The local default store (RUN/logs/mlflow.db) needs no check."""
    names = parse_report_to(cfg.report_to)
    check_installed(names)
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if "mlflow" not in names or not uri:
        return
    for key, value in MLFLOW_HTTP.items():
        os.environ.setdefault(key, value)
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as e:  # MLflow raises many types (unsupported scheme, connection refused, ...)
        raise FtvsError(
            f"--report_to mlflow: the MLflow tracking store MLFLOW_TRACKING_URI={uri} does not answer "
            f"({_reason(e)}); start the server or fix MLFLOW_TRACKING_URI (unset it for a local store in "
            "RUN/logs/mlflow.db), or drop mlflow from --report_to"
        ) from None


def _reason(e: BaseException) -> str:
    """What went wrong, short: the innermost OS error under `e` (MLflow wraps "Connection refused" in
    four layers of retry messages), else `e` itself."""
    chain, inner = e, None
    while chain is not None:
        inner = chain if isinstance(chain, OSError) else inner
        chain = chain.__cause__ or chain.__context__
    return " ".join(str(inner or e).split())[:200] or type(e).__name__


def tracker_failures(run_dir) -> dict:
    """{tracker name: why it failed} of a run's trackers that failed and were dropped ({} when none)."""
    path = Path(run_dir) / LOGS_DIR / STATE_FILE
    if not path.is_file():
        return {}
    from ftvs.fileio import read_json

    return read_json(path, "tracking state").get("failures") or {}


def hyperparameters(cfg, resolved: dict) -> dict:
    """The config and what the run derived from it, flat, as values every tracker accepts."""
    flat = {**cfg.to_dict(), **{f"resolved/{k}": v for k, v in (resolved or {}).items()}}
    return {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in flat.items()}


def _flat_numbers(values: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in values.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, int | float):
            out[prefix + k] = v
    return out


class RunTracker:
    """The trackers of one run (none when `--report_to none` or not the main process)."""

    def __init__(self, cfg, run_dir: Path, main: bool = True, skip_failed: bool = False):
        """`skip_failed`: leave out the trackers that already failed in this process (logging the test
        scores after training: one warning per failure, not one per phase)."""
        self.names = parse_report_to(cfg.report_to) if main else []
        if skip_failed:
            self.names = [n for n in self.names if (Path(run_dir).resolve(), n) not in _FAILED_HERE]
        self.trackers = []
        if not self.names:
            return
        check_installed(self.names)
        for key, value in MLFLOW_HTTP.items():
            os.environ.setdefault(key, value)
        run_dir = Path(run_dir)
        logs = run_dir / LOGS_DIR
        logs.mkdir(parents=True, exist_ok=True)
        self.state_path = logs / STATE_FILE
        from ftvs.fileio import read_json

        state = read_json(self.state_path) if self.state_path.is_file() else {}
        self.run_name = run_dir.resolve().name
        self.project = cfg.tracking_project or self.run_name
        for name in self.names:
            try:
                tracker = self._start(name, logs, state)
            except Exception as e:
                self._failed(name, e)
            else:
                self.trackers.append(tracker)
        mlflow_run = next((t.active_run for t in self.trackers if t.name == "mlflow"), None)
        if mlflow_run is not None and not state.get("mlflow_run_id"):
            self._update_state(mlflow_run_id=mlflow_run.info.run_id)

    def _start(self, name: str, logs: Path, state: dict):
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        tracker_cls = LOGGER_TYPE_TO_CLASS[name]
        if name == "tensorboard":
            tracker = tracker_cls(self.run_name, logs / "tensorboard")
        elif name == "mlflow":
            if "MLFLOW_TRACKING_URI" not in os.environ:
                import mlflow

                # MLflow 3 refuses a new plain-folder store: a SQLite file is its local store
                mlflow.set_tracking_uri(f"sqlite:///{(logs / MLFLOW_DB).resolve()}")
            tracker = tracker_cls(
                self.project,
                logging_dir=str((logs / "mlartifacts").resolve()),
                run_id=state.get("mlflow_run_id"),
                run_name=self.run_name,
            )
        else:  # trackio, wandb: their project is the experiment, the run keeps the run's name
            tracker = tracker_cls(self.project, name=self.run_name)
        tracker.start()
        return tracker

    def _update_state(self, **values) -> None:
        from ftvs.fileio import read_json, write_json

        state = read_json(self.state_path) if self.state_path.is_file() else {}
        write_json(self.state_path, {**state, **values})

    def _failed(self, name: str, e: Exception) -> None:
        """A tracker that fails is dropped (warned once, recorded); the run goes on without it."""
        self.trackers = [t for t in self.trackers if t.name != name]
        _FAILED_HERE.add((self.state_path.parents[1].resolve(), name))
        if name == "mlflow" and "mlflow" in sys.modules:  # MLflow would end its active run at exit, again
            with contextlib.suppress(Exception):
                sys.modules["mlflow"].end_run(status="FAILED")
        reason = _reason(e)
        print(
            f"ftvs: warning: the {name} tracker failed ({reason}); training goes on without it (recorded "
            "in logs/tracking.json and metrics.json)",
            file=sys.stderr,
        )
        self._update_state(failures={**tracker_failures(self.state_path.parents[1]), name: reason})

    def _each(self, call) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as e:  # a tracker never stops training
                self._failed(tracker.name, e)

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def log(self, values: dict, step: int | None = None) -> None:
        self._each(lambda tracker: tracker.log(values, step=step))

    def log_config(self, cfg, resolved: dict) -> None:
        values = hyperparameters(cfg, resolved)
        self._each(lambda tracker: tracker.store_init_configuration(values))

    def log_step(self, step: int, loss: float, lr: float) -> None:
        self.log({"train/loss": loss, "train/learning_rate": lr}, step=step)

    def log_epoch(self, row: dict) -> None:
        """One history.jsonl row: train_*/val_* metrics and timing, at the epoch's last optimizer step."""
        self.log(_flat_numbers({k: v for k, v in row.items() if k != "step"}), step=row["step"])

    def log_test(self, metrics: dict, step: int | None = None) -> None:
        """metrics.json's test scores (accuracy, macro_f1, ..., loss) as `test_<name>`."""
        self.log(_flat_numbers(metrics.get("test", {}), prefix="test_"), step=step)

    def close(self) -> None:
        self._each(lambda tracker: tracker.finish())
        self.trackers = []


def log_test_metrics(cfg, metrics: dict) -> None:
    """After training, on the main process: add a run's test metrics to its trackers (if any)."""
    if not parse_report_to(cfg.report_to):
        return
    from accelerate import PartialState

    run_dir = Path(cfg.output_dir)
    tracker = RunTracker(cfg, run_dir, main=PartialState().is_main_process, skip_failed=True)
    try:
        from ftvs.rundir import read_summary

        step = read_summary(run_dir).get("global_step")
        tracker.log_test(metrics, step=step)
    finally:
        tracker.close()
    failures = tracker_failures(run_dir)
    if failures and failures != metrics.get("training", {}).get("tracker_failures"):
        from ftvs.fileio import write_json
        from ftvs.rundir import METRICS

        metrics.setdefault("training", {})["tracker_failures"] = failures  # failed logging the test scores
        write_json(run_dir / METRICS, metrics)
