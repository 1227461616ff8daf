"""Training configuration: defaults <- YAML file <- flags."""

import pytest

from ftvs.config import build_config
from ftvs.errors import FtvsError


def test_yaml_config_is_overridden_by_flags_and_unknown_keys_suggest_the_closest(tmp_path):
    cfg = build_config({"learning_rate": 1e-4, "num_train_epochs": 7}, {"learning_rate": 3e-4})
    assert cfg.learning_rate == 3e-4 and cfg.num_train_epochs == 7
    with pytest.raises(FtvsError, match="did you mean 'learning_rate'"):
        build_config({"learnig_rate": 1e-4}, {})
    with pytest.raises(FtvsError, match="preset"):
        build_config({}, {"preset": "huge"})
