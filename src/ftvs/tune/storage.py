"""Where a search's Optuna study lives (`ftvs tune --storage`).

    sqlite    TUNE_DIR/optuna.db: the default on one machine
    journal   TUNE_DIR/optuna.journal: Optuna's journal file, the default with `--executor ray`; it takes
              file locks that work on the network filesystems a cluster shares (SQLite's do not), so the
              search can be resumed from any node that mounts the tune folder
    URL       an RDB the user runs (postgresql://..., mysql+pymysql://...): the study is named after the
              tune folder, so several searches can share one database

Only the search process (the driver) reads and writes the study: trials report through their run
folders, whatever executes them. A tune folder keeps the storage it was started with: resuming it with
another is refused instead of silently starting over.
"""

from __future__ import annotations

from pathlib import Path

from ftvs.errors import FtvsError

DB, JOURNAL = "optuna.db", "optuna.journal"
STUDY_NAME = "ftvs-tune"
FILES = {"sqlite": DB, "journal": JOURNAL}


def _redacted(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("://", 1)[0] + "://..."


def choose(out: Path, storage: str | None, shared: bool) -> str:
    """The storage to use: the given one, else the one the folder already holds, else journal for a
    cluster (`shared`) and sqlite here."""
    found = [kind for kind, name in FILES.items() if (out / name).exists()]
    if storage is None:
        return found[0] if found else ("journal" if shared else "sqlite")
    if storage not in FILES and "://" not in storage:
        raise FtvsError(
            f"--storage {storage!r}: use sqlite, journal or a database URL such as postgresql://USER@HOST/DB"
        )
    if found and found[0] != storage:
        raise FtvsError(
            f"{out} holds a search in {FILES[found[0]]}; resume it with --storage {found[0]} "
            "(or without --storage), or pick another --output_dir"
        )
    return storage


def open_storage(out: Path, storage: str):
    """(Optuna storage, study name, description for tune.json)."""
    import optuna

    if storage == "sqlite":
        return optuna.storages.RDBStorage(f"sqlite:///{out / DB}"), STUDY_NAME, f"sqlite:{DB}"
    if storage == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(out / JOURNAL))), STUDY_NAME, f"journal:{JOURNAL}"
    try:
        rdb = optuna.storages.RDBStorage(storage)
    except Exception as e:  # a driver that is not installed, a database that cannot be reached
        reason = " ".join(str(e).split())[:200]
        raise FtvsError(f"cannot open the Optuna storage {_redacted(storage)} ({reason}); check the URL "
                        "and that its database driver is installed") from None  # fmt: skip
    return rdb, f"{STUDY_NAME}:{out}", _redacted(storage)
