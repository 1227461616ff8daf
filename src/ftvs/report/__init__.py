"""`ftvs report`: the comparative report (Markdown, self-contained HTML, PDF) built from a comparison.

ftvs report RUN_DIR... --out DIR         # compare the runs, then write the report
ftvs report --out DIR                    # rebuild from DIR/comparison.json
ftvs report --comparison FILE --out DIR  # rebuild from a comparison.json elsewhere
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from ftvs.comparison import COMPARISON_JSON, compare
from ftvs.comparison.decide import add_constraint_args, constraints_from_args
from ftvs.errors import FtvsError, closest
from ftvs.fileio import atomic_write_bytes, check_folder_path, read_json, write_json
from ftvs.report.builder import build_blocks, report_title
from ftvs.report.render import to_html, to_markdown, write_pdf

FORMATS = ("md", "html", "pdf")
REPORT_FILES = {"md": "report.md", "html": "report.html", "pdf": "report.pdf"}
PDF_INFO = "report_pdf.json"  # pages and layout level the PDF was fitted at


def parse_formats(text: str) -> tuple[str, ...]:
    out = tuple(f.strip().lower() for f in str(text).split(",") if f.strip())
    bad = [f for f in out if f not in FORMATS]
    if bad or not out:
        hint = closest(bad[0], FORMATS) if bad else ""
        raise FtvsError(
            f"unknown report format {bad[0] if bad else text!r}{hint}; choose from {', '.join(FORMATS)}"
        )
    return out


def build_report(comparison: dict, out_dir, formats=FORMATS, fig_dir=None) -> dict[str, Path]:
    """Write report.md (figures beside it), report.html (self-contained) and report.pdf into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig_dir = Path(fig_dir) if fig_dir else out
    if fig_dir.resolve() != out.resolve():  # figures must sit beside report.md
        for name in (comparison.get("figures") or {}).values():
            if (fig_dir / name).is_file():
                shutil.copyfile(fig_dir / name, out / name)
        fig_dir = out
    missing = [n for n in (comparison.get("figures") or {}).values() if not (fig_dir / n).is_file()]
    if missing:
        raise FtvsError(
            f"figure {missing[0]} listed in comparison.json is missing from {fig_dir}; rerun `ftvs compare`"
        )
    blocks = build_blocks(comparison)
    title = report_title(comparison)
    written: dict[str, Path] = {}
    if "md" in formats:
        written["md"] = out / REPORT_FILES["md"]
        atomic_write_bytes(written["md"], to_markdown(blocks).encode("utf-8"))
    if "html" in formats:
        written["html"] = out / REPORT_FILES["html"]
        atomic_write_bytes(written["html"], to_html(blocks, fig_dir, title).encode("utf-8"))
    if "pdf" in formats:
        written["pdf"] = out / REPORT_FILES["pdf"]
        write_json(out / PDF_INFO, write_pdf(blocks, fig_dir, title, written["pdf"]))
    return written


def add_cli(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "report",
        help="write the comparative report (report.md, report.html, report.pdf)",
        description="Write the comparative report: model descriptions, dataset description, training and "
        "evaluation "
        "(curves, metrics, time, convergence, stability, overfitting) and the comparative analysis "
        "(significance, cost, when from-scratch is preferable, size/data sensitivity). With RUN_DIRs it "
        "runs `ftvs compare` first; without, it rebuilds from OUT/comparison.json (or --comparison).",
    )
    p.add_argument(
        "runs",
        nargs="*",
        metavar="RUN_DIR",
        help="run folders, study folders, glob patterns or a study JSON (optional)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--comparison", help="an existing comparison.json to render (default OUT/comparison.json)")
    p.add_argument(
        "--formats", default="md,html,pdf", help="comma-separated subset of md,html,pdf (default all)"
    )
    p.add_argument(
        "--bootstrap", type=int, default=2000, help="bootstrap resamples when comparing (default 2000)"
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed when comparing (default 0)")
    add_constraint_args(p)
    p.set_defaults(func=cmd_report)
    return p


def cmd_report(args) -> int:
    formats = parse_formats(args.formats)
    out = Path(args.out)
    check_folder_path(out, "--out")
    if args.runs:
        if args.comparison:
            raise FtvsError("give either RUN_DIRs or --comparison, not both")
        constraints = constraints_from_args(args)
        comparison = compare(
            args.runs, out, n_resamples=args.bootstrap, seed=args.seed, constraints=constraints
        )
        fig_dir = out
    else:
        if constraints_from_args(args):
            raise FtvsError(
                "deployment constraints (--max_latency_ms, ...) are applied when comparing: pass the "
                "RUN_DIRs too, or run `ftvs compare RUN_DIR... --out DIR` with them"
            )
        path = Path(args.comparison) if args.comparison else out / COMPARISON_JSON
        if not path.is_file():
            raise FtvsError(
                f"{path} not found; pass RUN_DIRs to compare, or run `ftvs compare RUN_DIR... --out {out}`"
            )
        comparison = read_json(path, "comparison")
        if "runs" not in comparison or "significance" not in comparison:
            raise FtvsError(f"{path} is not a comparison.json written by `ftvs compare`")
        fig_dir = path.parent
        if fig_dir.resolve() != out.resolve():
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / COMPARISON_JSON, comparison)
    for kind, path in build_report(comparison, out, formats=formats, fig_dir=fig_dir).items():
        extra = ""
        if kind == "pdf" and (out / PDF_INFO).is_file():
            extra = f" ({read_json(out / PDF_INFO)['pages']} pages)"
        print(f"wrote {path}{extra}")
    return 0
