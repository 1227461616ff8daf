"""Tiny real runs of every arm on a small Banking77-format set (real 20 Newsgroups posts), compared and
reported once per test session.

test_compare.py and test_report.py read the same runs; building them (two trainings, three baseline fits,
the comparison and the report) is the slow part, so the first fixture call builds and later calls reuse.
"""

import json

from builders import newsgroups_csv

from ftvs.cli import main
from ftvs.data import prepare, subsample_train

NUM = r"[+-]?\d+\.\d+"
_BUILT: dict = {}


def build_tiny_study(tmp_path_factory, tiny_llama_dir) -> dict:
    if "study" not in _BUILT:
        _BUILT["study"] = _build(tmp_path_factory, tiny_llama_dir)
    return _BUILT["study"]


def _build(tmp_path_factory, tiny_llama_dir) -> dict:
    """Tiny real runs of each arm on one data folder, compared and reported with the CLI."""
    root = tmp_path_factory.mktemp("study")
    data = root / "data"
    # Banking77-format CSVs of real newsgroup posts, 20 classes: ~560 train, 300 test
    prepare(str(newsgroups_csv(root / "csv", per_class_train=28, per_class_test=15)), data, seed=0)
    half = root / "data_half"
    subsample_train(data, half, 0.5, seed=0)
    runs = root / "runs"
    common = [
        "--data",
        str(data),
        "--num_train_epochs",
        "2",
        "--max_seq_length",
        "32",
        "--disable_tqdm",
        "--per_device_train_batch_size",
        "64",
    ]
    assert (
        main(
            [
                "train",
                "scratch",
                "--output_dir",
                str(runs / "scratch_tiny"),
                "--preset",
                "tiny",
                "--learning_rate",
                "3e-3",
                *common,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train",
                "finetune",
                "--output_dir",
                str(runs / "ft_lora"),
                "--model",
                str(tiny_llama_dir),
                "--method",
                "lora",
                *common,
            ]
        )
        == 0
    )
    assert (
        main(["baseline", "--data", str(data), "--output_dir", str(runs / "baseline_s0"), "--C", "10"]) == 0
    )
    assert (
        main(
            [
                "baseline",
                "--data",
                str(data),
                "--output_dir",
                str(runs / "baseline_s1"),
                "--C",
                "3",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    assert (
        main(["baseline", "--data", str(half), "--output_dir", str(runs / "baseline_half"), "--C", "10"]) == 0
    )
    out = root / "report"
    assert main(["compare", str(runs), "--out", str(out)]) == 0  # a study folder: runs found recursively
    comparison = json.loads((out / "comparison.json").read_text())
    return {
        "root": root,
        "data": data,
        "runs": runs,
        "out": out,
        "c": comparison,
        "md": (out / "report.md").read_text(encoding="utf-8"),
        "html": (out / "report.html").read_text(encoding="utf-8"),
    }


def metrics_of(study, name):
    return json.loads((study["runs"] / name / "metrics.json").read_text())


def md_table(md: str, caption_start: str) -> list[list[str]]:
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"*{caption_start}"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return rows[2:] if rows and rows[1][0].startswith("---") else rows[1:]
