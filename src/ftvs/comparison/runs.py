"""Finding the runs to compare (run folders, study folders, globs, study JSON) and loading each one."""

from __future__ import annotations

import glob
from pathlib import Path

from ftvs import rundir
from ftvs.errors import FtvsError, is_count
from ftvs.fileio import read_json

ARM_ORDER = {"finetune": 0, "scratch": 1, "baseline": 2}
ARM_LABEL = {"finetune": "fine-tuned", "scratch": "from scratch", "baseline": "TF-IDF baseline"}


def _evaluated_below(p: Path) -> list[Path]:
    """Evaluated run folders under a study folder, skipping exported models and half-written copies."""
    return sorted(
        q.parent
        for q in p.rglob(rundir.METRICS)
        if q.parent.name != rundir.MODEL_DIR
        and ".old" not in q.parent.name
        and not q.parent.name.endswith(".tmp")
    )


def _expand(raw: str, studies: list[dict]) -> list[Path]:
    """The run dirs one command-line argument names; study JSON documents are appended to `studies`."""
    matches = sorted(glob.glob(raw)) if any(c in raw for c in "*?[") else [raw]
    if not matches:
        raise FtvsError(f"no path matches {raw!r}")
    found = []
    for m in matches:
        p = Path(m)
        if p.is_file() and p.suffix == ".json":
            doc = read_json(p, "study file")
            studies.append({"path": str(p), "doc": doc})
            found.extend(_runs_from_study(doc, p))
        elif rundir.is_evaluated(p):
            found.append(p)
        elif p.is_dir():
            nested = _evaluated_below(p)
            if not nested:
                why = (
                    " (training not evaluated yet? run `ftvs evaluate RUN_DIR`)"
                    if (p / rundir.HISTORY).is_file()
                    else ""
                )
                raise FtvsError(f"{p} holds no evaluated run (no {rundir.METRICS} below it){why}")
            found.extend(nested)
        else:
            raise FtvsError(f"{p} is neither a run folder, a study folder nor a study JSON file")
    return found


def discover(paths) -> tuple[list[Path], list[dict]]:
    """Run dirs named by `paths` (run dirs, study folders searched recursively, glob patterns, or a
    study/registry JSON listing runs). Returns (run dirs, study JSON documents)."""
    studies: list[dict] = []
    found = [p for raw in paths for p in _expand(str(raw), studies)]
    unique, seen = [], set()
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    if not unique:
        raise FtvsError(f"no runs to compare; pass run folders (with {rundir.METRICS}) or a study folder")
    return unique, studies


def _runs_from_study(doc: dict, path: Path) -> list[Path]:
    """Run dirs listed in a study/registry JSON (`runs` as strings or dicts with run_dir/output_dir/path);
    an ftvs study registry is checked against its schema first."""
    from ftvs.study.registry import FORMAT, check_registry

    base = path.parent
    if isinstance(doc, dict) and doc.get("format") == FORMAT:
        check_registry(doc, path)
    entries = doc.get("runs") if isinstance(doc, dict) else None
    if not isinstance(entries, list | dict):
        raise FtvsError(
            f"{path} lists no runs: it must be a JSON object whose 'runs' is a list of run folders or an "
            "object of run entries (as a study's study.json); pass run folders instead"
        )
    if isinstance(entries, dict):
        entries = list(entries.values())
    out = []
    for e in entries:
        path = (
            e
            if isinstance(e, str)
            else next(
                (
                    e.get(k)
                    for k in ("run_dir", "output_dir", "path", "dir")
                    if isinstance(e, dict) and e.get(k)
                ),
                None,
            )
        )
        if not path:
            continue
        p = Path(path)
        if not p.is_absolute() and not p.exists():
            p = base / p
        if rundir.is_evaluated(p):
            out.append(p)
    return out


class Run:
    """One evaluated run directory, with the derived numbers the comparison needs."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.metrics = rundir.read_metrics(self.path)
        self.config = rundir.read_config(self.path)
        self.history = rundir.read_history(self.path)
        self.summary = rundir.read_summary(self.path)
        self.marker = rundir.read_marker(self.path)
        self._predictions = None
        m = self.metrics
        self.name = str(m.get("run_name") or self.path.name)
        self.arm = str(m.get("arm") or self.config.get("arm") or self.marker.get("arm") or "unknown")
        self.method = (
            m.get("method") or self.config.get("method") if self.arm == "finetune" else m.get("method")
        )
        self.method = str(
            self.method or {"scratch": "scratch", "baseline": "tfidf_logreg"}.get(self.arm, "-")
        )
        self.teacher = self.config.get("teacher")  # a distilled student's teacher run folder (ftvs.distill)
        if self.arm == "scratch" and self.teacher:
            self.method = "distilled"
        self.model_name = str(m.get("model_name") or self.config.get("model_name_or_path") or self.method)
        size = (self.config.get("extra") or {}).get("preset")
        if self.arm == "scratch" and size:  # study model-size sweep: the size name (a preset may be widened)
            self.model_name = f"scratch-{size}"
        self.seed = m.get("seed", self.config.get("seed"))
        if "test" not in m or "accuracy" not in (m.get("test") or {}):
            raise FtvsError(
                f"{self.path}/{rundir.METRICS} has no test scores; re-run `ftvs evaluate {self.path}`"
            )
        rundir.check_training_ended(self.path, "compare", (m.get("training") or {}).get("status"))
        self._check_predictions()

    def _check_predictions(self) -> None:
        """The test predictions must be the ones behind the scores (the tables read the scores, the
        significance tests the predictions): recomputed, they must give the same accuracy and macro-F1."""
        if not (self.path / rundir.PREDICTIONS).is_file():
            return
        from ftvs.metrics import summary_metrics

        p, test = self.predictions, self.metrics["test"]
        y_true, y_pred, names = p.get("y_true"), p.get("y_pred"), p.get("label_names") or []
        readable = (
            isinstance(y_true, list)
            and isinstance(y_pred, list)
            and len(y_true) == len(y_pred) == self.metrics.get("num_test_examples", len(y_true))
            and all(is_count(y, 0) and y < len(names) for y in (*y_true, *y_pred))
        )
        got = summary_metrics(y_true, y_pred, len(names)) if readable else {}
        wrong = [
            k for k in ("accuracy", "macro_f1") if not readable or abs(got[k] - (test.get(k) or 0)) > 1e-6
        ]
        if wrong:
            shown = (
                f"{wrong[0]} {got[wrong[0]]:.4f} vs {test.get(wrong[0])}" if readable else "other examples"
            )
            raise FtvsError(
                f"{self.path}: {rundir.PREDICTIONS} does not match {rundir.METRICS} ({shown}); one was "
                f"edited or replaced: re-run `ftvs evaluate {self.path}`"
            )

    def tag(self, key, default=None):
        """A sweep tag from config.yaml (top level or under `extra`), else from metrics.json."""
        for src in (self.config.get("extra") or {}, self.config, self.metrics):
            if isinstance(src, dict) and src.get(key) is not None:
                return src[key]
        return default

    @property
    def train_fraction(self) -> float:
        try:
            return float(self.tag("train_fraction", 1.0))
        except (TypeError, ValueError):
            return 1.0

    @property
    def preset(self):
        return self.tag("preset") if self.arm == "scratch" else None

    @property
    def group_key(self) -> tuple:
        return (self.arm, self.method, self.model_name, self.train_fraction)

    @property
    def predictions(self) -> dict:
        if self._predictions is None:
            self._predictions = rundir.read_predictions(self.path)
        return self._predictions

    @property
    def data_dir(self) -> str | None:
        return self.metrics.get("data_dir") or self.config.get("data") or self.config.get("data_dir")


def resolve_data_dir(run: Run) -> Path | None:
    """The run's prepared data folder as it exists now (absolute, cwd-relative, or run-dir-relative)."""
    d = run.data_dir
    if not d:
        return None
    for cand in (Path(d), run.path / d, run.path.parent / d):
        if (cand / rundir.DATA_METADATA).is_file():
            return cand
    return None


def load_runs(paths) -> tuple[list[Run], list[dict]]:
    dirs, studies = discover(paths)
    runs = [Run(p) for p in dirs]
    names: dict[str, int] = {}
    for r in runs:  # make names unique (two studies may reuse a folder name)
        if r.name in names:
            names[r.name] += 1
            r.name = f"{r.name}#{names[r.name]}"
        else:
            names[r.name] = 1
    runs.sort(key=lambda r: (ARM_ORDER.get(r.arm, 9), r.model_name, -r.train_fraction, str(r.seed), r.name))
    return runs, studies
