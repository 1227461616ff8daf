"""`ftvs compare RUN_DIR... --out DIR`: side-by-side table, seed groups, significance, figures, report.

The command on top of two layers: `ftvs.comparison` computes comparison.json, `ftvs.report` renders
the report from it; neither imports this module. `compare` and `find_pair` stay importable from here.
"""

from __future__ import annotations

import argparse

from ftvs.comparison import compare, find_pair, markdown_table
from ftvs.comparison.decide import add_constraint_args, constraints_from_args
from ftvs.errors import FtvsError
from ftvs.fileio import check_folder_path
from ftvs.report import build_report, parse_formats
from ftvs.report.sections_decide import recommendation_text

# the rest of the comparison API lives in ftvs.comparison
__all__ = ["add_cli", "cmd_compare", "compare", "find_pair"]


def add_cli(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "compare",
        help="compare evaluated runs: table, significance, figures and the report",
        description="Compare evaluated run folders (scratch, fine-tuned, baseline) scored on the same "
        "test set: "
        "side-by-side table, seed groups (mean ± std), McNemar exact test and paired bootstrap CIs "
        "for every pair, overlaid curves, confusion matrices, per-class F1 differences, and sweeps "
        "(train_fraction / preset tags), and the recommendation under the deployment constraints "
        "(--max_latency_ms ...). Writes comparison.json, comparison.md, the figures and "
        "report.md/.html/.pdf into --out.",
    )
    p.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_DIR",
        help="run folders, study folders (searched for runs), glob patterns, or a study JSON listing runs",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the bootstrap and of the example picks (default 0)"
    )
    p.add_argument("--no-report", dest="report", action="store_false", help="skip report.md/.html/.pdf")
    p.add_argument(
        "--formats", default="md,html,pdf", help="report formats, comma-separated (default md,html,pdf)"
    )
    add_constraint_args(p)
    p.set_defaults(func=cmd_compare)
    return p


def cmd_compare(args) -> int:
    if args.bootstrap < 100:
        raise FtvsError("--bootstrap needs at least 100 resamples for a 95% interval")
    check_folder_path(args.out, "--out")
    constraints = constraints_from_args(args)
    comparison = compare(
        args.runs, args.out, n_resamples=args.bootstrap, seed=args.seed, constraints=constraints
    )
    print(markdown_table(comparison["runs"]))
    print(recommendation_text(comparison))
    if args.report:
        written = build_report(comparison, args.out, formats=parse_formats(args.formats))
        for path in written.values():
            print(f"wrote {path}")
    return 0
