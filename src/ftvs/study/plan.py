"""The plan: every run of a study, in execution order, from its normalised config."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from ftvs.study.config import ARM_META_KEYS, BASELINE_KEYS, KINDS, SIZE_KEYS, model_dims, train_kind


def frac(f: float) -> str:
    """A train fraction as run ids and folder names spell it (1.0 -> "1", 0.1 -> "0.1")."""
    return f"{f:g}"


@dataclass
class PlannedRun:
    id: str
    arm_name: str
    kind: str  # how it trains: baseline | scratch | finetune (a distilled student is scratch)
    seed: int
    train_fraction: float
    subset_seed: int
    size: str | None  # model-size sweep size name; None = the arm's own size
    sweep: str  # main | data_size | model_size
    settings: dict  # TrainConfig values (neural) or baseline settings, without data/output_dir/seed
    launcher: dict = field(default_factory=dict)
    teacher: str | None = None  # a distilled student: the id of its teacher's run (same seed and data)

    @property
    def data_key(self) -> str:
        return "main" if self.train_fraction >= 1.0 else f"{frac(self.train_fraction)}-s{self.subset_seed}"


def _settings(cfg: dict, arm: dict, size: dict | None = None) -> dict:
    if arm["arm"] == "baseline":
        return {k: v for k, v in arm.items() if k in BASELINE_KEYS}
    s = {**cfg["train"], **{k: v for k, v in arm.items() if k not in ARM_META_KEYS}}
    if size is not None:
        s["preset"] = size.get("preset") or s.get("preset") or "tiny"
        for k in SIZE_KEYS:
            s[k] = size.get(k)
    return s


def plan_runs(cfg: dict) -> list[PlannedRun]:
    arms = {a["name"]: a for a in cfg["arms"] if a["enabled"]}
    ds = cfg["sweeps"].get("data_size")
    ms = cfg["sweeps"].get("model_size")
    runs: dict[str, PlannedRun] = {}

    def add(arm, seed, fraction, size, sweep):
        teacher = None
        if arm["arm"] == "distill":  # its teacher's run for the same seed and data comes first
            teacher = add(arms[arm["teacher"]], seed, fraction, None, sweep)
        settings = _settings(cfg, arm, size)
        size_name = None
        if size is not None and model_dims(settings) != model_dims(_settings(cfg, arm)):
            size_name = size["name"]
        subset_seed = seed if (ds and ds["resample_per_seed"]) else cfg["data"]["seed"]
        rid = f"{arm['name']}{'.' + size_name if size_name else ''}-f{frac(fraction)}-s{seed}"
        if rid in runs:  # a sweep point that is also a main run
            return rid
        runs[rid] = PlannedRun(
            rid,
            arm["name"],
            train_kind(arm["arm"]),
            seed,
            fraction,
            subset_seed,
            size_name,
            "main" if fraction >= 1 and size_name is None else sweep,
            settings,
            arm["launcher"] or cfg["launcher"],
            teacher,
        )
        return rid

    kind_order = {k: i for i, k in enumerate(KINDS)}
    ordered = sorted(arms.values(), key=lambda a: kind_order[a["arm"]])
    for arm in ordered:  # main results first: they answer the study's question
        for seed in cfg["seeds"]:
            add(arm, seed, 1.0, None, "main")
    if ms and ms["arm"] in arms:
        for size in ms["sizes"]:
            for seed in cfg["seeds"]:
                add(arms[ms["arm"]], seed, 1.0, size, "model_size")
    if ds:
        for fraction in sorted(ds["fractions"], reverse=True):
            for arm in ordered:
                if arm["name"] in ds["arms"]:
                    for seed in cfg["seeds"]:
                        add(arm, seed, fraction, None, "data_size")
    return list(runs.values())


def plan_text(cfg: dict, plan: list[PlannedRun]) -> str:
    """One line: runs per kind, seeds, sweep points."""
    kinds = defaultdict(int)
    for r in plan:
        kinds["distill" if r.teacher else r.kind] += 1
    parts = [f"{n} {k}" for k, n in kinds.items()]
    parts.append(f"seeds {', '.join(map(str, cfg['seeds']))}")
    if cfg["sweeps"].get("data_size"):
        parts.append(f"fractions {', '.join(frac(f) for f in cfg['sweeps']['data_size']['fractions'])}")
    if cfg["sweeps"].get("model_size"):
        parts.append(f"sizes {', '.join(s['name'] for s in cfg['sweeps']['model_size']['sizes'])}")
    return "; ".join(parts)
