"""Experiment tracking (`--report_to`) through Accelerate's trackers: TensorBoard, MLflow, Trackio, W&B.

A run logs its resolved config as hyperparameters, the training loss and learning rate every
`--logging_steps` batches, the train/val metrics of every epoch and, when the test split is evaluated
after training, the test metrics. Everything lands under RUN/logs/: TensorBoard in
`logs/tensorboard/<run name>`, MLflow in a local SQLite store `logs/mlflow.db` (unless MLFLOW_TRACKING_URI
is set; MLflow 3 no longer creates plain-folder stores), in the experiment `--tracking_project` (a study
passes its own name) or else the run's name.
Only the main process logs. The MLflow run id is kept in `logs/tracking.json`, so that a resumed run and
its later evaluation continue the same MLflow run.
"""

import importlib.util
import os
from pathlib import Path

from ftvs.errors import FtvsError, closest

# tracker name -> the pip package that provides it
TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "trackio": "trackio", "wandb": "wandb"}
LOGS_DIR = "logs"
STATE_FILE = "tracking.json"
MLFLOW_DB = "mlflow.db"


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

    def __init__(self, cfg, run_dir: Path, main: bool = True):
        self.names = parse_report_to(cfg.report_to) if main else []
        self.trackers = []
        if not self.names:
            return
        check_installed(self.names)
        run_dir = Path(run_dir)
        logs = run_dir / LOGS_DIR
        logs.mkdir(parents=True, exist_ok=True)
        self.state_path = logs / STATE_FILE
        from ftvs.fileio import read_json

        state = read_json(self.state_path) if self.state_path.is_file() else {}
        run_name = run_dir.resolve().name
        project = cfg.tracking_project or run_name
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        for name in self.names:
            tracker_cls = LOGGER_TYPE_TO_CLASS[name]
            if name == "tensorboard":
                tracker = tracker_cls(run_name, logs / "tensorboard")
            elif name == "mlflow":
                if "MLFLOW_TRACKING_URI" not in os.environ:
                    import mlflow

                    # MLflow 3 refuses a new plain-folder store: a SQLite file is its local store
                    mlflow.set_tracking_uri(f"sqlite:///{(logs / MLFLOW_DB).resolve()}")
                tracker = tracker_cls(
                    project,
                    logging_dir=str((logs / "mlartifacts").resolve()),
                    run_id=state.get("mlflow_run_id"),
                    run_name=run_name,
                )
            else:  # trackio, wandb: their project is the experiment, the run keeps the run's name
                tracker = tracker_cls(project, name=run_name)
            tracker.start()
            self.trackers.append(tracker)
        mlflow_run = next((t.active_run for t in self.trackers if t.name == "mlflow"), None)
        if mlflow_run is not None and not state.get("mlflow_run_id"):
            from ftvs.fileio import write_json

            write_json(self.state_path, {**state, "mlflow_run_id": mlflow_run.info.run_id})

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def log(self, values: dict, step: int | None = None) -> None:
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def log_config(self, cfg, resolved: dict) -> None:
        values = hyperparameters(cfg, resolved)
        for tracker in self.trackers:
            tracker.store_init_configuration(values)

    def log_step(self, step: int, loss: float, lr: float) -> None:
        self.log({"train/loss": loss, "train/learning_rate": lr}, step=step)

    def log_epoch(self, row: dict) -> None:
        """One history.jsonl row: train_*/val_* metrics and timing, at the epoch's last optimizer step."""
        self.log(_flat_numbers({k: v for k, v in row.items() if k != "step"}), step=row["step"])

    def log_test(self, metrics: dict, step: int | None = None) -> None:
        """metrics.json's test scores (accuracy, macro_f1, ..., loss) as `test_<name>`."""
        self.log(_flat_numbers(metrics.get("test", {}), prefix="test_"), step=step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []


def log_test_metrics(cfg, metrics: dict) -> None:
    """After training, on the main process: add a run's test metrics to its trackers (if any)."""
    if not parse_report_to(cfg.report_to):
        return
    from accelerate import PartialState

    run_dir = Path(cfg.output_dir)
    tracker = RunTracker(cfg, run_dir, main=PartialState().is_main_process)
    try:
        from ftvs.rundir import read_summary

        step = read_summary(run_dir).get("global_step")
        tracker.log_test(metrics, step=step)
    finally:
        tracker.close()
