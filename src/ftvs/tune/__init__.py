"""`ftvs tune`: hyperparameter search for one arm, on the validation split only.

- space.py: the search space of each arm (defaults + YAML overrides);
- trials.py: one trial (a child `ftvs train` run with pruning, or an in-process baseline fit);
- search.py: the Optuna study (budget, resume, progress) and `tune_arm`, the entry point for the study runner;
- summary.py: tune.json and best.yaml;
- cli.py: the command line.
"""

from ftvs.tune.cli import add_cli, cmd_tune
from ftvs.tune.search import tune_arm

__all__ = ["add_cli", "cmd_tune", "tune_arm"]
