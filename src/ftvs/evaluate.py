"""`ftvs evaluate RUN_DIR` and `ftvs predict RUN_DIR TEXT...`.

Evaluation loads the best exported model of a run, scores it on the test split with the one metrics
function, times inference (after warm-up) and gathers the training record into `metrics.json`.
"""

import platform
import sys
from pathlib import Path

import numpy as np
import torch

from ftvs import rundir
from ftvs.arms import load_arm
from ftvs.baseline import BaselineModel, remeasure_latency
from ftvs.calibration import calibrate_run, softmax
from ftvs.data import load_metadata, load_split, split_hash
from ftvs.errors import FtvsError, check_count
from ftvs.fileio import dir_size_bytes
from ftvs.inference import make_eval_loader, predict_loader, timed_predict
from ftvs.latency import measure_latency, neural_predictor
from ftvs.metrics import classification_metrics, epoch_gap
from ftvs.modelcard import write_model_card
from ftvs.precision import autocast, resolve_precision
from ftvs.tracking import tracker_failures


def training_record(run_dir: Path, cfg: dict) -> dict:
    """Training time, precision, best epoch and train–val gaps from a run's config, history and summary."""
    history = rundir.read_history(run_dir)
    summary = rundir.read_summary(run_dir)
    resolved = cfg.get("resolved") or {}
    # what the run trained in, and why (`auto` resolved per arm and device by ftvs.precision)
    precision = {k: resolved.get(k) for k in ("mixed_precision", "mixed_precision_reason")}
    if not history:
        return {
            "training": {"status": summary.get("status", "unknown"), **precision},
            "best_val": {},
            "train_val_gap": {},
        }
    best = max(history, key=lambda r: r["val_macro_f1"])
    seconds = sum(r["epoch_seconds"] for r in history)
    # encoding the train/val texts once (tokenising; for a frozen base with the feature cache, the one
    # forward pass of the base) is part of what training costs
    preprocess = summary.get("seconds_preprocess") or 0.0
    return {
        "training": {
            "seconds_total": seconds + preprocess,
            "seconds_per_epoch": seconds / len(history),
            "seconds_preprocess": preprocess,
            "epochs_run": len(history),
            "best_epoch": best["epoch"],
            "status": summary.get("status", "unknown"),
            "stop_reason": summary.get("stop_reason"),
            "examples_per_second": sum(r["examples_per_second"] for r in history) / len(history),
            **({"tracker_failures": failed} if (failed := tracker_failures(run_dir)) else {}),
            **precision,
            # whether the training step ran compiled, and why (ftvs.compiling)
            **({"compile": summary["compile"]} if "compile" in summary else {}),
        },
        "best_val": {
            "accuracy": best["val_accuracy"],
            "macro_f1": best["val_macro_f1"],
            "loss": best["val_loss"],
        },
        "train_val_gap": {"best": epoch_gap(best), "last": epoch_gap(history[-1])},
    }


def check_labels(arm_labels, data_labels, data_dir) -> None:
    if list(arm_labels) != list(data_labels):
        extra = sorted(set(data_labels) - set(arm_labels))[:3]
        raise FtvsError(
            f"label set of {data_dir} differs from the model's ({len(data_labels)} vs {len(arm_labels)} "
            f"labels{', e.g. unknown ' + repr(extra) if extra else ''}); evaluate on the data it was "
            "trained on"
        )


def predict_split(arm, texts, labels, batch_size: int, mixed_precision: str):
    """Timed predictions of `texts`: (predict output, accelerate state, device, precision, #examples)."""
    # under `accelerate launch` every process scores a shard of the batches and predict_loader gathers
    # them (de-duplicating the padded tail): 1 or N processes give the same predictions and metrics
    from accelerate import PartialState

    from ftvs.launch import force_cpu

    state = PartialState(cpu=force_cpu())
    device = (
        state.device
        if state.num_processes > 1
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    model = arm.model.to(device).eval()
    examples = arm.encode(texts)
    loader = make_eval_loader(arm, examples, labels, batch_size)
    if state.num_processes > 1:
        from accelerate.data_loader import prepare_data_loader

        loader = prepare_data_loader(
            loader, device, state.num_processes, state.process_index, put_on_device=False
        )

    def on_device(loader):
        for batch in loader:
            yield {k: v.to(device) for k, v in batch.items()}

    precision = resolve_precision(mixed_precision, device.type, arm.kind)  # auto: as in training
    with autocast(precision.name, device.type):
        out = timed_predict(model, list(on_device(loader)), len(examples), state)
    return out, state, device, precision, len(examples)


def _inference_record(seconds, n_examples, batch_size, device, precision, state) -> dict:
    """How fast the split was predicted, and on what."""
    return {
        "seconds_total": seconds,
        "seconds_per_1000": 1000 * seconds / max(1, n_examples),
        "examples_per_second": n_examples / max(seconds, 1e-9),
        "batch_size": batch_size,
        "device": str(device),
        "precision": precision.name,
        "precision_reason": precision.reason,
        "torch_threads": torch.get_num_threads(),
        "num_processes": state.num_processes,
        "machine": platform.processor() or platform.machine(),
    }


def _metrics_record(run_dir, cfg, meta, data_dir, split, arm, scores, n_examples, inference) -> dict:
    """The run's metrics.json: what was scored, on which data, how fast, and the model's size."""
    description = arm.describe()
    return {
        "run_name": run_dir.name,
        "arm": arm.kind,
        "method": getattr(arm, "method", None),
        "model_name": cfg.get("model_name_or_path")
        if arm.kind == "finetune"
        else f"scratch-{cfg.get('preset')}",
        "dataset": meta.get("source"),
        "data_dir": str(data_dir),
        "data_content_hash": meta.get("content_hash"),
        "split": split,
        "seed": cfg.get("seed"),
        "test": scores,
        "num_test_examples": n_examples,
        "inference": inference,
        # a reloaded model is frozen for inference: what was trainable comes from the training record
        "params": {
            "total": description["params_total"],
            "trainable": cfg.get("resolved", {}).get("params_trainable", description["params_trainable"]),
        },
        "size_on_disk_bytes": dir_size_bytes(rundir.model_dir(run_dir)),
        "model": description,
        **training_record(run_dir, cfg),
    }


def evaluate_run(
    run_dir,
    data_dir=None,
    split: str = "test",
    batch_size: int = 128,
    mixed_precision: str | None = None,
    calibrate: bool = False,
) -> dict:
    """Score the run's best model on a split; `mixed_precision` None: the run's own setting (a run
    trained in fp32 is scored in fp32, `auto` resolves as it did in training)."""
    check_count("--batch-size", batch_size, fix="use e.g. 128")  # the arguments first, then the folder
    run_dir = rundir.existing_run(run_dir)
    rundir.check_training_ended(run_dir, "evaluate")
    if rundir.read_marker(run_dir).get("arm") == "baseline":
        if split != "test":
            raise FtvsError(f"{run_dir} is a TF-IDF baseline, scored on the test split when it was fitted")
        return remeasure_latency(run_dir, data_dir)  # its scores stay; its serving latency is measured
    cfg = rundir.read_config(run_dir)
    mixed_precision = scoring_precision(mixed_precision, cfg)
    explicit = bool(data_dir)
    data_dir = data_dir or cfg.get("data")
    if not data_dir:
        raise FtvsError(f"{run_dir} does not name its data; pass --data DIR")
    meta = load_metadata(data_dir)
    arm = load_arm(rundir.model_dir(run_dir))
    check_labels(arm.label_names, meta["label_names"], data_dir)
    rundir.check_same_data(run_dir, data_dir, meta.get("content_hash"), explicit=explicit, doing="evaluate")
    texts, labels = load_split(data_dir, split)
    out, state, device, precision, n_examples = predict_split(arm, texts, labels, batch_size, mixed_precision)
    scores = classification_metrics(
        labels, out["y_pred"], arm.label_names, loss=out["loss"], probs=softmax(out["logits"])
    )
    inference = _inference_record(out["seconds"], n_examples, batch_size, device, precision, state)
    metrics = _metrics_record(run_dir, cfg, meta, data_dir, split, arm, scores, n_examples, inference)
    if not state.is_main_process:  # every process holds the same gathered results; one writes them
        return metrics
    if split == "test":  # serving latency, timed as for every other run (ftvs.latency)
        with autocast(precision.name, device.type):
            predict = neural_predictor(arm, arm.model, device)
            metrics["latency"] = measure_latency(predict, texts, str(device), precision.name)
    val = None
    if calibrate:  # temperature scaling is fitted on the validation split, never on the scored one
        val_texts, val_labels = load_split(data_dir, "val")
        val = (
            predict_split(arm, val_texts, val_labels, batch_size, mixed_precision)[0]["logits"],
            val_labels,
        )
    if split == "test":  # the reliability diagram and the model card describe the test results
        calibrate_run(run_dir, metrics, out["logits"], labels, val)
    rundir.write_results(
        run_dir,
        metrics,
        arm.label_names,
        labels,
        out["y_pred"],
        out["confidence"],
        split=split,
        split_hash=split_hash(data_dir, split),
    )
    rundir.write_figures(
        run_dir, arm.label_names, scores["confusion_matrix"], run_name=run_dir.name, split=split
    )
    if split == "test":
        write_model_card(run_dir)
    return metrics


def scoring_precision(requested: str | None, cfg: dict) -> str:
    """The precision to score a run in: the one asked for, else the run's own training setting."""
    return requested or cfg.get("mixed_precision") or "auto"


class Predictor:
    """A run's model, loaded once, for prediction on raw texts: `probs(texts)` -> [n, classes]
    probabilities in input order (`ftvs predict`, `ftvs predict --onnx` and `ftvs serve`)."""

    def __init__(self, label_names, probs, precision: str, engine: str):
        self.label_names = list(label_names)
        self._probs = probs
        self.precision = precision  # no (fp32), bf16 or fp16
        self.engine = engine  # pytorch, onnxruntime or numpy (the TF-IDF baseline)

    def probs(self, texts) -> np.ndarray:
        return np.asarray(self._probs(list(texts)), dtype=np.float64).reshape(-1, len(self.label_names))

    def rows(self, texts) -> list[dict]:
        """Label and confidence of each text."""
        return [
            {"text": t, "label": self.label_names[int(p.argmax())], "probability": float(p.max())}
            for t, p in zip(texts, self.probs(texts))
        ]


def load_predictor(
    run_dir, batch_size: int = 64, mixed_precision: str | None = None, onnx: bool = False, onnx_file=None
) -> Predictor:
    """Load a run's best model through the safe loaders (`load_arm`, `BaselineModel.load`: safetensors,
    no remote code); `mixed_precision` None: the run's own setting; `onnx`: the exported graph
    (RUN_DIR/export/model.onnx, or `onnx_file`) runs the forward pass. Batches are sorted by length as in
    evaluation."""
    run_dir = rundir.existing_run(run_dir)
    model_dir = rundir.model_dir(run_dir)
    if rundir.read_marker(run_dir).get("arm") == "baseline":
        model = BaselineModel.load(model_dir)
        return Predictor(model.label_names, model.predict_proba, "no", "numpy")
    if onnx or onnx_file:
        from ftvs.export import onnx_predictor  # lazy: onnxruntime is an optional extra

        return onnx_predictor(run_dir, onnx_file, batch_size)
    arm = load_arm(model_dir)
    model = arm.model.eval()
    precision = resolve_precision(
        scoring_precision(mixed_precision, rundir.read_config(run_dir)), "cpu", arm.kind
    )

    def probs(texts):
        examples = arm.encode(texts)
        loader = make_eval_loader(arm, examples, [-1] * len(examples), batch_size)
        with autocast(precision.name, "cpu"):
            return softmax(predict_loader(model, loader, len(examples))["logits"])

    return Predictor(arm.label_names, probs, precision.name, "pytorch")


def predict_texts(
    run_dir, texts: list[str], batch_size: int = 64, mixed_precision: str | None = None
) -> list[dict]:
    """Label and confidence of each text; `mixed_precision` None: the run's own setting."""
    return load_predictor(run_dir, batch_size, mixed_precision).rows(texts)


def cmd_evaluate(args) -> int:
    m = evaluate_run(
        args.run_dir,
        args.data,
        args.split,
        args.per_device_eval_batch_size,
        args.mixed_precision,
        args.calibrate,
    )
    t = m["test"]
    lat = m.get("latency")
    lat = f" | batch-1 p50 {lat['batch1_p50_ms']:.2f} ms" if lat else ""
    from accelerate import PartialState

    PartialState().print(
        f"{m['run_name']}: accuracy {t['accuracy']:.4f} | macro-F1 {t['macro_f1']:.4f} | weighted-F1 "
        f"{t['weighted_f1']:.4f} | {m['inference']['seconds_per_1000']:.2f} s per 1,000 examples{lat} | "
        f"{m['params']['total']:,} params -> {Path(args.run_dir) / rundir.result_names(args.split)[0]}"
    )
    return 0


def cmd_predict(args) -> int:
    texts = list(args.texts)
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise FtvsError(f"--file {path} does not exist")
        texts += [
            line.strip()
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
            if line.strip()
        ]
    if not texts:
        raise FtvsError("no text to classify; pass texts as arguments or --file FILE (one per line)")
    if args.onnx or args.onnx_file:  # `serve --onnx` runs a baseline as is; `predict --onnx` says so
        from ftvs.export import neural_run

        neural_run(args.run_dir, f"predict without --onnx: `ftvs predict {args.run_dir} TEXT`")
    rows = load_predictor(args.run_dir, onnx=args.onnx, onnx_file=args.onnx_file).rows(texts)
    for row in rows:
        sys.stdout.write(f"{row['label']}\t{row['probability']:.4f}\t{row['text']}\n")
    return 0


def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score a trained run on the test split -> metrics.json",
        description="Load RUN_DIR/model (the best epoch), predict the test split, time inference "
        "and write metrics.json, predictions.json, training_curves.png and "
        "confusion_matrix.png into RUN_DIR.",
    )
    p.add_argument("run_dir", help="a run folder written by `ftvs train`")
    p.add_argument("--data", help="prepared data folder (default: the one the run was trained on)")
    p.add_argument(
        "--split", default="test", choices=("test", "val", "train"), help="split to score (default test)"
    )
    p.add_argument(
        "--per_device_eval_batch_size",
        "--batch-size",
        type=int,
        default=128,
        help="inference batch size (default 128); recorded with the timing",
    )
    p.add_argument(
        "--mixed_precision",
        "--mixed-precision",
        default=None,
        choices=("auto", "no", "bf16", "fp16"),
        help="autocast for inference (default: the run's own --mixed_precision, so a run trained in "
        "fp32 is scored in fp32); auto = as in training (ftvs.precision, per arm and device); recorded "
        "with the timing",
    )
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="fit temperature scaling on the val split; metrics.json gains calibration{temperature, "
        "ece_after, brier_after}",
    )
    p.set_defaults(func=cmd_evaluate)

    p = subparsers.add_parser(
        "predict",
        help="classify texts with a trained run",
        description="Print label, probability and text, one line per input.",
    )
    p.add_argument("run_dir", help="a run folder written by `ftvs train`")
    p.add_argument("texts", nargs="*", help="texts to classify")
    p.add_argument("--file", help="a text file with one input per line")
    p.add_argument(
        "--onnx",
        action="store_true",
        help="run RUN_DIR/export/model.onnx (from `ftvs export`) with ONNX Runtime instead of PyTorch",
    )
    p.add_argument("--onnx_file", "--onnx-file", help="run this exported ONNX graph instead (implies --onnx)")
    p.set_defaults(func=cmd_predict)
