"""No code and no pickle from a model folder ever runs (issue #13, item 1).

A model folder whose config names its own Python code (`auto_map`) is refused before transformers sees it,
even when "y" is typed at transformers' "run the custom code?" prompt; weights stored only as pickles
(`pytorch_model.bin`, `adapter_model.bin`) are refused; every `from_pretrained` call in src/ passes the
safe arguments (checked on the source with `ast`).
"""

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_bad_input import REPORT, _fails, _toy_rows, _write_csv

from ftvs.cli import main
from ftvs.pretrained import safe_pretrained_kwargs

SRC = Path(__file__).resolve().parents[1] / "src"
EVIL_CODE = """
from pathlib import Path
Path({marker!r}).write_text("custom code ran")
from transformers import LlamaConfig
class EvilConfig(LlamaConfig):
    model_type = "llama"
"""


def _make_evil(model_dir: Path, marker: Path) -> None:
    """Add `auto_map` custom code to a model folder; importing the code writes `marker`."""
    (model_dir / "configuration_evil.py").write_text(EVIL_CODE.format(marker=str(marker)))
    for name in ("config.json", "tokenizer_config.json"):
        path = model_dir / name
        if path.is_file():
            data = json.loads(path.read_text())
            data["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig"}
            path.write_text(json.dumps(data))


def _ftvs_with_yes(args) -> subprocess.CompletedProcess:
    """The real console command, answering "y" to any prompt on stdin."""
    env = {
        **os.environ,
        "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "ftvs", *map(str, args)],
        input="y\ny\n",
        text=True,
        capture_output=True,
        env=env,
        timeout=600,
    )


@pytest.fixture(scope="module")
def lora_setup(tmp_path_factory, tiny_llama_dir):
    root = tmp_path_factory.mktemp("safe")
    _write_csv(root / "src.csv", _toy_rows(12))
    data = root / "data"
    assert main(["prepare", str(root / "src.csv"), "--output_dir", str(data), "--tokenizer", "none"]) == 0
    run = root / "lora"
    assert (
        main(
            [
                "train",
                "finetune",
                "--data",
                str(data),
                "--output_dir",
                str(run),
                "--model",
                str(tiny_llama_dir),
                "--method",
                "lora",
                "--num_train_epochs",
                "1",
                "--disable_tqdm",
                "--max_seq_length",
                "16",
                "--no-evaluate",
            ]
        )
        == 0
    )
    return root, data, run


def test_custom_code_never_runs_even_when_y_is_typed(lora_setup, tiny_llama_dir, tmp_path):
    root, data, run = lora_setup
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil"
    shutil.copytree(tiny_llama_dir, evil)
    _make_evil(evil, marker)

    # --resume after pointing the saved config at the folder (an unfinished run)
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    cfg = yaml.safe_load((resumed / "config.yaml").read_text())
    cfg["model_name_or_path"] = str(evil)
    (resumed / "config.yaml").write_text(yaml.safe_dump(cfg))
    (resumed / "train_summary.json").write_text('{"status": "running"}')
    # evaluate after editing the base model's path in model/ftvs.json (LoRA)
    rebased = tmp_path / "rebased"
    shutil.copytree(run, rebased)
    info = json.loads((rebased / "model" / "ftvs.json").read_text())
    info["base_model_path"] = info["base_model"] = str(evil)
    (rebased / "model" / "ftvs.json").write_text(json.dumps(info))
    # evaluate of a full-model folder that carries the code
    full = tmp_path / "full"
    shutil.copytree(run, full)
    for f in (full / "model").iterdir():
        if f.name.startswith("adapter_"):
            f.unlink()
    shutil.copy(evil / "model.safetensors", full / "model")
    shutil.copy(evil / "config.json", full / "model")
    shutil.copy(evil / "configuration_evil.py", full / "model")
    info = json.loads((full / "model" / "ftvs.json").read_text())
    info["method"] = "full"
    (full / "model" / "ftvs.json").write_text(json.dumps(info))

    cases = {
        "train finetune --model DIR": [
            "train",
            "finetune",
            "--data",
            data,
            "--output_dir",
            tmp_path / "r1",
            "--model",
            evil,
            "--num_train_epochs",
            "1",
            "--disable_tqdm",
        ],
        "train finetune --resume (edited config.yaml)": ["train", "finetune", "--resume", resumed],
        "evaluate (edited model/ftvs.json base path)": ["evaluate", rebased],
        "evaluate (full-model folder)": ["evaluate", full],
        "prepare --tokenizer DIR": [
            "prepare",
            root / "src.csv",
            "--output_dir",
            tmp_path / "d2",
            "--tokenizer",
            evil,
        ],
        "train scratch --tokenizer DIR": [
            "train",
            "scratch",
            "--data",
            data,
            "--output_dir",
            tmp_path / "r2",
            "--tokenizer",
            evil,
            "--disable_tqdm",
        ],
    }
    for name, args in cases.items():
        proc = _ftvs_with_yes(args)
        err = proc.stderr.strip()
        assert not marker.exists(), (name, err[-2000:])
        assert proc.returncode == 2, (name, proc.returncode, err[-2000:])
        assert err.startswith("ftvs: error: ") and "\n" not in err, (name, err[-2000:])
        assert "custom code" in err and "auto_map" in err, (name, err)
        REPORT.append((name, err))


def test_pickled_weights_are_refused(lora_setup, tiny_llama_dir, tmp_path, capsys):
    root, data, run = lora_setup
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_llama_dir, pickled)
    (pickled / "model.safetensors").rename(
        pickled / "pytorch_model.bin"
    )  # content does not matter: never read
    _fails(
        capsys,
        [
            "train",
            "finetune",
            "--data",
            data,
            "--output_dir",
            tmp_path / "r",
            "--model",
            pickled,
            "--num_train_epochs",
            "1",
            "--disable_tqdm",
        ],
        "pickled weights",
        "pytorch_model.bin",
    )
    adapter_bin = tmp_path / "adapter_bin"
    shutil.copytree(run, adapter_bin)
    (adapter_bin / "model" / "adapter_model.safetensors").rename(adapter_bin / "model" / "adapter_model.bin")
    _fails(capsys, ["evaluate", adapter_bin], "adapter_model.bin")


def _from_pretrained_calls():
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "from_pretrained"
            ):
                yield path, node


def test_every_from_pretrained_call_passes_the_safe_arguments():
    calls = list(_from_pretrained_calls())
    assert len(calls) >= 6
    for path, node in calls:
        where = f"{path.relative_to(SRC)}:{node.lineno}"
        keywords = {k.arg: k.value for k in node.keywords}
        assert keywords.get("trust_remote_code") is None, where  # only through the helper
        # the helper's result is splatted, either directly or through a local name assigned from it
        splat = [k.value for k in node.keywords if k.arg is None]
        assert splat, f"{where}: pass **safe_pretrained_kwargs(...)"
        value = splat[0]
        if isinstance(value, ast.Name):
            func = _enclosing_assignment(path, node, value.id)
        else:
            func = value
        assert isinstance(func, ast.Call) and getattr(func.func, "id", None) == "safe_pretrained_kwargs", (
            where
        )
        loads_weights = "Model" in ast.unparse(node.func.value)
        weights = any(k.arg == "weights" and getattr(k.value, "value", False) for k in func.keywords)
        if loads_weights and "gguf_file" not in keywords:
            assert weights, f"{where}: a model load must pass safe_pretrained_kwargs(..., weights=True)"
    assert safe_pretrained_kwargs("gpt2") == {"trust_remote_code": False}
    assert safe_pretrained_kwargs("gpt2", weights=True) == {
        "trust_remote_code": False,
        "use_safetensors": True,
    }


def _enclosing_assignment(path: Path, call: ast.Call, name: str):
    """The value last assigned to `name` before `call` in the function around it."""
    tree = ast.parse(path.read_text())
    for func in ast.walk(tree):
        if isinstance(func, ast.FunctionDef) and func.lineno <= call.lineno <= func.end_lineno:
            found = None
            for node in ast.walk(func):
                if (
                    isinstance(node, ast.Assign)
                    and node.lineno < call.lineno
                    and any(getattr(t, "id", None) == name for t in node.targets)
                ):
                    found = node.value
            if found is not None:
                return found
    return None
