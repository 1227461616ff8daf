"""The Python API (ftvs/api.py): `import ftvs` stays cheap, and docs/api.md's example runs end to end."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_ftvs_is_cheap_and_the_api_names_are_functions_even_after_the_submodules():
    code = (
        "import sys, ftvs; assert 'torch' not in sys.modules, 'import ftvs loaded torch'\n"
        "import ftvs.train, ftvs.study\n"
        "from ftvs import prepare, train, baseline, evaluate, compare, study\n"
        "from ftvs.train import TrainStep\n"
        "assert all(callable(f) and f.__module__ == 'ftvs.api' for f in (prepare, train, baseline, evaluate, "
        "compare, study)), 'an API name resolved to a submodule'\n"
        "assert ftvs.train is train\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_the_documented_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    example = re.search(r"## Example.*?```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)  # the example writes data/, runs/ and results/ where it runs
    namespace: dict = {}
    exec(compile(example, "docs/api.md", "exec"), namespace)
    scratch, tfidf, comparison = namespace["scratch"], namespace["tfidf"], namespace["comparison"]
    assert namespace["meta"]["num_labels"] == 2
    # SMS spam: 87% ham; both models must beat predicting the majority class on macro-F1 (0.46)
    assert scratch["test"]["macro_f1"] > 0.6 and tfidf["test"]["macro_f1"] > 0.85
    assert {r["run"] for r in comparison["runs"]} == {"sms-tfidf", "sms-scratch"}
    assert Path(comparison["report"]["md"]).is_file()
    config = (tmp_path / "runs" / "sms-scratch" / "config.yaml").read_text()
    assert "class_weights: balanced" in config


def test_api_errors_are_ftvs_errors(tmp_path):
    import ftvs
    from ftvs.errors import FtvsError

    with pytest.raises(FtvsError, match="did you mean 'scratch'"):
        ftvs.train(arm="scrach", data=str(tmp_path), output_dir=str(tmp_path / "run"))
    with pytest.raises(FtvsError, match="unknown flags key 'num_epochs'"):
        ftvs.train(arm="scratch", data=str(tmp_path), output_dir=str(tmp_path / "run"), num_epochs=3)
