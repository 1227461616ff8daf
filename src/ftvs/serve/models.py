"""The models `ftvs serve` answers with: which runs (run folders, or a study's contenders), each loaded
once through the same safe loading as `ftvs predict`, and what `GET /models` says about each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ftvs import rundir
from ftvs.errors import FtvsError
from ftvs.evaluate import Predictor, load_predictor

STUDY_FILE = "study.json"


@dataclass
class ServedModel:
    name: str
    run_dir: Path
    predictor: Predictor
    info: dict  # GET /models


def study_runs(study_dir) -> dict[str, Path]:
    """A study's contenders: per arm of its main comparison (no sweep), the evaluated run of the lowest
    seed, named after the arm (`tfidf`, `scratch-tiny`, `lora`, ...)."""
    from ftvs.study.registry import load_registry

    study_dir = Path(study_dir)
    reg = load_registry(study_dir / STUDY_FILE)
    if reg is None:
        raise FtvsError(f"{study_dir} holds no {STUDY_FILE}; pass a folder written by `ftvs study`")
    chosen: dict[str, tuple[int, Path]] = {}
    for entry in reg["runs"].values():
        run = study_dir / entry["run_dir"]
        if entry.get("sweep") != "main" or not rundir.is_evaluated(run):
            continue
        name = entry["arm_name"]
        if name not in chosen or entry["seed"] < chosen[name][0]:
            chosen[name] = (entry["seed"], run)
    if not chosen:
        raise FtvsError(
            f"{study_dir} has no evaluated run yet; let `ftvs study` finish, or pass run folders instead"
        )
    return {name: run for name, (_, run) in chosen.items()}


def named_runs(run_dirs, study_dir=None) -> dict[str, Path]:
    """Model name -> run folder: the study's contenders, then each RUN named after its folder (its parent
    folder's name is prefixed where two folders share a name)."""
    runs = study_runs(study_dir) if study_dir else {}
    for raw in run_dirs:
        run = Path(raw)
        if not (rundir.model_dir(run) / rundir.MODEL_MARKER).is_file():
            raise FtvsError(
                f"{run} holds no trained model ({rundir.MODEL_DIR}/{rundir.MODEL_MARKER}); pass a run folder "
                "written by `ftvs train` or `ftvs baseline`, or a study with --study"
            )
        if run.resolve() in {r.resolve() for r in runs.values()}:
            raise FtvsError(f"{run} is served twice (given twice, or also a --study contender); pass it once")
        name = run.resolve().name
        if name in runs or name == "all":
            name = f"{run.resolve().parent.name}/{name}"
        runs[name] = run
    if not runs:
        raise FtvsError("no model to serve; pass run folders (ftvs serve RUN ...) or --study STUDY_DIR")
    return runs


def describe(name: str, run: Path, predictor: Predictor) -> dict:
    """What GET /models says of one model: its run, arm and method, test scores, size and costs."""
    metrics = rundir.read_metrics(run) if rundir.is_evaluated(run) else {}
    marker = rundir.read_marker(run)
    test = metrics.get("test") or {}
    inference = metrics.get("inference") or {}
    return {
        "name": name,
        "run_dir": str(run),
        "arm": metrics.get("arm") or marker.get("arm"),
        "method": metrics.get("method"),
        "model_name": metrics.get("model_name"),
        "num_labels": len(predictor.label_names),
        "test": {k: test[k] for k in ("accuracy", "macro_f1", "weighted_f1") if k in test} or None,
        "params": metrics.get("params"),
        "size_on_disk_bytes": metrics.get("size_on_disk_bytes"),
        "precision": predictor.precision,
        "engine": predictor.engine,
        # the cost measured by `ftvs evaluate` on the test split (batch, device and threads recorded there)
        "inference_cost": {
            k: inference[k]
            for k in ("seconds_per_1000", "batch_size", "device", "precision")
            if k in inference
        }
        or None,
    }


def load_models(runs: dict[str, Path], batch_size: int, onnx: bool = False) -> list[ServedModel]:
    """Every model loaded once (and run once on a short text, so the first request pays no lazy set-up)."""
    served = []
    for name, run in runs.items():
        predictor = load_predictor(run, batch_size, onnx=onnx)  # a baseline has no graph: it runs as is
        predictor.probs(["warm up"])
        served.append(ServedModel(name, run, predictor, describe(name, run, predictor)))
    return served
