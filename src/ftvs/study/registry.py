"""study.json, the registry of a study: one `RunEntry` per planned run, the data, the stages.

Its format is described in docs/study.md. Paths inside are relative to the study folder. The study
process holds the folder's run lock while it rewrites the file, so "running" in a registry it loads
means a previous study was killed.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from ftvs import __version__
from ftvs.config import FINETUNE_ONLY, build_config, config_differences
from ftvs.errors import FtvsError
from ftvs.fileio import read_json, write_json
from ftvs.fmt import now
from ftvs.rundir import has_checkpoint
from ftvs.study.config import FREE_KEYS, model_dims, own_size_name
from ftvs.study.plan import PlannedRun, frac

FORMAT, VERSION = "ftvs-study", 1
STATES = ("pending", "running", "completed", "failed", "interrupted")
# what a run entry keeps from an earlier invocation when its plan is rebuilt
_OUTCOME_KEYS = (
    "state",
    "error",
    "exit_code",
    "started_at",
    "finished_at",
    "seconds_wall",
    "epochs_done",
    "resumed_from_epoch",
    "attempts",
    "results",
    "num_train_examples",
)


@dataclass
class RunEntry:
    """One run of study.json's "runs", as the study plans it (field order = key order on disk).

    Later the study adds `num_train_examples` (once the data is prepared) and, transiently,
    `needs_wipe`; `from_dict` ignores keys it does not know."""

    id: str
    arm_name: str
    arm: str  # baseline | scratch | finetune
    method: str | None  # lora/full/... or tfidf_logreg; None for scratch
    model: str  # "scratch-tiny", "smollm2-135m", "tfidf_logreg"
    size: str | None
    seed: int
    train_fraction: float
    sweep: str  # main | data_size | model_size
    subset_seed: int
    run_dir: str
    data_dir: str
    config_file: str | None
    log: str
    config: dict
    num_train_epochs: int
    launcher: dict
    teacher: str | None = None  # a distilled student: its teacher's run id (the study runs it first)
    state: str = "pending"
    error: str | None = None
    exit_code: int | None = None
    started_at: str | None = None
    finished_at: str | None = None
    seconds_wall: float = 0.0
    epochs_done: int = 0
    resumed_from_epoch: int | None = None
    attempts: list[dict] = field(default_factory=list)
    results: dict | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunEntry:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# the JSON types of study.json's keys (docs/study.md): required at the top, and those of a run entry
_TOP_KEYS = {"format": str, "version": int, "runs": dict, "data": dict, "stages": dict}
_OPTIONAL_KEYS = {
    "order": list,
    "config": dict,
    "tuning": dict,
    "retired_runs": dict,
    "sweeps": dict,
    "summary": list,
    "reference_results": list,
}
_ENTRY_KEYS = {
    "id": str,
    "run_dir": str,
    "data_dir": str,
    "log": str,
    "state": str,
    "config": dict,
    "launcher": dict,
    "attempts": list,
}
_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", int: "an integer"}


def _json_type(value) -> str:
    for kind, name in {bool: "a boolean", type(None): "null", float: "a number", **_JSON_TYPES}.items():
        if isinstance(value, kind):
            return name
    return type(value).__name__


def check_registry(reg, path) -> dict:
    """`reg` (study.json's content) against its schema; a wrong key is a one-line error naming it."""

    def wrong(where: str, want: str, value) -> FtvsError:
        return FtvsError(
            f"{path} is not a valid study registry: {where} must be {want}, not {_json_type(value)}; fix "
            "that key (schema in docs/study.md) or use a new --output_dir"
        )

    if not isinstance(reg, dict):
        raise wrong("the file", "a JSON object", reg)
    if reg.get("format") != FORMAT:
        raise FtvsError(f"{path} is not an ftvs study registry; choose another --output_dir")
    for key, kind in {**_TOP_KEYS, **_OPTIONAL_KEYS}.items():
        if (key in _TOP_KEYS or key in reg) and not isinstance(reg.get(key), kind):
            raise wrong(f"key {key!r}", _JSON_TYPES[kind], reg.get(key))
    for rid, entry in reg["runs"].items():
        if not isinstance(entry, dict):
            raise wrong(f"runs[{rid!r}]", "an object", entry)
        for key, kind in _ENTRY_KEYS.items():
            if key in entry and not isinstance(entry[key], kind):
                raise wrong(f"runs[{rid!r}][{key!r}]", _JSON_TYPES[kind], entry[key])
        if entry.get("state", "pending") not in STATES:
            raise FtvsError(
                f"{path} is not a valid study registry: runs[{rid!r}]['state'] is {entry['state']!r}, not "
                f"one of {', '.join(STATES)}; fix it (schema in docs/study.md) or use a new --output_dir"
            )
    return reg


def load_registry(path: Path) -> dict | None:
    """The registry at `path` (checked against its schema), or None when there is none yet."""
    if not path.is_file():
        return None
    return check_registry(read_json(path, "study registry"), path)


def save_registry(path: Path, reg: dict) -> None:
    reg["updated"] = now()
    write_json(path, reg)


def new_registry() -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "created": now(),
        "runs": {},
        "stages": {},
        "data": {"state": "pending"},
    }


def num_train_examples(reg: dict, entry: dict) -> int | None:
    """The size of the train split a run trains on (None until that data is prepared)."""
    d = reg["data"]
    if entry["train_fraction"] >= 1:
        return (d.get("splits") or {}).get("train")
    key = f"{frac(entry['train_fraction'])}-s{entry['subset_seed']}"
    return ((d.get("subsets") or {}).get(key) or {}).get("num_train_examples")


# --------------------------------------------------------------------------------------------------
# Planned entries: what a run will be started with
# --------------------------------------------------------------------------------------------------


class EntryFactory:
    """Run entries (and their TrainConfig) of one study folder, config and preset."""

    def __init__(self, study_dir: Path, cfg: dict, preset: str | None):
        self.dir = study_dir
        self.cfg = cfg
        self.preset = preset

    def rel(self, path) -> str:
        return os.path.relpath(Path(path), self.dir)

    def entry(self, run: PlannedRun) -> dict:
        run_dir = self.dir / "runs" / run.id
        data_dir = self.dir / "data" / ("main" if run.data_key == "main" else f"train-{run.data_key}")
        if run.kind == "baseline":
            method, model = "tfidf_logreg", "tfidf_logreg"
            config = {**run.settings, "seed": run.seed}
            num_epochs = 1
        else:
            method = run.settings.get("method", "lora") if run.kind == "finetune" else None
            method = "distilled" if run.teacher else method
            model = (
                run.settings.get("model_name_or_path", "smollm2-135m")
                if run.kind == "finetune"
                else f"scratch-{run.settings.get('preset', 'tiny')}"
            )
            config = self.train_config(run, run_dir, data_dir)
            num_epochs = config.get("num_train_epochs", 10)
        config_file = self.rel(self.dir / "configs" / f"{run.id}.yaml") if run.kind != "baseline" else None
        return RunEntry(
            id=run.id,
            arm_name=run.arm_name,
            arm=run.kind,
            method=method,
            model=model,
            size=run.size,
            seed=run.seed,
            train_fraction=run.train_fraction,
            sweep=run.sweep,
            subset_seed=run.subset_seed,
            run_dir=self.rel(run_dir),
            data_dir=self.rel(data_dir),
            config_file=config_file,
            log=self.rel(self.dir / "logs" / f"{run.id}.log"),
            config=config,
            num_train_epochs=num_epochs,
            launcher=run.launcher,
            teacher=run.teacher,
        ).to_dict()

    def extra(self, run: PlannedRun) -> dict:
        """Tags for compare/report: `preset` is the from-scratch size (what `ftvs compare` plots the
        model-size sweep by), `study_preset` the study preset."""
        size = None
        if run.kind == "scratch":
            ms = self.cfg["sweeps"].get("model_size")
            size = run.size or (
                own_size_name(ms, run.settings)
                if ms and ms["arm"] == run.arm_name
                else model_dims(run.settings)["preset"]
            )
        return {
            "study": self.cfg["name"],
            "study_preset": self.preset,
            "arm_name": run.arm_name,
            "sweep": run.sweep,
            "train_fraction": run.train_fraction,
            "size": run.size,
            "preset": size,
        }

    def train_config(self, run: PlannedRun, run_dir: Path, data_dir: Path) -> dict:
        values = {
            **run.settings,
            "data": str(data_dir.resolve()),
            "output_dir": str(run_dir.resolve()),
            "seed": run.seed,
            "extra": self.extra(run),
        }
        if run.teacher:  # the teacher's run folder: the student's --teacher
            values["teacher"] = str((self.dir / "runs" / run.teacher).resolve())
        cfg = build_config(values, {"arm": run.kind}).to_dict()
        if run.kind == "scratch":  # keep only the keys of this arm: tidy files, no false "changed" alarms
            for k in FINETUNE_ONLY:
                cfg.pop(k, None)
        return cfg


# --------------------------------------------------------------------------------------------------
# Reconciling a registry with the current plan
# --------------------------------------------------------------------------------------------------


def open_registry(
    existing: dict | None,
    factory: EntryFactory,
    plan: list[PlannedRun],
    *,
    force: bool,
    selected,
    config_source: str | None,
) -> dict:
    """The registry for this invocation: the existing one brought up to date with the plan (new runs
    added, changed pending/failed runs reset, finished runs with changed settings refused unless forced,
    runs of a killed study marked interrupted, runs no longer planned retired), or a new one."""
    cfg = factory.cfg
    reg = existing or new_registry()
    reg.update(
        {
            "name": cfg["name"],
            "preset": factory.preset,
            "description": cfg.get("description", ""),
            "study_dir": str(factory.dir.resolve()),
            "config": cfg,
            "config_source": config_source,
            "reference_results": cfg.get("reference_results", []),
            "state": "running",
        }
    )
    reg["ftvs_version"] = __version__
    _check_data_settings(reg, cfg["data"], factory.dir, force)
    order = _merge_runs(reg, factory, plan, force, selected)
    _mark_killed(reg)
    retired = {rid: e for rid, e in reg["runs"].items() if rid not in order}
    if retired:  # no longer part of the study (an arm was removed): kept aside, out of compare/report
        reg.setdefault("retired_runs", {}).update(retired)
        reg["runs"] = {rid: reg["runs"][rid] for rid in order}
    reg["order"] = order
    return reg


def _check_data_settings(reg: dict, data_cfg: dict, study_dir: Path, force: bool) -> None:
    old = reg["data"].get("config") or {}
    if reg["data"].get("state") == "completed" and reg["data"].get("config") != data_cfg:
        if not force:
            diff = sorted(k for k in set(data_cfg) | set(old) if data_cfg.get(k) != old.get(k))
            raise FtvsError(
                f"the data settings changed since {study_dir} was prepared ({', '.join(diff)}); "
                "pass --force to redo the study, or use a new --output_dir"
            )
        reg["data"] = {"state": "pending"}


def _merge_runs(reg: dict, factory: EntryFactory, plan: list[PlannedRun], force: bool, selected) -> list[str]:
    order, stale = [], []
    for run in plan:
        entry = reg["runs"].get(run.id)
        planned = factory.entry(run)
        if entry is None:
            reg["runs"][run.id] = planned
        else:
            changed = config_differences(entry.get("config") or {}, planned["config"], FREE_KEYS)
            keep = {k: entry[k] for k in _OUTCOME_KEYS if k in entry}
            if changed and not (force and selected(run.id)):
                resumable = has_checkpoint(factory.dir / planned["run_dir"])
                if entry.get("state") == "completed" or (
                    entry.get("state") in ("running", "interrupted") and resumable
                ):
                    stale.append(f"{run.id} ({', '.join(changed[:3])})")
                else:  # pending or failed: simply (re)start with the new settings
                    keep = {"attempts": entry.get("attempts", []), "needs_wipe": True}
            reg["runs"][run.id] = {**planned, **keep}
        order.append(run.id)
    if stale:
        raise FtvsError(
            f"the settings of {len(stale)} finished or started run(s) changed since they ran: "
            f"{'; '.join(stale[:3])}{' ...' if len(stale) > 3 else ''}; pass --force (optionally "
            "with --only PATTERN) to retrain them, or use a new --output_dir"
        )
    return order


def _mark_killed(reg: dict) -> None:
    """We hold the study lock: "running" in the registry is a previous, killed study."""
    for entry in reg["runs"].values():
        for att in entry.get("attempts") or []:
            if att.get("outcome") == "running":
                att["outcome"] = "killed"
        if entry.get("state") == "running":
            entry.update(state="interrupted", error="the study was killed during this run")
