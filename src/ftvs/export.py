"""`ftvs export RUN_DIR --format onnx`: the run's model as one ONNX graph, checked against PyTorch.

The graph takes `input_ids` and `attention_mask` (int64, dynamic batch and sequence axes) and returns
`logits` [batch, classes]; tokenisation stays outside (the run's `model/` folder holds the tokenizer).
A LoRA run is merged into its base first (peft `merge_and_unload`), so the graph is a plain model with
no adapter branch. The label names, arm and maximum length ride along as ONNX metadata.

After export the graph is run with ONNX Runtime on the run's test split, batch for batch beside the
PyTorch model exactly as `ftvs evaluate` loads it: the argmax predictions must be identical and the
largest |logit difference| within a stated tolerance. The check, with both CPU latencies per 1,000
texts at the same batch size and thread count, goes to RUN_DIR/export/onnx_check.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from ftvs import rundir
from ftvs.arms import load_arm
from ftvs.arms.hf import SequenceClassifier
from ftvs.calibration import softmax
from ftvs.data import load_split
from ftvs.errors import FtvsError, is_count
from ftvs.fileio import write_json
from ftvs.inference import make_eval_loader
from ftvs.rundir import METRICS, existing_run, model_dir, model_hash, read_config, read_marker

DEFAULT_OPSET = 18
LOGIT_TOLERANCE = 1e-3  # max |logit difference| allowed for fp32 (graph rewrites reorder float sums)
INPUT_NAMES = ("input_ids", "attention_mask")
MODEL_HASH_KEY = (
    "ftvs_model_sha256"  # graph metadata: the run's model/ it was exported from (rundir.model_hash)
)


def _require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise FtvsError(
            f"ONNX export needs {e.name}; pip install 'ftvs[onnx]' (onnx, onnxruntime, onnxscript)"
        ) from None


def serving_module(arm) -> torch.nn.Module:
    """`module(input_ids, attention_mask) -> logits` to export: the arm's model, LoRA merged into its base."""
    if arm.kind == "scratch":
        return arm.model.eval()
    net = arm.net
    if getattr(arm, "method", None) == "lora":
        net = net.merge_and_unload()  # folds B@A into each target weight; the head copy becomes the head
    return SequenceClassifier(net).eval()


def _example_inputs(arm, texts) -> dict:
    """A batch to trace with: at least 2 rows and 2 positions, so no axis is specialised to size 1."""
    examples = arm.encode(list(texts[:4]) or ["example"])
    while len(examples) < 2:
        examples = examples + examples
    batch = arm.collate(examples)
    if batch["input_ids"].shape[1] < 2:
        pad = torch.full_like(batch["input_ids"][:, :1], arm.pad_id)
        batch = {
            "input_ids": torch.cat([batch["input_ids"], pad], 1),
            "attention_mask": torch.cat([batch["attention_mask"], torch.zeros_like(pad)], 1),
        }
    return {k: batch[k] for k in INPUT_NAMES}


@contextlib.contextmanager
def _quiet_exporter():
    """The dynamo exporter narrates every stage on stdout, warns about axis names it merged and logs
    the torchvision operators it skips; its opset converter logs a failure with a traceback and carries
    on (`export_onnx` checks the opset it made instead)."""
    import io
    import logging

    logs = [logging.getLogger("torch.onnx"), logging.getLogger("onnxscript")]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(logs, levels):
            log.setLevel(level)


def _ftvs_graph_files(path: Path) -> list[Path] | None:
    """The files of the ONNX graph ftvs exported to `path`: the graph and the external data files it
    names; None when `path` is no such graph (not ONNX, or no ftvs metadata)."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception:  # not ONNX at all (text, truncated, ...): protobuf raises several types
        return None
    if not any(p.key == "ftvs_arm" for p in graph.metadata_props):
        return None
    external = {
        e.value
        for t in graph.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
        for e in t.external_data
        if e.key == "location"
    }
    return [path, *(path.parent / name for name in sorted(external))]


def check_output(output: Path, overwrite: bool) -> list[Path]:
    """The files to remove before writing the graph to `output`: a graph ftvs exported there (with its
    external data), or with `overwrite` whatever file is there; anything else is refused. A `.data` file
    beside it that the old graph does not name is never removed."""
    if output.is_dir():
        raise FtvsError(f"--output {output} is a folder; name a file such as {output / 'model.onnx'}")
    if not output.exists():
        return []
    ours = _ftvs_graph_files(output)
    if ours is None and not overwrite:
        raise FtvsError(
            f"--output {output} exists and is not an ONNX graph ftvs exported; choose another file or "
            "pass --overwrite to replace it"
        )
    return ours or [output]


def _check_opset(opset: int) -> None:
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not is_count(opset) or opset > newest:
        raise FtvsError(f"--opset {opset!r}: ONNX opsets go up to {newest}; use e.g. {DEFAULT_OPSET}")


def export_onnx(run_dir, output=None, opset: int = DEFAULT_OPSET, arm=None, overwrite: bool = False) -> Path:
    """Write the run's model as ONNX (default RUN_DIR/export/model.onnx); returns the file. An `output`
    that holds something ftvs did not export is replaced only with `overwrite`."""
    _require_onnx()

    run_dir = Path(run_dir)
    rundir.check_training_ended(run_dir, "export")
    _check_opset(opset)
    output = Path(output) if output else run_dir / "export" / "model.onnx"
    replaced = check_output(output, overwrite)
    arm = arm or load_arm(model_dir(run_dir))
    output.parent.mkdir(parents=True, exist_ok=True)
    data_dir = _data_dir(run_dir)
    texts = load_split(data_dir, "test")[0] if data_dir else []
    module = serving_module(arm)
    inputs = _example_inputs(arm, texts)
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence", max=max(2, int(arm.max_length)))
    shapes = {name: {0: batch, 1: sequence} for name in INPUT_NAMES}
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                module,
                (),
                kwargs=inputs,
                dynamo=True,
                dynamic_shapes=shapes,
                input_names=list(INPUT_NAMES),
                output_names=["logits"],
                opset_version=opset,
                verbose=False,
            )
    except Exception as e:  # the exporter raises many types; the first line says what it could not trace
        raise FtvsError(f"ONNX export of {run_dir} failed: {str(e).strip().splitlines()[0][:300]}") from None
    made = program.model.opset_imports.get("")
    if made != opset:  # the exporter writes its own opset when converting down fails, and only logs it
        raise FtvsError(
            f"ONNX export of {run_dir} to opset {opset} failed: the model needs operators newer than "
            f"opset {opset} (the exporter made opset {made}); use a higher --opset (default {DEFAULT_OPSET})"
        )
    program.model.metadata_props.update(
        {
            "ftvs_arm": arm.kind,
            "ftvs_method": str(getattr(arm, "method", None) or ""),
            "label_names": json.dumps(arm.label_names),
            "max_length": str(arm.max_length),
            "pad_token_id": str(arm.pad_id),
            MODEL_HASH_KEY: model_hash(run_dir),
        }
    )
    for stale in replaced:
        stale.unlink(missing_ok=True)
    program.save(str(output))
    return output


def _data_dir(run_dir: Path) -> str | None:
    cfg = read_config(run_dir)
    return cfg.get("data") or cfg.get("data_dir")


def neural_run(run_dir, instead: str) -> Path:
    """The run folder of a scratch or fine-tuned run; a TF-IDF baseline is refused, saying what to do
    `instead`."""
    run_dir = existing_run(run_dir)
    if read_marker(run_dir).get("arm") == "baseline":
        raise FtvsError(
            f"{run_dir} is a TF-IDF baseline, which has no ONNX graph (export covers the neural arms, "
            f"scratch and finetune); {instead}"
        )
    return run_dir


def onnx_session(path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_session(run_dir: Path, onnx_path: Path, threads: int | None = None):
    """An ONNX Runtime session of the graph exported from this run: a file that is not a readable graph
    (truncated, not ONNX), or a graph of another run's model, is a one-line error."""
    again = f"re-export it with `ftvs export {run_dir}`"
    if not onnx_path.is_file():
        raise FtvsError(f"{onnx_path} not found; run `ftvs export {run_dir} --format onnx` first")
    try:
        session = onnx_session(onnx_path, threads)
    except Exception as e:  # onnxruntime's InvalidProtobuf, InvalidGraph, Fail, ...: one line says why
        reason = " ".join(str(e).split())[:200]
        raise FtvsError(f"{onnx_path} is not a readable ONNX graph ({reason}); {again}") from None
    recorded = session.get_modelmeta().custom_metadata_map.get(MODEL_HASH_KEY)
    if recorded is None:
        raise FtvsError(
            f"{onnx_path} does not record the run it was exported from (not written by `ftvs export`, or "
            f"by an older ftvs); {again}"
        )
    if recorded != model_hash(run_dir):
        raise FtvsError(
            f"{onnx_path} was exported from another model than {model_dir(run_dir)} (its model hash "
            f"differs); pass the run it belongs to, or {again}"
        )
    return session


def _timed(run_batch, batches, warmup: int = 2) -> tuple[list[np.ndarray], float]:
    for b in batches[:warmup]:
        run_batch(b)
    start = time.perf_counter()
    outs = [run_batch(b) for b in batches]
    return outs, time.perf_counter() - start


def check_onnx(
    run_dir,
    onnx_path=None,
    batch_size: int = 32,
    tolerance: float = LOGIT_TOLERANCE,
    split: str = "test",
    arm=None,
) -> dict:
    """ONNX Runtime against PyTorch on the run's `split`, batch for batch on CPU; writes and returns
    RUN_DIR/export/onnx_check.json."""
    _require_onnx()
    import onnxruntime as ort

    run_dir = Path(run_dir)
    onnx_path = Path(onnx_path) if onnx_path else run_dir / "export" / "model.onnx"
    data_dir = _data_dir(run_dir)
    if not data_dir:
        raise FtvsError(f"{run_dir}/config.yaml does not name its data; the check needs the test split")
    arm = arm or load_arm(model_dir(run_dir))
    model = arm.model.to("cpu").eval()  # as `ftvs evaluate` runs it (LoRA adapters unmerged)
    texts, labels = load_split(data_dir, split)
    examples = arm.encode(texts)
    batches = list(make_eval_loader(arm, examples, labels, batch_size))
    threads = torch.get_num_threads()
    session = run_session(run_dir, onnx_path, threads)

    with torch.inference_mode():
        torch_out, torch_s = _timed(
            lambda b: model(**{k: b[k] for k in INPUT_NAMES}).float().numpy(), batches
        )
    onnx_out, onnx_s = _timed(
        lambda b: session.run(["logits"], {k: b[k].numpy() for k in INPUT_NAMES})[0], batches
    )
    order = np.concatenate([b["index"].numpy() for b in batches])
    ref, got = (
        np.empty((len(examples), len(arm.label_names))),
        np.empty((len(examples), len(arm.label_names))),
    )
    ref[order], got[order] = np.concatenate(torch_out), np.concatenate(onnx_out)
    diff = float(np.abs(ref - got).max()) if len(examples) else 0.0
    agree = ref.argmax(1) == got.argmax(1)
    n = max(1, len(examples))
    result = {
        "onnx_file": str(onnx_path),
        "onnx_bytes": _onnx_bytes(onnx_path),
        "split": split,
        "num_examples": len(examples),
        "batch_size": batch_size,
        "threads": threads,
        "device": "cpu",
        "machine": platform.processor() or platform.machine(),
        "tolerance": {"max_abs_logit_diff": tolerance, "precision": "fp32"},
        "max_abs_logit_diff": diff,
        "argmax_agreement": float(agree.mean()) if len(examples) else 1.0,
        "num_disagreements": int((~agree).sum()),
        "passed": bool(agree.all() and diff <= tolerance),
        "accuracy": {
            "onnxruntime": float((got.argmax(1) == np.asarray(labels)).mean()) if len(examples) else None,
            "pytorch": float((ref.argmax(1) == np.asarray(labels)).mean()) if len(examples) else None,
        },
        "latency": {
            "onnxruntime": {"seconds_total": onnx_s, "seconds_per_1000": 1000 * onnx_s / n},
            "pytorch": {
                "seconds_total": torch_s,
                "seconds_per_1000": 1000 * torch_s / n,
                "model": "as `ftvs evaluate` loads it"
                + (" (LoRA adapters unmerged)" if getattr(arm, "method", None) == "lora" else ""),
            },
        },
        "speedup_onnx_over_pytorch": torch_s / onnx_s if onnx_s > 0 else None,
        "versions": {"onnxruntime": ort.__version__, "torch": torch.__version__},
    }
    write_json(run_dir / "export" / "onnx_check.json", result)
    return result


def _onnx_bytes(path: Path) -> int:
    """The graph's size with the external data files it names."""
    return sum(p.stat().st_size for p in _ftvs_graph_files(path) or [path] if p.is_file())


def onnx_predictor(run_dir, onnx_path=None, batch_size: int = 64):
    """An `evaluate.Predictor` whose forward pass is the exported graph on ONNX Runtime (the run's
    tokenizer encodes; batches sorted by length as in evaluation)."""
    _require_onnx()
    from ftvs.evaluate import Predictor

    run_dir = neural_run(run_dir, f"predict without --onnx: `ftvs predict {run_dir} TEXT`")
    onnx_path = Path(onnx_path) if onnx_path else run_dir / "export" / "model.onnx"
    session = run_session(run_dir, onnx_path)
    arm = load_arm(model_dir(run_dir))

    def probs(texts):
        examples = arm.encode(texts)
        out = np.empty((len(examples), len(arm.label_names)))
        for b in make_eval_loader(arm, examples, [-1] * len(examples), batch_size):
            out[b["index"].numpy()] = softmax(
                session.run(["logits"], {k: b[k].numpy() for k in INPUT_NAMES})[0]
            )
        return out

    return Predictor(arm.label_names, probs, "no", "onnxruntime")


def predict_onnx(run_dir, texts: list[str], onnx_path=None, batch_size: int = 64) -> list[dict]:
    """`ftvs predict --onnx`: the run's tokenizer, the exported graph for the forward pass."""
    return onnx_predictor(run_dir, onnx_path, batch_size).rows(texts)


def cmd_export(args) -> int:
    run_dir = neural_run(args.run_dir, "`ftvs predict` serves it as it is")
    if not (math.isfinite(args.tolerance) and args.tolerance >= 0):
        raise FtvsError(
            f"--tolerance {args.tolerance:g} must be a number >= 0 (the largest |logit difference| accepted);"
            f" the default is {LOGIT_TOLERANCE:g}"
        )
    t0 = time.perf_counter()
    path = export_onnx(run_dir, args.output, args.opset, overwrite=args.overwrite)
    print(
        f"exported {path} ({_onnx_bytes(path) / 1e6:.1f} MB, opset {args.opset}) in "
        f"{time.perf_counter() - t0:.1f}s"
    )
    if not args.check:
        return 0
    r = check_onnx(run_dir, path, batch_size=args.batch_size, tolerance=args.tolerance)
    lat = r["latency"]
    print(
        f"check on {r['num_examples']} {r['split']} texts: argmax agreement {r['argmax_agreement']:.4f} "
        f"({r['num_disagreements']} differ), max |logit diff| {r['max_abs_logit_diff']:.2e} (tolerance "
        f"{r['tolerance']['max_abs_logit_diff']:g}) -> {'PASSED' if r['passed'] else 'FAILED'}"
    )
    print(
        f"CPU latency per 1,000 texts (batch {r['batch_size']}, {r['threads']} threads): ONNX Runtime "
        f"{lat['onnxruntime']['seconds_per_1000']:.3f}s, PyTorch {lat['pytorch']['seconds_per_1000']:.3f}s "
        f"-> {run_dir / 'export' / 'onnx_check.json'}"
    )
    if (run_dir / METRICS).is_file():  # the model card gains the ONNX latency
        from ftvs.modelcard import write_model_card

        write_model_card(run_dir)
    if not r["passed"]:
        print(
            f"ftvs: error: the ONNX graph disagrees with PyTorch on {run_dir}; see onnx_check.json",
            file=sys.stderr,
        )
        return 1
    return 0


def add_cli(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export",
        help="export a run's model for serving (ONNX), checked against PyTorch",
        description="Write RUN_DIR/model as an ONNX graph (inputs input_ids + attention_mask with dynamic "
        "batch and "
        "sequence axes, output logits; LoRA merged first), then run it with ONNX Runtime on the test "
        "split beside PyTorch: same predictions, logits within --tolerance, CPU latency of both -> "
        "RUN_DIR/export/onnx_check.json.",
    )
    p.add_argument("run_dir", help="a trained run folder (scratch or fine-tuned)")
    p.add_argument("--format", default="onnx", choices=("onnx",), help="export format (default onnx)")
    p.add_argument("--output", help="output file (default RUN_DIR/export/model.onnx)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an --output file (and its .data) that is not an ONNX graph ftvs exported",
    )
    p.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version (default %(default)s)"
    )
    p.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compare with PyTorch on the test split and time both (default on)",
    )
    p.add_argument(
        "--batch_size",
        "--batch-size",
        type=int,
        default=32,
        help="batch size of the check and of both latencies (default %(default)s)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=LOGIT_TOLERANCE,
        help="largest |logit difference| accepted (default %(default)g, fp32)",
    )
    p.set_defaults(func=cmd_export)
    return p
