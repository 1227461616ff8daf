"""`ftvs prepare`: turn a data source into a cleaned, stratified, reproducible data folder.

Every experiment in the study reads the same four files (`train/val/test.jsonl`, `metadata.json`,
layout in docs/design.md), so the two arms are compared on identical examples. Only `sources` knows
about source formats; everything downstream calls `load_split` / `load_metadata`.

Pipeline (each step is counted in `metadata["cleaning"]` so a reader can see what was removed):

1. `sources`: load the source into column tables: `hf:NAME[:CONFIG]`, a local `.csv/.tsv/.jsonl/.parquet`
   file, a folder with `train.*` (+ optional `val.*`/`test.*`), or the offline built-ins `20newsgroups`,
   `sms_spam`;
2. `cleaning`: pick the text/label columns (auto-detected by common names, or `--text-column/--label-column`);
   repair invalid UTF-8, normalise whitespace, cap absurd lengths, drop empty texts and missing labels;
   drop exact duplicate texts inside train, then val/test texts that also occur in train (leakage);
3. `splitting`: the source's test (and validation) split when it has one, otherwise a stratified split
   carved from train; optionally a stratified subsample of train (`--max-train-examples`); also the
   study's nested train subsets and val/test caps;
4. `folder`: write the files atomically (a temp folder swapped into place); `prepare` runs the steps and
   prints a summary.
"""

from ftvs.data.cleaning import MAX_CHARS
from ftvs.data.folder import (
    DATA_VERSION,
    SPLITS,
    content_hash,
    load_metadata,
    load_split,
    load_tokenizer,
    split_hash,
    split_stats,
    staging_dir,
    write_split,
)
from ftvs.data.prepare import DEFAULT_TOKENIZER, add_cli, cmd_prepare, prepare, print_summary
from ftvs.data.sources import BUILTIN_SOURCES
from ftvs.data.splitting import (
    cap_eval_splits,
    nested_subset,
    stratified_cap,
    stratified_split,
    stratified_subsample,
    subsample_train,
)

__all__ = [
    "BUILTIN_SOURCES", "DATA_VERSION", "DEFAULT_TOKENIZER", "MAX_CHARS", "SPLITS", "add_cli",
    "cap_eval_splits", "cmd_prepare", "content_hash", "load_metadata", "load_split", "load_tokenizer",
    "nested_subset", "prepare", "print_summary", "split_hash", "split_stats", "staging_dir",
    "stratified_cap", "stratified_split", "stratified_subsample", "subsample_train", "write_split",
]  # fmt: skip
