"""Crash-safe file writing, JSON/JSONL helpers, safetensors I/O and the run-directory lock.

Every file a run depends on is written atomically (temp file in the same folder, fsync, rename), so a
kill at any instant leaves either the old file or the new one, never a torn one. Nothing here uses
pickle: tensors go to safetensors, everything else to JSON.
"""

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load_bytes
from safetensors.torch import save as st_save_bytes

from ftvs.errors import FtvsError

_UMASK = os.umask(0)
os.umask(_UMASK)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old or the new content, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; results should be as readable as any file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # e.g. ENOSPC from write(): say which file
            e.filename = str(path)
        raise
    _fsync_dir(path.parent)


def _json_default(obj):
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _finite(obj):
    """Replace NaN/inf floats by None so the JSON stays standard."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def dumps_json(obj, indent: int | None = 2) -> str:
    return json.dumps(_finite(json.loads(json.dumps(obj, default=_json_default))), indent=indent)


def write_json(path, obj) -> None:
    atomic_write_bytes(path, (dumps_json(obj) + "\n").encode())


def read_json(path, what: str = "file") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FtvsError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FtvsError(
            f"{what} {path} is corrupt ({e.__class__.__name__}: {e}); delete it or restore a copy"
        ) from None


def write_jsonl(path, rows) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_bytes(path, text.encode("utf-8"))


def append_jsonl(path, row) -> None:
    """Append one line and fsync it (history files grow one epoch at a time)."""
    path = Path(path)
    with open(path, "a", encoding="utf-8") as f:
        f.write(dumps_json(row, indent=None) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path) -> list[dict]:
    path = Path(path)
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise FtvsError(f"{path}:{n} is not valid JSON; fix or delete that line") from None
    return rows


def save_tensors(path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Atomically write a safetensors file (tensors are made contiguous CPU copies first)."""
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, st_save_bytes(flat, metadata=metadata))


def load_tensors(path, device="cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file; a truncated or tampered file is a one-line FtvsError, never a crash."""
    path = Path(path)
    if not path.is_file():
        raise FtvsError(f"checkpoint file missing: {path}; rerun training or point to a complete run dir")
    try:
        tensors = st_load_bytes(path.read_bytes())
    except (SafetensorError, ValueError, RuntimeError, OSError) as e:
        raise FtvsError(f"checkpoint {path} is truncated or corrupt ({e}); restore it or retrain") from None
    return {k: v.to(device) for k, v in tensors.items()}


def check_folder_path(path, flag: str) -> None:
    """A folder to write into must not be an existing file (`flag` names the option in the message)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FtvsError(f"{flag} {path} is a file; name a folder")


def replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Swap a fully written temp folder into place (old folder removed only after the new one is complete)."""
    final_dir = Path(final_dir)
    old = final_dir.with_name(final_dir.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final_dir.exists():
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    _fsync_dir(final_dir.parent)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def recover_dir(final_dir) -> None:
    """Undo a `replace_dir` interrupted between its two renames (only `<name>.old` is left): put the old,
    complete folder back. Call it only while holding the run's lock."""
    final_dir = Path(final_dir)
    old = final_dir.with_name(final_dir.name + ".old")
    if not final_dir.exists() and old.is_dir():
        os.replace(old, final_dir)
        _fsync_dir(final_dir.parent)


def files_hash(root, names) -> str:
    """sha256 over the files `names` under `root`, each as its name, a newline and its bytes."""
    h = hashlib.sha256()
    for name in names:
        h.update(f"{name}\n".encode())
        with open(Path(root) / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def dir_size_bytes(path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class RunLock:
    """Exclusive lock on a run directory (fcntl), so two processes never write the same run."""

    NAME = ".lock"

    def __init__(self, run_dir):
        self.path = Path(run_dir) / self.NAME
        self._fd = None

    def __enter__(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise FtvsError(
                f"run dir {self.path.parent} is in use by another ftvs process; wait for it or pick another "
                "--output_dir"
            ) from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, str(os.getpid()).encode())
        return self

    @staticmethod
    def is_free(run_dir) -> bool:
        """Whether no process holds the lock of `run_dir` (probed without taking it for long)."""
        import fcntl

        path = Path(run_dir) / RunLock.NAME
        if not path.exists():
            return True
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    def __exit__(self, *exc):
        import fcntl

        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
