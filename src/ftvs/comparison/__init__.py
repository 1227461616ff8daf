"""The comparison of evaluated runs (comparison.json), from which `ftvs.report` writes the report.

Everything here reads the documented run-folder layout (`ftvs.rundir`), so scratch, fine-tuned and
baseline runs are treated alike. `compare(paths, out_dir)` writes into the output folder:

- `comparison.json`: the table (one row per run), the seed groups (mean ± std), convergence and
  overfitting numbers, paired significance for every pair of runs, sweeps, dataset and model
  descriptions, the figure list; the report is rendered from this file alone;
- `comparison.md`: the table in Markdown;
- the figures (PNG, `ftvs.plots_compare`).

Modules: `runs` (find and load run folders), `tables` (per-run rows, seed groups, the Markdown table),
`significance`, `describe` (models and data set), `sweeps`, `focus` (which runs the report narrates),
`tuning` (the arms' searches of a tuned study), `build` (the driver).
"""

from ftvs.comparison.build import COMPARISON_JSON, COMPARISON_MD, COMPARISON_VERSION, compare
from ftvs.comparison.describe import describe_dataset, describe_model
from ftvs.comparison.focus import best_runs_of_two_arms, focus, per_class_difference, representative
from ftvs.comparison.runs import ARM_LABEL, ARM_ORDER, Run, discover, load_runs, resolve_data_dir
from ftvs.comparison.significance import check_same_test_set, find_pair, significance
from ftvs.comparison.sweeps import sweeps
from ftvs.comparison.tables import (
    TABLE_COLUMNS,
    convergence,
    make_groups,
    markdown_table,
    table_cells,
    table_row,
)

__all__ = [
    "ARM_LABEL",
    "ARM_ORDER",
    "COMPARISON_JSON",
    "COMPARISON_MD",
    "COMPARISON_VERSION",
    "TABLE_COLUMNS",
    "Run",
    "best_runs_of_two_arms",
    "check_same_test_set",
    "compare",
    "convergence",
    "describe_dataset",
    "describe_model",
    "discover",
    "find_pair",
    "focus",
    "load_runs",
    "make_groups",
    "markdown_table",
    "per_class_difference",
    "representative",
    "resolve_data_dir",
    "significance",
    "sweeps",
    "table_cells",
    "table_row",
]
