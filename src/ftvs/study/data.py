"""The study's data: STUDY/data/main prepared once (eval caps applied), then the nested train subsets of
a data-size sweep; recorded under study.json's `data`."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from ftvs.data import SPLITS, cap_eval_splits, prepare, subsample_train
from ftvs.study.progress import fmt_seconds

_PREPARE_KEYS = (
    "text_column",
    "label_column",
    "validation_split",
    "test_split",
    "max_train_examples",
    "seed",
    "tokenizer",
    "remove_headers",
    "max_chars",
    "unlabeled",
    "unlabeled_from_rest",
)


def prepare_study_data(study) -> None:
    """STUDY/data/main once (eval caps applied), then the nested train subsets the selected runs need."""
    d = study.reg["data"]
    main_dir = study.dir / "data" / "main"
    if d.get("state") != "completed" or not (main_dir / "metadata.json").is_file():
        _prepare_main(study, main_dir)
    subsets = d.setdefault("subsets", {})
    for run in study.plan:
        if (
            run.data_key == "main"
            or run.data_key in subsets
            and (study.abs(subsets[run.data_key]["dir"]) / "metadata.json").is_file()
        ):
            continue
        if not study.selected(run.id):
            continue
        out = study.dir / "data" / f"train-{run.data_key}"
        meta = subsample_train(main_dir, out, run.train_fraction, run.subset_seed, tokenizer="none")
        subsets[run.data_key] = {
            "dir": study.rel(out),
            "train_fraction": run.train_fraction,
            "seed": run.subset_seed,
            "num_train_examples": meta["splits"]["train"]["count"],
            "content_hash": meta["content_hash"],
        }
        study.save()


def _prepare_main(study, main_dir: Path) -> None:
    d = study.reg["data"]
    dc = study.cfg["data"]
    t0 = time.monotonic()
    old_hash = d.get("content_hash")
    d.update(state="running", dir=study.rel(main_dir), config=dc, subsets={})
    study.save()
    study.progress.say(f"preparing {dc['source']} -> {study.rel(main_dir)}")
    kwargs = {k: dc[k] for k in _PREPARE_KEYS if dc.get(k) is not None}
    if main_dir.exists() and not (main_dir / "metadata.json").is_file():
        shutil.rmtree(main_dir)
    try:
        prepare(dc["source"], main_dir, **kwargs)
        meta = cap_eval_splits(main_dir, dc.get("max_val_examples"), dc.get("max_test_examples"), dc["seed"])
    except BaseException as e:
        d.update(state="failed", error=str(e))
        study.save()
        raise
    d.update(
        state="completed",
        source=meta["source"],
        num_labels=meta["num_labels"],
        label_names=meta["label_names"],
        splits={s: meta["splits"][s]["count"] for s in SPLITS},
        content_hash=meta["content_hash"],
        unlabeled=(meta.get("unlabeled") or {}).get("count", 0),
        seconds=time.monotonic() - t0,
        error=None,
    )
    if old_hash and old_hash != meta["content_hash"]:  # new data: nothing trained on the old counts
        for run in study.reg["runs"].values():
            if run.get("state") != "pending" or run.get("attempts"):
                run.update(state="pending", needs_wipe=True, results=None, epochs_done=0)
    study.save()
    s = d["splits"]
    study.progress.say(
        f"data: {d['num_labels']} classes, {s['train']:,} train / {s['val']:,} val / "
        f"{s['test']:,} test ({fmt_seconds(d['seconds'])})"
    )
