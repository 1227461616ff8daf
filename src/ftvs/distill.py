"""Knowledge distillation: a student run (`ftvs train scratch --teacher RUN_DIR`) learns from a trained run's
probabilities as well as from the labels (docs/distill.md).

The teacher's logits on every training text and every unlabeled text the student uses are computed once
(batched, length-sorted, in the teacher's own precision; a TF-IDF teacher gives its logistic regression's
logits) and cached in the student's run folder with the teacher's identity (its model files' hash) and the
texts' hash. A resumed student reuses the cache and never loads the teacher again; a teacher or texts that
changed since are refused, as `--resume` refuses changed data. A student started afresh in the same folder
(`--overwrite_output_dir`: another alpha or temperature) reuses the cache when teacher and texts are the same
and recomputes it when they are not.

The loss of a batch of n examples, n_l of them labelled, KL(teacher_T || student_T) per example:
    (A * CE(labelled) * n_l + (1 - A) * T^2 * sum_labelled KL + T^2 * sum_unlabeled KL) / n
so an all-labelled batch gets A * CE + (1 - A) * T^2 * mean KL, and unlabeled texts the KD term only.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ftvs.data.unlabeled import load_unlabeled
from ftvs.errors import FtvsError
from ftvs.fileio import load_tensors, read_json, save_tensors, write_json
from ftvs.rundir import (
    MODEL_MARKER,
    TEACHER_INFO,
    TEACHER_LOGITS,
    model_dir,
    read_config,
    read_marker,
    read_summary,
)

UNLABELED_LABEL = -100  # the label of an unlabeled text in a training batch (cross-entropy ignores it)
_NOT_MODEL = {"README.md"}  # the model card: written by evaluate, not part of what the teacher computes


def teacher_identity(teacher_dir) -> str:
    """sha256 over the teacher's model files (names and bytes): what makes it this teacher."""
    folder = model_dir(teacher_dir)
    if not (folder / MODEL_MARKER).is_file():
        raise FtvsError(
            f"--teacher {teacher_dir} holds no trained model ({folder / MODEL_MARKER} missing); name a "
            "finished run folder (ftvs train / ftvs baseline)"
        )
    if (read_summary(teacher_dir) or {}).get("status") not in (None, "completed"):
        raise FtvsError(
            f"--teacher {teacher_dir} has not finished training; let it finish or resume it first"
        )
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in _NOT_MODEL):
        h.update(str(path.relative_to(folder)).encode() + b"\n")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def texts_hash(texts: list[str]) -> str:
    return hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode()).hexdigest()


def compute_teacher_logits(teacher_dir, texts: list[str], label_names: list[str], batch_size: int):
    """The teacher's logits [len(texts), num_labels] (float32 CPU tensor) and the precision it ran in."""
    marker = read_marker(teacher_dir)
    if list(marker.get("label_names") or []) != list(label_names):
        raise FtvsError(
            f"--teacher {teacher_dir} was trained on other labels ({len(marker.get('label_names') or [])} vs "
            f"{len(label_names)}); name a teacher trained on this data"
        )
    if marker.get("arm") == "baseline":
        from ftvs.baseline.model import BaselineModel

        return torch.tensor(
            BaselineModel.load(model_dir(teacher_dir)).logits(texts), dtype=torch.float32
        ), "no"
    from ftvs.arms import load_arm
    from ftvs.evaluate import predict_split, scoring_precision

    arm = load_arm(teacher_dir)
    precision = scoring_precision(None, read_config(teacher_dir))  # the teacher's own, as evaluate scores it
    out, _, _, used, _ = predict_split(arm, texts, [-1] * len(texts), batch_size, precision)
    return torch.from_numpy(out["logits"]).float(), used.name


def teacher_logits(
    run_dir,
    teacher_dir,
    texts: list[str],
    label_names: list[str],
    batch_size: int,
    print_fn=print,
    write: bool = True,
    resume: bool = True,
) -> tuple[torch.Tensor, dict]:
    """The teacher's logits on `texts`: from the student's cache when it holds them, else computed and
    cached (`write`: by the main process only). A cache of another teacher or other texts is refused when
    `resume` (the run would change under the user) and replaced otherwise. Returns (logits, the record)."""
    identity = teacher_identity(teacher_dir)
    key = texts_hash(texts)
    run_dir = Path(run_dir) if run_dir else None
    if run_dir and (run_dir / TEACHER_INFO).is_file() and (run_dir / TEACHER_LOGITS).is_file():
        info = read_json(run_dir / TEACHER_INFO, "teacher record")
        if info.get("teacher_identity") == identity and info.get("texts_hash") == key:
            print_fn(f"teacher {teacher_dir}: logits of {len(texts):,} texts from the cache in {run_dir}")
            return load_tensors(run_dir / TEACHER_LOGITS)["logits"], info
        if not resume:
            print_fn(f"teacher {teacher_dir}: the cached logits in {run_dir} are another teacher's or "
                     "other texts'; computing them anew")  # fmt: skip
        elif info.get("teacher_identity") != identity:
            raise FtvsError(
                f"the teacher {teacher_dir} changed since {run_dir} cached its logits (model hash "
                f"{str(info.get('teacher_identity'))[:12]} -> {identity[:12]}); to learn from the new "
                "teacher start the student afresh (--overwrite_output_dir or a new --output_dir)"
            )
        else:
            raise FtvsError(
                f"the training or unlabeled texts changed since {run_dir} cached its teacher's logits; "
                "rerun with the original data, or start the student afresh (--overwrite_output_dir)"
            )
    t0 = time.perf_counter()
    logits, precision = compute_teacher_logits(teacher_dir, texts, label_names, batch_size)
    info = {
        "teacher_dir": str(Path(teacher_dir).resolve()),
        "teacher_arm": read_marker(teacher_dir).get("arm"),
        "teacher_identity": identity,
        "texts_hash": key,
        "num_texts": len(texts),
        "precision": precision,
        "seconds": time.perf_counter() - t0,
    }
    print_fn(f"teacher {teacher_dir}: logits of {len(texts):,} texts in {info['seconds']:.1f}s ({precision})")
    if run_dir and write:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_tensors(run_dir / TEACHER_LOGITS, {"logits": logits})
        write_json(run_dir / TEACHER_INFO, info)
    return logits, info


def student_data(cfg, accelerator, run_dir, train_texts, train_labels, label_names, resume=True) -> dict:
    """What a student trains on: the training texts plus the folder's unlabeled texts it uses, their
    labels (UNLABELED_LABEL for the unlabeled), the teacher's logits on all of them (None without a
    teacher) and the record of it for config.yaml."""
    if not cfg.teacher:
        return {"texts": train_texts, "labels": list(train_labels), "logits": None, "record": None,
                "seconds": 0.0, "unlabeled_text": ""}  # fmt: skip
    unlabeled = load_unlabeled(cfg.data, cfg.distill_max_unlabeled)
    texts = train_texts + unlabeled
    logits, info = teacher_logits(
        run_dir, cfg.teacher, texts, label_names, cfg.per_device_eval_batch_size, accelerator.print,
        write=accelerator.is_main_process, resume=resume,
    )  # fmt: skip
    record = {**info, "alpha": cfg.distill_alpha, "temperature": cfg.distill_temperature,
              "num_labelled": len(train_texts), "num_unlabeled": len(unlabeled)}  # fmt: skip
    return {
        "texts": texts,
        "labels": list(train_labels) + [UNLABELED_LABEL] * len(unlabeled),
        "logits": logits,
        "record": record,
        "seconds": info["seconds"],
        "unlabeled_text": f" + {len(unlabeled):,} unlabeled" if unlabeled else "",
    }


class DistillLoss:
    """The student's loss against the cached teacher logits (module docstring); `logits_by_index` holds
    one row per training example, in the order of the training dataset."""

    def __init__(self, teacher_logits: torch.Tensor, alpha: float, temperature: float, device):
        self.teacher = teacher_logits.to(device)
        self.alpha, self.temperature = float(alpha), float(temperature)

    def __call__(self, logits, labels, index, class_weight=None, label_smoothing: float = 0.0):
        logits = logits.float()
        t = self.temperature
        labelled = labels != UNLABELED_LABEL
        n, n_l = labels.shape[0], int(labelled.sum())
        teacher = self.teacher[index]
        kd = F.kl_div(
            F.log_softmax(logits / t, dim=-1),
            F.log_softmax(teacher / t, dim=-1),
            log_target=True,
            reduction="none",
        ).sum(-1) * (t * t)
        kd_sum = ((1.0 - self.alpha) * kd * labelled + kd * ~labelled).sum() / n
        if n_l == 0:
            return kd_sum
        ce_in = (logits, labels) if n_l == n else (logits[labelled], labels[labelled])
        ce = F.cross_entropy(*ce_in, weight=class_weight, label_smoothing=label_smoothing)
        return self.alpha * ce * (n_l / n) + kd_sum
