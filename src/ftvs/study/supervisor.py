"""The study process: prepares the data, runs every planned run as a child process, resumes, retries.

Every training run is a subprocess (`python -m ftvs train ...`, or `launch.launch_command` when a
launcher is set), so a crash in one run never kills the study, and a killed study leaves resumable
runs: rerunning the same command skips finished runs, resumes interrupted ones from their last
checkpoint (`ftvs train ... --resume RUN_DIR`), retries failed ones and carries on. `--force` reruns.

Where the child processes run is the executor's business (ftvs/executors: here one at a time or
`--parallel N`, or on a Ray cluster); the supervisor owns study.json. With several runs in flight each
has a thread, and the threads take turns on `self._lock`: they hold it while they read or change the
registry and let go only while they wait for their child, so the registry code stays single-threaded.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from pathlib import Path

import yaml

from ftvs.executors import Executor, Job
from ftvs.executors.local import LocalExecutor, last_error
from ftvs.fileio import RunLock, atomic_write_bytes, read_json, read_jsonl
from ftvs.launch import launch_command
from ftvs.rundir import (
    CHECKPOINT_DIR,
    CHECKPOINT_STATE,
    CONFIG,
    HISTORY,
    METRICS,
    has_checkpoint,
    read_summary,
)
from ftvs.study.data import prepare_study_data
from ftvs.study.plan import PlannedRun, frac, plan_runs
from ftvs.study.plan import plan_text as format_plan
from ftvs.study.progress import Progress, fmt_seconds, run_progress, study_eta, training_status
from ftvs.study.registry import (
    EntryFactory,
    load_registry,
    now,
    num_train_examples,
    open_registry,
    save_registry,
)
from ftvs.study.stages import stage_compare
from ftvs.study.summary import collect, result_text, run_results
from ftvs.study.tuning import run_tuning, tuned_config


class StudyInterrupted(Exception):
    pass


# --------------------------------------------------------------------------------------------------
# Child processes
# --------------------------------------------------------------------------------------------------


def ftvs_cmd(args: list[str], launcher: dict) -> list[str]:
    n = int((launcher or {}).get("num_processes", 1))
    if n <= 1:
        return [sys.executable, "-m", "ftvs", *args]
    extra = {k: v for k, v in launcher.items() if k != "num_processes"}
    if "cpu" not in extra:  # GPU processes where there are GPUs, gloo CPU processes elsewhere
        import torch  # only for multi-process runs: torch costs seconds to import

        extra["cpu"] = not torch.cuda.is_available()
    return [str(c) for c in launch_command(args, n, **extra)]


def _read_summary(run_dir: Path) -> dict:
    with contextlib.suppress(Exception):
        return read_summary(run_dir)
    return {}


# --------------------------------------------------------------------------------------------------
# The study
# --------------------------------------------------------------------------------------------------


class Study:
    def __init__(
        self,
        cfg: dict,
        out_dir,
        preset: str | None = None,
        force: bool = False,
        only=(),
        retry_failed: bool = True,
        progress: Progress | None = None,
        poll_seconds: float = 1.0,
        config_source: str | None = None,
        executor: Executor | None = None,
        tune_only: bool = False,
    ):
        self.cfg = cfg
        self.dir = Path(out_dir)
        self.preset = preset
        self.force = force
        self.only = list(only or [])
        self.retry_failed = retry_failed
        self.progress = progress or Progress()
        self.poll = poll_seconds
        self.config_source = config_source
        self.plan = plan_runs(tuned_config(cfg, self.dir))  # arms tuned earlier run with their best settings
        self.tune_only = tune_only
        self.entries = EntryFactory(self.dir, cfg, preset)
        self.path = self.dir / "study.json"
        self.reg: dict = {}
        self._started = time.monotonic()
        self._ran_any = False  # did this invocation (re)run anything? (else compare is up to date)
        self.executor = executor or LocalExecutor()
        self._lock = threading.Lock()  # held by the run threads except while they wait (module docstring)
        self._stopping = threading.Event()  # the study was interrupted: every run thread stops its child
        self._queued: set[str] = set()  # run ids of run_runs not yet done
        self._active: dict[str, tuple] = {}  # run id -> (entry, head, phase, progress info) of runs in flight

    def save(self) -> None:
        save_registry(self.path, self.reg)

    def rel(self, path) -> str:
        return os.path.relpath(Path(path), self.dir)

    def abs(self, rel) -> Path:
        return (self.dir / rel).resolve()

    def selected(self, rid: str) -> bool:
        return not self.only or any(fnmatch.fnmatch(rid, pat) for pat in self.only)

    def plan_text(self) -> str:
        return format_plan(self.cfg, self.plan)

    # --- main entry ------------------------------------------------------------------------------
    def run(self) -> dict:
        self.dir.mkdir(parents=True, exist_ok=True)
        with RunLock(self.dir):
            existing = load_registry(self.path)
            if existing is not None and self.force and not self.only:
                existing = None  # --force: a fresh registry (run folders are replaced as runs start)
            self.reg = open_registry(
                existing,
                self.entries,
                self.plan,
                force=self.force,
                selected=self.selected,
                config_source=self.config_source,
            )
            atomic_write_bytes(self.dir / "study.yaml", yaml.safe_dump(self.cfg, sort_keys=False).encode())
            self.save()
            old_term = signal.getsignal(signal.SIGTERM)

            def on_term(signum, frame):
                raise StudyInterrupted("terminated")

            with contextlib.suppress(ValueError):  # not in the main thread: keep the default
                signal.signal(signal.SIGTERM, on_term)
            try:
                self._run_all()
            except (KeyboardInterrupt, StudyInterrupted):
                self.reg["state"] = "interrupted"
                self.save()
                self.progress.end_line()
                raise
            finally:
                with contextlib.suppress(ValueError):
                    signal.signal(signal.SIGTERM, old_term)
        return self.reg

    def _run_all(self) -> None:
        t0 = time.monotonic()
        self.progress.say(
            f"study {self.cfg['name']}: {len(self.plan)} runs ({self.plan_text()}) -> {self.dir}"
        )
        self.prepare_data()
        run_tuning(self)
        if self.tune_only:
            self.reg["state"] = "tuned"
            self.save()
            return
        todo = [rid for rid in self.reg["order"] if self.selected(rid)]
        self.run_runs(todo)
        collect(self.reg, self.cfg)
        self.save()
        st = self.reg["stages"].get("compare") or {}
        up_to_date = (
            not self._ran_any
            and st.get("state") == "completed"
            and (self.dir / "report" / "comparison.json").is_file()
            and st.get("with_report") == bool(self.cfg.get("report"))
        )
        if up_to_date:
            self.progress.say("compare: up to date (no run changed)")
        elif self.cfg.get("compare") or self.cfg.get("report"):
            self.stage_compare(report=bool(self.cfg.get("report")))
        runs = [self.reg["runs"][r] for r in self.reg["order"]]
        failed = [r for r in runs if r["state"] == "failed"]
        self.reg["state"] = (
            "completed_with_failures"
            if failed or any(s.get("state") == "failed" for s in self.reg["stages"].values())
            else "completed"
        )
        if any(r["state"] not in ("completed", "failed") for r in runs):
            self.reg["state"] = "incomplete"  # --only left some runs out
        self.reg["seconds_last_invocation"] = time.monotonic() - t0
        self.save()

    # --- data ------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        prepare_study_data(self)

    def num_train_examples(self, entry: dict) -> int | None:
        return num_train_examples(self.reg, entry)

    # --- the runs ------------------------------------------------------------------------------------
    def run_runs(self, todo: list[str]) -> None:
        """Every run of `todo`: one after another, or as many at once as the executor has slots."""
        with self._lock:
            self._queued = set(todo)  # runs of this invocation not yet done: a student waits for its teacher
            if self.executor.slots <= 1 or len(todo) <= 1:
                for i, rid in enumerate(todo, 1):
                    self.run_one(rid, i, len(todo))
                return
            with self._released(), ThreadPoolExecutor(self.executor.slots, thread_name_prefix="run") as pool:
                futures = [
                    pool.submit(self._run_in_thread, rid, i, len(todo)) for i, rid in enumerate(todo, 1)
                ]
                try:
                    while True:  # short waits: the main thread must stay free for Ctrl-C and SIGTERM
                        done, pending = wait_futures(futures, timeout=0.5, return_when=FIRST_EXCEPTION)
                        if not pending or any(f.exception() for f in done):
                            break
                except BaseException:
                    self._stopping.set()
                    raise
                finally:
                    for f in futures:
                        f.cancel()
                    self._stopping.set()  # a run that failed the study stops the others too
            errors = [f.exception() for f in futures if not f.cancelled() and f.exception()]
            if errors:  # the cause, rather than the runs it stopped
                raise next((x for x in errors if not isinstance(x, StudyInterrupted)), errors[0])

    def _run_in_thread(self, rid: str, index: int, total: int) -> None:
        with self._lock:
            if not self._stopping.is_set():
                self.run_one(rid, index, total)

    @contextlib.contextmanager
    def _released(self):
        """Let the other run threads at the registry while this one waits."""
        self._lock.release()
        try:
            yield
        finally:
            self._lock.acquire()

    # --- one run -------------------------------------------------------------------------------------
    def run_one(self, rid: str, index: int, total: int) -> None:
        try:
            self._run_one(rid, index, total)
        finally:
            self._queued.discard(rid)

    def _teacher_problem(self, e: dict, head: str) -> str | None:
        """None once a distilled student's teacher run has completed, waiting while another run thread
        trains it; else why the student cannot start."""
        tid, said = e.get("teacher"), False
        while tid:
            t = self.reg["runs"].get(tid) or {}
            if t.get("state") == "completed":
                return None
            if tid not in self._queued:
                return (
                    f"its teacher run {tid} is {t.get('state', 'missing')}"
                    f"{' (' + t['error'] + ')' if t.get('error') else ''}; rerun the study (or --only {tid}) "
                    "to train the teacher first"
                )
            if self._stopping.is_set():
                raise StudyInterrupted("stopped with the study")
            if not said:
                self.progress.say(f"{head}: waiting for its teacher {tid}")
                said = True
            with self._released():
                time.sleep(self.poll)
        return None

    def _run_one(self, rid: str, index: int, total: int) -> None:
        e = self.reg["runs"][rid]
        run_dir, log = self.abs(e["run_dir"]), self.abs(e["log"])
        e["num_train_examples"] = self.num_train_examples(e)
        head = f"[{index}/{total}] {rid}"
        if not self._start(e, run_dir, head):
            return
        problem = self._teacher_problem(e, head)
        if problem:
            e.update(state="failed", error=f"not started: {problem}", finished_at=now())
            self.save()
            self.progress.say(f"  FAILED {rid}: {e['error']}")
            return
        log.parent.mkdir(parents=True, exist_ok=True)
        self._ran_any = True
        with self._released():
            self._wait_for_lock(run_dir)
        e["state"] = "running"
        e["error"] = None
        e["started_at"] = e.get("started_at") or now()
        self.save()
        try:
            if e["arm"] == "baseline":
                ok = self._run_baseline(e, run_dir, log, head)
            else:
                ok = self._run_neural(e, run_dir, log, head)
        except (KeyboardInterrupt, StudyInterrupted):
            e["state"] = "interrupted"
            e["error"] = "interrupted; rerun the study to resume"
            self._epochs_done(e, run_dir)
            self.save()
            raise
        self.progress.end_line()
        if ok:
            e["results"] = run_results(run_dir)
            e.update(state="completed", finished_at=now(), error=None)
        else:
            e.update(state="failed", finished_at=now())
        self._epochs_done(e, run_dir)
        self.save()
        if ok:
            self.progress.say(f"  done {rid}: {result_text(e)} in {fmt_seconds(e['seconds_wall'])}")
        else:
            self.progress.say(f"  FAILED {rid}: {e['error']} (log: {e['log']})")

    def _start(self, e: dict, run_dir: Path, head: str) -> bool:
        """Whether the run is to (re)run now; clears what a forced or changed run leaves behind."""
        force = self.force and self.selected(e["id"])
        done = e["state"] == "completed" and (run_dir / METRICS).is_file() and not e.get("needs_wipe")
        if done and not force:
            self.progress.say(f"{head}: done earlier ({result_text(e)}), skipped")
            return False
        if e["state"] == "failed" and not self.retry_failed and not force:
            self.progress.say(f"{head}: failed earlier ({e.get('error')}), skipped (--no-retry_failed)")
            return False
        if e.pop("needs_wipe", False) and not done:
            self._wipe(run_dir)
        if force:
            self._wipe(run_dir)
            e.update(
                state="pending",
                attempts=[],
                seconds_wall=0.0,
                epochs_done=0,
                resumed_from_epoch=None,
                results=None,
                error=None,
                exit_code=None,
                started_at=None,
                finished_at=None,
            )
        return True

    def _wipe(self, run_dir: Path) -> None:
        run_dir = run_dir.resolve()
        if run_dir.exists() and self.dir.resolve() in run_dir.parents:
            shutil.rmtree(run_dir)

    def _wait_for_lock(self, run_dir: Path, timeout: float = 120.0) -> None:
        """A previous study's training (killed with it) may still be exiting; give it time to let go."""
        if not run_dir.is_dir() or RunLock.is_free(run_dir):
            return
        self.progress.say(f"  waiting for an earlier process to release {self.rel(run_dir)} ...")
        end = time.monotonic() + timeout
        while time.monotonic() < end and not RunLock.is_free(run_dir):
            time.sleep(0.5)

    def _epochs_done(self, e: dict, run_dir: Path) -> None:
        hist = run_dir / HISTORY
        with contextlib.suppress(Exception):
            e["epochs_done"] = len(read_jsonl(hist)) if hist.is_file() else 0

    def _attempt(self, e: dict, mode: str, job: Job, head: str, phase: str) -> int:
        att = {
            "mode": mode,
            "started_at": now(),
            "ended_at": None,
            "outcome": "running",
            "exit_code": None,
            "seconds": None,
        }
        e["attempts"].append(att)
        self.save()
        t0 = time.monotonic()
        rc = None
        try:
            rc = self._spawn(e, job, head, phase)
        finally:
            att["seconds"] = time.monotonic() - t0
            e["seconds_wall"] = e.get("seconds_wall", 0.0) + att["seconds"]
            att["ended_at"] = now()
            att["exit_code"] = rc
            att["outcome"] = "interrupted" if rc is None else ("ok" if rc == 0 else "failed")
            e["exit_code"] = rc
            self.save()
        return rc

    def _spawn(self, e: dict, job: Job, head: str, phase: str) -> int:
        """The job through the executor, its progress on the status line until it ends."""
        self.progress.reset()
        since = time.time()  # a progress.json older than this is an earlier attempt's
        with self._released():
            handle = self.executor.start(job)
        try:
            last_epochs = e.get("epochs_done", 0)
            while True:
                if self._stopping.is_set():
                    raise StudyInterrupted("stopped with the study")
                with self._released():
                    rc = handle.wait(self.poll)
                info = (
                    run_progress(job.run_dir, e.get("num_train_epochs"), since) if phase == "train" else None
                )
                if info and info["epochs_done"] != last_epochs:
                    last_epochs = e["epochs_done"] = info["epochs_done"]
                    self.save()
                if rc is not None:
                    return rc
                self._active[e["id"]] = (e, head, phase, info)
                self._show_status()
        except BaseException:
            with self._released():
                handle.stop()
            raise
        finally:
            self._active.pop(e["id"], None)

    def _show_status(self) -> None:
        """One run in flight: its full status line; several: a compact part each, on one line."""
        if len(self._active) == 1:
            e, head, phase, info = next(iter(self._active.values()))
            self.progress.status(self._status_text(e, head, phase, info), info["epochs_done"] if info else 0)
            return
        parts, epochs = [], 0
        for e, head, phase, info in self._active.values():
            what = (
                training_status(info, e.get("num_train_epochs") or 0)[0]
                if phase == "train" and info
                else phase
            )
            parts.append(f"{head} {what}")
            epochs += info["epochs_done"] if info else 0
        text = " · ".join(parts)
        eta = study_eta(self.reg, self.selected, exclude=self._active)
        if eta:
            text += f" | then ~{fmt_seconds(eta / self.executor.slots)} more"
        self.progress.status(f"{text} | elapsed {fmt_seconds(time.monotonic() - self._started)}", epochs)

    def _status_text(self, e: dict, head: str, phase: str, info: dict | None) -> str:
        elapsed = time.monotonic() - self._started
        parts = [f"{head} {e['arm_name']}"]
        if phase != "train" or info is None:
            parts.append(phase)
        else:
            parts += training_status(info, e.get("num_train_epochs") or 0)
        eta = study_eta(self.reg, self.selected, exclude=e["id"])
        if eta:
            parts.append(f"then ~{fmt_seconds(eta / self.executor.slots)} more")
        parts.append(f"elapsed {fmt_seconds(elapsed)}")
        return " | ".join(parts)

    def study_eta(self, exclude: str | None = None) -> float | None:
        return study_eta(self.reg, self.selected, exclude)

    # --- the two kinds of run --------------------------------------------------------------------
    def _run_baseline(self, e: dict, run_dir: Path, log: Path, head: str) -> bool:
        self._wipe(run_dir)  # a baseline is one quick fit: an interrupted one simply starts over
        s = e["config"]
        args = [
            "baseline",
            "--data",
            str(self.abs(e["data_dir"])),
            "--output_dir",
            str(run_dir),
            "--seed",
            str(e["seed"]),
            "--run_name",
            e["id"],
        ]
        for key in ("C", "min_df", "max_features", "max_iter", "class_weights"):
            if s.get(key) is not None:
                args += [f"--{key}", str(s[key])]
        for key in ("C_grid", "word_ngrams", "char_ngrams"):
            if s.get(key) is not None:
                v = s[key]
                args += [f"--{key}", ",".join(str(x) for x in v) if isinstance(v, list | tuple) else str(v)]
        self.progress.say(
            f"{head}: TF-IDF baseline, seed {e['seed']}, {e.get('num_train_examples') or '?'} train examples"
        )
        rc = self._attempt(e, "fresh", Job(ftvs_cmd(args, {}), run_dir, log, "baseline: "), head, "baseline")
        if rc != 0 or not (run_dir / METRICS).is_file():
            e["error"] = last_error(log) if rc != 0 else "baseline finished without metrics.json"
            return False
        # tag the run like the neural runs (compare/report group on these)
        cfg_path = run_dir / CONFIG
        with contextlib.suppress(Exception):
            saved = yaml.safe_load(cfg_path.read_text()) or {}
            saved["extra"] = self.entries.extra(self._planned(e["id"]))
            atomic_write_bytes(cfg_path, yaml.safe_dump(saved, sort_keys=False).encode())
        return True

    def _planned(self, rid: str) -> PlannedRun:
        return next(r for r in self.plan if r.id == rid)

    def _run_neural(self, e: dict, run_dir: Path, log: Path, head: str) -> bool:
        what = (
            f"{e['arm']} {e['model']}{' ' + e['method'] if e.get('method') else ''}, seed {e['seed']}, "
            f"fraction {frac(e['train_fraction'])} ({e.get('num_train_examples') or '?'} train examples)"
        )
        if _read_summary(run_dir).get("status") == "completed":
            self.progress.say(f"{head}: {what}: trained earlier, evaluating")
        elif not self._train(e, run_dir, log, head, what):
            return False
        if not (run_dir / METRICS).is_file():
            job = Job(ftvs_cmd(["evaluate", str(run_dir)], {}), run_dir, log, "evaluating: ")
            rc = self._attempt(e, "evaluate", job, head, "evaluating")
            if rc != 0 or not (run_dir / METRICS).is_file():
                e["error"] = last_error(log) if rc != 0 else "evaluation wrote no metrics.json"
                return False
        return True

    def _train(self, e: dict, run_dir: Path, log: Path, head: str, what: str) -> bool:
        """`ftvs train`, fresh or resumed from the run's checkpoint; False (with e["error"]) when it
        failed."""
        cfg_path = self.abs(e["config_file"])
        # only the settings the study gives: what it leaves out gets `ftvs train`'s defaults, small-data rule
        # included
        given = set(self._planned(e["id"]).settings) | {"data", "output_dir", "seed", "extra"}
        given |= {"teacher"} if e.get("teacher") else set()  # a student's --teacher
        train_cfg = {k: v for k, v in e["config"].items() if k in given}
        train_cfg["tracking_project"] = (
            train_cfg.get("tracking_project") or self.cfg["name"]
        )  # one experiment
        atomic_write_bytes(cfg_path, yaml.safe_dump(train_cfg, sort_keys=False).encode())
        launcher = e.get("launcher") or {}
        args = ["train", e["arm"], "--config", str(cfg_path)]
        resume_args = [*args, "--resume", str(run_dir)]  # also starts a run that never checkpointed
        if has_checkpoint(run_dir):
            epoch = None
            with contextlib.suppress(Exception):
                epoch = read_json(run_dir / CHECKPOINT_DIR / CHECKPOINT_STATE).get("epoch")
            e["resumed_from_epoch"] = epoch
            args = resume_args
            mode = "resume"
            self.progress.say(f"{head}: {what}: resuming after epoch {epoch}")
        else:
            self._wipe(run_dir)  # nothing resumable there (killed before the first checkpoint)
            args += ["--output_dir", str(run_dir)]
            mode = "fresh"
            self.progress.say(f"{head}: {what}")
        processes = int(launcher.get("num_processes", 1))
        if processes > 1:  # evaluation runs once, after training, in a single process
            args, resume_args = [*args, "--no-evaluate"], [*resume_args, "--no-evaluate"]
        job = Job(
            ftvs_cmd(args, launcher),
            run_dir,
            log,
            "train: ",
            processes=processes,
            retry_cmd=ftvs_cmd(resume_args, launcher),
        )
        rc = self._attempt(e, mode, job, head, "train")
        status = _read_summary(run_dir).get("status")
        if rc != 0 or status != "completed":
            e["error"] = last_error(log) if rc != 0 else f"training ended with status {status!r}"
            return False
        return True

    # --- compare and report ----------------------------------------------------------------------
    def stage_compare(self, report: bool = True) -> None:
        stage_compare(self, report)
