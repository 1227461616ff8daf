"""`ftvs export --format onnx` of a from-scratch and a LoRA run: ONNX Runtime gives PyTorch's predictions
on the test split, the graph takes any batch size and length, and `ftvs predict --onnx` agrees."""

import json

import numpy as np
import pytest
import torch
from tiny_runs import baseline_run, finetune_run, scratch_run, sms_data

from ftvs.cli import main

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return sms_data(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def scratch(data):
    return scratch_run(data, data.parent / "scratch")


@pytest.fixture(scope="module")
def lora(data, tiny_llama_dir):
    return finetune_run(data, data.parent / "lora", tiny_llama_dir, "lora")


def _exported_and_checked(run, capsys) -> dict:
    capsys.readouterr()
    assert main(["export", str(run), "--format", "onnx"]) == 0
    printed = capsys.readouterr().out
    check = json.loads((run / "export" / "onnx_check.json").read_text())
    assert "PASSED" in printed and "ONNX Runtime" in printed
    # the graph's predictions on the whole test split are `ftvs evaluate`'s, written before export existed
    preds = json.loads((run / "predictions.json").read_text())
    from ftvs.export import predict_onnx

    texts = [
        json.loads(line)["text"] for line in (run.parent / "data" / "test.jsonl").read_text().splitlines()
    ]
    rows = predict_onnx(run, texts)
    assert [preds["label_names"].index(r["label"]) for r in rows] == preds["y_pred"]
    np.testing.assert_allclose([r["probability"] for r in rows], preds["confidence"], atol=1e-5)
    return check


def _check_is_sound(check: dict, n_test: int) -> None:
    assert check["passed"] and check["num_examples"] == n_test
    assert check["argmax_agreement"] == 1.0 and check["num_disagreements"] == 0
    assert check["max_abs_logit_diff"] <= check["tolerance"]["max_abs_logit_diff"] == 1e-3
    for engine in ("onnxruntime", "pytorch"):
        assert check["latency"][engine]["seconds_per_1000"] > 0
    assert check["accuracy"]["onnxruntime"] == check["accuracy"]["pytorch"]


def _any_shape_runs(run) -> None:
    """Batch size and length other than the traced ones give PyTorch's logits."""
    import onnxruntime as ort

    from ftvs.arms import load_arm

    arm = load_arm(run / "model")
    session = ort.InferenceSession(str(run / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    assert all(isinstance(d, str) for i in session.get_inputs() for d in i.shape)  # both axes dynamic
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["label_names"]) == arm.label_names
    for texts in (["ok"], ["free entry in a weekly competition to win cash, text WIN now"] * 7):
        batch = arm.collate(arm.encode(texts))
        got = session.run(None, {k: v.numpy() for k, v in batch.items()})[0]
        with torch.inference_mode():
            ref = arm.model(**batch).numpy()
        np.testing.assert_allclose(got, ref, atol=1e-4)


def _report(name, check, capsys):
    lat = check["latency"]
    with capsys.disabled():
        print(
            f"\n[export] {name}: {check['num_examples']} test texts, batch {check['batch_size']}, "
            f"{check['threads']} thread(s): ONNX Runtime {lat['onnxruntime']['seconds_per_1000']:.3f}s vs. "
            "PyTorch "
            f"{lat['pytorch']['seconds_per_1000']:.3f}s per 1,000 texts; max |logit diff| "
            f"{check['max_abs_logit_diff']:.1e}"
        )


def test_scratch_run_exports_and_matches_pytorch(scratch, capsys):
    check = _exported_and_checked(scratch, capsys)
    _check_is_sound(check, json.loads((scratch / "metrics.json").read_text())["num_test_examples"])
    _any_shape_runs(scratch)
    _report("scratch", check, capsys)


def test_lora_run_is_merged_exported_and_matches_pytorch(lora, capsys):
    import onnx

    check = _exported_and_checked(lora, capsys)
    _check_is_sound(check, json.loads((lora / "metrics.json").read_text())["num_test_examples"])
    assert "unmerged" in check["latency"]["pytorch"]["model"]
    graph = onnx.load(str(lora / "export" / "model.onnx"), load_external_data=False).graph
    assert not [
        t.name for t in graph.initializer if "lora" in t.name.lower()
    ]  # merged: no adapter weights left
    _any_shape_runs(lora)
    _report("lora", check, capsys)
    # the model card, rewritten after the export, quotes both latencies
    assert "ONNX Runtime" in (lora / "model" / "README.md").read_text()


def test_predict_onnx_prints_what_predict_prints(lora, capsys):
    texts = ["WINNER!! claim your free prize now", "see you at home later"]
    assert (lora / "export" / "model.onnx").is_file() or main(["export", str(lora), "--no-check"]) == 0
    capsys.readouterr()
    assert main(["predict", str(lora), *texts]) == 0
    plain = capsys.readouterr().out.splitlines()
    assert main(["predict", str(lora), *texts, "--onnx"]) == 0
    onnx_lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in onnx_lines] == [line.split("\t")[0] for line in plain]
    assert [float(a.split("\t")[1]) for a in onnx_lines] == pytest.approx(
        [float(b.split("\t")[1]) for b in plain], abs=1e-4
    )


def test_export_bad_input_is_one_line(data, tmp_path, capsys):
    base = baseline_run(data, tmp_path / "baseline")
    assert main(["export", str(base)]) == 2
    assert "TF-IDF baseline" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing")]) == 2
    assert "nothing does not exist" in capsys.readouterr().err
    (tmp_path / "nothing").mkdir()
    assert main(["export", str(tmp_path / "nothing")]) == 2
    assert "no trained ftvs model" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "nothing"), "x", "--onnx"]) == 2
    assert "ftvs export" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "frozen"])
def test_full_and_frozen_runs_export_too(data, tiny_gpt2_dir, method, capsys):
    run = finetune_run(data, data.parent / f"gpt2_{method}", tiny_gpt2_dir, method)
    check = _exported_and_checked(run, capsys)
    _check_is_sound(check, json.loads((run / "metrics.json").read_text())["num_test_examples"])
