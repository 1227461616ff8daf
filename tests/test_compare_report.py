"""`ftvs compare` / `ftvs report` on REAL tiny runs of every arm (Banking77 subset): sections, figures,
numbers in the text equal to the JSON, significance maths, PDF page budget, HTML rendered by Chromium."""

import base64
import csv
import json
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from ftvs.cli import main
from ftvs.compare import find_pair
from ftvs.data import prepare, subsample_train
from ftvs.metrics import classification_metrics
from ftvs.stats import fast_macro_f1, holm, mcnemar_exact, paired_bootstrap

BANKING77 = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
SECTIONS = ["## 1. Model descriptions", "## 2. Dataset description", "## 3. Training and evaluation",
            "## 4. Comparative analysis", "### Training curves", "### Convergence", "### Stability", "### Overfitting",
            "### Who wins, and by how much", "### Cost", "### When would training from scratch be preferred?",
            "### Sensitivity to model size and data size", "### Practical insights", "### Preprocessing"]
NUM = r"[+-]?\d+\.\d+"


def _subset(folder: Path, per_class_train: int, per_class_test: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", per_class_train), ("test", per_class_test)):
        with open(BANKING77 / f"{split}.csv", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        taken, keep = defaultdict(int), []
        for r in rows:
            if taken[r["category"]] < n:
                taken[r["category"]] += 1
                keep.append({"text": r["text"], "category": r["category"]})
        with open(folder / f"{split}.csv", "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["text", "category"])
            w.writeheader()
            w.writerows(keep)
    return folder


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_llama_dir):
    """Tiny real runs of each arm on one data folder, compared and reported with the CLI."""
    if not BANKING77.is_dir():
        pytest.skip(f"Banking77 CSVs not found at {BANKING77}")
    root = tmp_path_factory.mktemp("study")
    data = root / "data"
    prepare(str(_subset(root / "csv", 8, 4)), data, seed=0)  # 77 classes: ~550 train, 308 test
    half = root / "data_half"
    subsample_train(data, half, 0.5, seed=0)
    runs = root / "runs"
    common = ["--data", str(data), "--num_train_epochs", "2", "--max_seq_length", "32", "--disable_tqdm",
              "--per_device_train_batch_size", "64"]
    assert main(["train", "scratch", "--output_dir", str(runs / "scratch_tiny"), "--preset", "tiny",
                 "--learning_rate", "3e-3", *common]) == 0
    assert main(["train", "finetune", "--output_dir", str(runs / "ft_lora"), "--model", str(tiny_llama_dir),
                 "--method", "lora", *common]) == 0
    assert main(["baseline", "--data", str(data), "--output_dir", str(runs / "baseline_s0"), "--C", "10"]) == 0
    assert main(["baseline", "--data", str(data), "--output_dir", str(runs / "baseline_s1"), "--C", "3",
                 "--seed", "1"]) == 0
    assert main(["baseline", "--data", str(half), "--output_dir", str(runs / "baseline_half"), "--C", "10"]) == 0
    out = root / "report"
    assert main(["compare", str(runs), "--out", str(out)]) == 0  # a study folder: runs found recursively
    comparison = json.loads((out / "comparison.json").read_text())
    return {"root": root, "data": data, "runs": runs, "out": out, "c": comparison,
            "md": (out / "report.md").read_text(encoding="utf-8"),
            "html": (out / "report.html").read_text(encoding="utf-8")}


def parse_p(text: str) -> float:
    return 0.0 if text == "< 1e-300" else float(text)


def _metrics(study, name):
    return json.loads((study["runs"] / name / "metrics.json").read_text())


def test_all_runs_grouped_and_every_section_present(study):
    c, md, html = study["c"], study["md"], study["html"]
    assert sorted(r["run"] for r in c["runs"]) == ["baseline_half", "baseline_s0", "baseline_s1", "ft_lora",
                                                   "scratch_tiny"]
    assert {r["arm"] for r in c["runs"]} == {"finetune", "scratch", "baseline"}
    for heading in SECTIONS:
        assert heading in md, heading
        assert heading.lstrip("# ") in html, heading
    groups = {g["label"]: g for g in c["groups"]}
    seeds = groups["TF-IDF + LogReg"]
    assert seeds["n"] == 2 and seeds["macro_f1_std"] is not None
    vals = [r["macro_f1"] for r in c["runs"] if r["run"] in ("baseline_s0", "baseline_s1")]
    assert seeds["macro_f1_mean"] == pytest.approx(np.mean(vals))
    assert seeds["macro_f1_std"] == pytest.approx(np.std(vals, ddof=1))
    assert (study["out"] / "comparison.md").read_text().count("\n| ") == 5


def test_every_figure_is_written_referenced_and_embedded(study):
    figs = study["c"]["figures"]
    expected = {"curves_overlay", "train_val_curves", "scores", "confusion_matrices", "per_class_diff", "cost",
                "sweep_data_size"}
    assert expected <= set(figs), set(figs)
    for name in figs.values():
        path = study["out"] / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in study["md"]
    html = study["html"]
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(embedded) == len(re.findall(r"!\[", study["md"]))
    assert all(base64.b64decode(e)[:4] == b"\x89PNG" for e in embedded)
    assert not re.search(r'(src|href)="(?!data:|#)', html), "report.html must be self-contained"
    assert "<style>" in html and "<link" not in html


def _table(md: str, caption_start: str) -> list[list[str]]:
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"*{caption_start}"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return rows[2:] if rows and rows[1][0].startswith("---") else rows[1:]


def test_numbers_in_the_text_equal_the_json(study):
    c, md = study["c"], study["md"]
    # 1. results table = each run's metrics.json
    rows = _table(md, "Test-set results")
    assert len(rows) == len(c["runs"])
    for cells in rows:
        m = _metrics(study, cells[0])
        assert cells[3] == f"{m['test']['accuracy']:.4f}"
        assert cells[4] == f"{m['test']['macro_f1']:.4f}"
        assert cells[5] == f"{m['test']['weighted_f1']:.4f}"
        assert cells[8].split("/")[0] == str(m["training"]["best_epoch"])
        assert float(cells[10]) == pytest.approx(m["inference"]["seconds_per_1000"], abs=6e-4)
    # 2. the headline fine-tuned vs from-scratch sentence = comparison.json significance
    hit = re.search(rf"Fine-tuned \*\*(\S+)\*\* minus from-scratch \*\*(\S+)\*\*: macro-F1 ({NUM}) \(95% CI "
                    rf"\[({NUM}), ({NUM})\]\), accuracy ({NUM}) .*?McNemar exact p (?:= )?(< 1e-300|\S+) \((\d+) vs (\d+) "
                    r"discordant examples\), (significant|not significant)", md)
    assert hit, "headline sentence missing"
    a, b = hit.group(1), hit.group(2)
    pair = find_pair(c["significance"], a, b)
    assert float(hit.group(3)) == pytest.approx(pair["macro_f1"]["diff"], abs=5e-5)
    assert float(hit.group(4)) == pytest.approx(pair["macro_f1"]["ci_low"], abs=5e-5)
    assert float(hit.group(5)) == pytest.approx(pair["macro_f1"]["ci_high"], abs=5e-5)
    assert float(hit.group(6)) == pytest.approx(pair["accuracy"]["diff"], abs=5e-5)
    assert parse_p(hit.group(7)) == pytest.approx(pair["mcnemar"]["p_value"], rel=0.05, abs=5e-5)
    assert (hit.group(10) == "significant") == (pair["mcnemar"]["p_value"] < 0.05)
    # and the McNemar counts match the two predictions.json files
    pa = json.loads((study["runs"] / a / "predictions.json").read_text())
    pb = json.loads((study["runs"] / b / "predictions.json").read_text())
    y = np.array(pa["y_true"])
    ca, cb = np.array(pa["y_pred"]) == y, np.array(pb["y_pred"]) == y
    assert (int(hit.group(8)), int(hit.group(9))) == (int((ca & ~cb).sum()), int((~ca & cb).sum()))
    acc_diff = ca.mean() - cb.mean()
    assert float(hit.group(6)) == pytest.approx(acc_diff, abs=5e-5)
    # 3. significance table rows
    for cells in _table(md, "Paired tests"):
        p = find_pair(c["significance"], cells[0], cells[1])
        d = [float(v) for v in re.findall(NUM, cells[3])]
        assert d == pytest.approx([p["macro_f1"]["diff"], p["macro_f1"]["ci_low"], p["macro_f1"]["ci_high"]], abs=5e-5)
        assert cells[4] == f"{p['mcnemar']['a_only_correct']}/{p['mcnemar']['b_only_correct']}"
        assert cells[7] == ("yes" if p["mcnemar"]["p_value"] < 0.05 else "no")
    # 4. convergence sentences = history.jsonl
    for name, best, epochs, f1 in re.findall(rf"\*\*(\S+)\*\* peaked at epoch (\d+) of (\d+) \(val macro-F1 ({NUM})\)",
                                             md):
        hist = [json.loads(line) for line in (study["runs"] / name / "history.jsonl").read_text().splitlines()]
        top = max(hist, key=lambda r: r["val_macro_f1"])
        assert (int(best), int(epochs), float(f1)) == (top["epoch"], len(hist), pytest.approx(top["val_macro_f1"],
                                                                                                abs=5e-5))
    # 5. dataset sentence = metadata.json
    meta = json.loads((study["data"] / "metadata.json").read_text())
    hit = re.search(r"(\d+) classes, ([\d,]+) examples after cleaning: train ([\d,]+), val ([\d,]+), test ([\d,]+)", md)
    counts = [int(hit.group(i).replace(",", "")) for i in range(3, 6)]
    assert int(hit.group(1)) == meta["num_labels"]
    assert counts == [meta["splits"][s]["count"] for s in ("train", "val", "test")]
    # 6. ranking = group means
    ranking = re.search(r"by test macro-F1 \(mean over seeds\): (.*)\.\n", md).group(1)
    means = sorted((g["macro_f1_mean"] for g in c["groups"] if g["train_fraction"] == 1.0), reverse=True)
    assert [float(v) for v in re.findall(r"\d\. .+? (\d\.\d{4})", ranking)] == pytest.approx(means, abs=5e-5)


def test_significance_maths():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, 400)
    y[:3] = 6  # class 5 might never occur; F1 of an absent, never-predicted class is 0 in both
    a = np.where(rng.random(400) < 0.8, y, rng.integers(0, 7, 400))
    b = np.where(rng.random(400) < 0.6, y, rng.integers(0, 7, 400))
    names = [f"c{i}" for i in range(8)]
    assert fast_macro_f1(y, a, 8) == pytest.approx(classification_metrics(y, a, names)["macro_f1"], abs=1e-12)
    mc = mcnemar_exact([0] * 10, [0] * 10, [1] * 10)
    assert (mc["a_only_correct"], mc["b_only_correct"]) == (10, 0) and mc["p_value"] == pytest.approx(2 * 0.5 ** 10)
    assert mcnemar_exact([0, 1], [0, 1], [0, 1])["p_value"] == 1.0
    boot = paired_bootstrap(y, a, b, 8, n_resamples=500, seed=1)
    for k in ("accuracy", "macro_f1"):
        assert boot[k]["ci_low"] < boot[k]["diff"] < boot[k]["ci_high"]
    assert boot["accuracy"]["diff"] == pytest.approx((a == y).mean() - (b == y).mean())
    assert paired_bootstrap(y, a, b, 8, n_resamples=500, seed=1) == boot  # seeded
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_pdf_fits_the_page_budget(study):
    pdf = study["out"] / "report.pdf"
    data = pdf.read_bytes()
    assert data[:5] == b"%PDF-"
    try:
        from pypdf import PdfReader

        pages = len(PdfReader(str(pdf)).pages)
    except ImportError:
        pages = len(re.findall(rb"/Type\s*/Page(?![s\w])", data))
    assert 4 <= pages <= 6, pages
    assert json.loads((study["out"] / "report_pdf.json").read_text())["pages"] == pages


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (Debian package `chromium`); the HTML render "
                                             "check needs a real browser")
def test_html_renders_in_headless_chromium(study, tmp_path):
    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,2400", f"--screenshot={shot}",
           (study["out"] / "report.html").as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert shot.is_file(), "Chromium wrote no screenshot"
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    dark = (img < 200).mean()
    assert 0.01 < dark < 0.6, f"screenshot looks blank or broken (dark fraction {dark:.3f})"
    assert img.std() > 20


def test_sweeps_from_tagged_runs_and_missing_sweep_hint(study):
    sw = study["c"]["sweeps"]
    series = {s["label"]: s for s in sw["data_size"]}
    pts = series["TF-IDF + LogReg"]["points"]
    assert [p["train_fraction"] for p in pts] == [0.5, 1.0]
    assert pts[0]["num_train_examples"] < pts[1]["num_train_examples"]
    half = _metrics(study, "baseline_half")["test"]["macro_f1"]
    assert pts[0]["macro_f1_mean"] == pytest.approx(half)
    hit = re.search(rf"\*\*TF-IDF \+ LogReg\*\*: macro-F1 ({NUM}) with ([\d,]+) training examples, ({NUM}) with "
                    rf"([\d,]+)", study["md"])
    assert float(hit.group(1)) == pytest.approx(pts[0]["macro_f1_mean"], abs=5e-5)
    assert int(hit.group(2).replace(",", "")) == pts[0]["num_train_examples"]
    assert not sw["model_size"]
    assert "`ftvs study --preset banking77`" in study["md"]


def test_refuses_runs_scored_on_different_test_sets(study, tmp_path, capsys):
    odd = tmp_path / "odd"
    shutil.copytree(study["runs"] / "baseline_s0", odd)
    pred = json.loads((odd / "predictions.json").read_text())
    pred["y_true"] = pred["y_true"][::-1]
    (odd / "predictions.json").write_text(json.dumps(pred))
    m = json.loads((odd / "metrics.json").read_text())
    m["run_name"] = "odd"
    (odd / "metrics.json").write_text(json.dumps(m))
    code = main(["compare", str(study["runs"] / "ft_lora"), str(odd), "--out", str(tmp_path / "cmp"), "--no-report"])
    assert code == 2
    assert "same test set" in capsys.readouterr().err


def test_report_rebuilds_from_comparison_json(study, tmp_path):
    out = tmp_path / "again"
    assert main(["report", "--comparison", str(study["out"] / "comparison.json"), "--out", str(out),
                 "--formats", "md,html"]) == 0
    assert (out / "report.md").read_text(encoding="utf-8") == study["md"]
    assert (out / "report.html").read_text(encoding="utf-8") == study["html"]
    assert main(["report", "--out", str(tmp_path / "empty")]) == 2


def test_published_reference_results_are_cited_next_to_ours(study, tmp_path):
    runs = {n: str(study["runs"] / n) for n in ("scratch_tiny", "ft_lora", "baseline_s0")}
    doc = {"runs": list(runs.values()),
           "reference_results": [
               {"name": "paper: scratch", "source": "seed report", "arm": "scratch", "test_accuracy": 0.9195},
               {"name": "paper: GPT-2 + LoRA", "source": "seed report", "arm": "finetune", "method": "lora",
                "model": "gpt2", "test_accuracy": 0.9154}]}
    (tmp_path / "study.json").write_text(json.dumps(doc))
    out = tmp_path / "cmp"
    assert main(["compare", str(tmp_path / "study.json"), "--out", str(out), "--formats", "md", "--bootstrap", "200"]) == 0
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "### Against published results" in md
    rows = _table(md, "Test accuracy reported elsewhere")
    scratch_acc = _metrics(study, "scratch_tiny")["test"]["accuracy"]
    (scratch,) = [r for r in rows if r[0] == "paper: scratch"]
    assert scratch[2] == "0.9195" and float(scratch[4]) == pytest.approx(scratch_acc, abs=1e-4)
    assert float(scratch[5]) == pytest.approx(scratch_acc - 0.9195, abs=1e-4)
    (gpt2,) = [r for r in rows if r[0] == "paper: GPT-2 + LoRA"]
    assert gpt2[4] == "not run here"  # the LoRA run here is a tiny Llama, not GPT-2
    assert "Against published results" not in study["md"]  # no references declared, no section
