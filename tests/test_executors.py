"""Where a study's runs execute (ftvs/executors): one at a time, `--parallel 2`, and a local Ray
instance with 2 CPUs, on the tiny 4-run study of tests/study_tiny.py. The executors must give the same
per-run test predictions; under Ray a killed training process is retried and a killed driver leaves a
study that the same command finishes without retraining what was done.

Each child process (torch and the model code imported) takes tens of seconds on a loaded two-core
machine, so the whole-study tests are marked slow.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from study_tiny import tiny_study_yaml
from tiny_runs import assert_one_line_error
from tune_tiny import INTENTS, SPACE, finished, prepare_intents, tune_cmd
from tune_tiny import run as run_tune

from ftvs.executors import Job
from ftvs.executors.local import LocalExecutor

RUNS = ("tfidf-f1-s0", "tfidf-f1-s1", "scratch-f1-s0", "scratch-f1-s1")


def env() -> dict:
    """The children's environment, read when they start: after `ray.init`, it carries the test cluster's
    authentication mode (the token itself is in ~/.ray)."""
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }  # one thread a run: as executors give


def study_cmd(cfg: Path, out: Path, *extra) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ftvs",
        "study",
        str(cfg),
        "--output_dir",
        str(out),
        "--poll_seconds",
        "0.2",
        *extra,
    ]


def run_study(cfg: Path, out: Path, *extra) -> dict:
    res = subprocess.run(study_cmd(cfg, out, *extra), capture_output=True, text=True, env=env(), timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads((out / "study.json").read_text())


def predictions(out: Path) -> dict[str, bytes]:
    return {rid: (out / "runs" / rid / "predictions.json").read_bytes() for rid in RUNS}


def registry(out: Path) -> dict:
    return json.loads((out / "study.json").read_text())


def history_rows(run_dir: Path) -> int:
    p = run_dir / "history.jsonl"
    return len([x for x in p.read_text().splitlines() if x.strip()]) if p.is_file() else 0


def wait_for(what: str, cond, proc: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, f"the study ended before {what}:\n" + log.read_text()[-3000:]
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def kill_study_when(cmd: list[str], log: Path, what: str, cond) -> None:
    """Start the study `cmd` (output to `log`) and SIGKILL it as soon as `cond()` holds."""
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env())
    try:
        wait_for(what, cond, proc, log)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_study_yaml(tmp_path_factory.mktemp("tiny"), epochs=2)


@pytest.fixture(scope="module")
def sequential(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sequential") / "study"
    reg = run_study(tiny, out)
    assert list(reg["order"]) == list(RUNS) and all(reg["runs"][r]["state"] == "completed" for r in RUNS)
    return out


# --------------------------------------------------------------------------------------------------
# The local executor's slots (quick: a few tiny child processes)
# --------------------------------------------------------------------------------------------------

SHOW_ENV = (
    "import os, time; "
    "print(os.environ.get('CUDA_VISIBLE_DEVICES'), os.environ.get('OMP_NUM_THREADS')); time.sleep(1)"
)


def _job(tmp_path: Path, name: str, processes: int = 1) -> Job:
    return Job(
        [sys.executable, "-c", SHOW_ENV], tmp_path / name, tmp_path / f"{name}.log", "show: ", processes
    )


def _output(job: Job) -> str:
    return [ln for ln in job.log.read_text().splitlines() if ln and not ln.startswith("===")][-1]


def test_parallel_slots_pin_gpus_and_a_multi_process_job_takes_several(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    ex = LocalExecutor(2)
    a, b = _job(tmp_path, "a"), _job(tmp_path, "b")
    ha, hb = ex.start(a), ex.start(b)
    assert ha.wait(30) == 0 and hb.wait(30) == 0
    assert {_output(a), _output(b)} == {"3 None", "5 None"}  # a GPU each, threads left alone

    wide, after = _job(tmp_path, "wide", processes=2), _job(tmp_path, "after")
    hw = ex.start(wide)
    started, codes = [], []

    def start_after():  # the thread that starts a child outlives it (the child dies with its parent thread)
        h = ex.start(after)
        started.append(time.monotonic())
        codes.append(h.wait(30))

    t = threading.Thread(target=start_after)
    t.start()
    t.join(0.5)
    assert not started, "a job started while a 2-process job held both slots"
    assert hw.wait(30) == 0 and _output(wide) == "3,5 None"
    t.join(30)
    assert codes == [0]


def test_parallel_on_cpu_shares_the_cores(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU visible: CPU slots
    ex = LocalExecutor(2)
    job = _job(tmp_path, "cpu")
    assert ex.start(job).wait(30) == 0
    assert _output(job) == f" {max(1, len(os.sched_getaffinity(0)) // 2)}"
    seq = _job(tmp_path, "seq")
    assert LocalExecutor(1).start(seq).wait(30) == 0  # one at a time: the environment as it is
    assert _output(seq) == " " + str(os.environ.get("OMP_NUM_THREADS"))


def test_ray_is_imported_only_for_the_ray_executor(tiny, tmp_path, capsys):
    code = "import sys, ftvs.cli, ftvs.study; print('ray' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), timeout=120)
    assert res.stdout.strip() == "False", res.stderr
    cfg = tiny
    assert_one_line_error(capsys, ["study", str(cfg), "--ray_address", "auto"], "add --executor ray")
    assert_one_line_error(
        capsys, ["study", str(cfg), "--parallel", "0", "--output_dir", str(tmp_path / "o")], "--parallel 0"
    )


# --------------------------------------------------------------------------------------------------
# Whole studies
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_parallel_2_gives_the_sequential_results(tiny, sequential, tmp_path):
    out = tmp_path / "study"
    reg = run_study(tiny, out, "--parallel", "2")
    assert all(reg["runs"][r]["state"] == "completed" for r in RUNS)
    assert predictions(out) == predictions(sequential)


@pytest.mark.slow
def test_ray_gives_the_sequential_results(tiny, sequential, ray_address, tmp_path):
    out = tmp_path / "study"
    reg = run_study(tiny, out, "--executor", "ray", "--ray_address", ray_address)
    assert all(reg["runs"][r]["state"] == "completed" for r in RUNS)
    assert predictions(out) == predictions(sequential)
    assert not (out / ".ftvs-ray-check").exists()  # the shared-folder probe cleans up


@pytest.mark.slow
def test_ray_retries_a_killed_training_from_its_checkpoint(ray_address, tmp_path):
    epochs = 30
    cfg = tiny_study_yaml(tmp_path, epochs=epochs)
    out, log = tmp_path / "study", tmp_path / "driver.log"
    run_dir = out / "runs" / "scratch-f1-s0"
    cmd = study_cmd(cfg, out, "--executor", "ray", "--ray_address", ray_address, "--only", "scratch-f1-s0")
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env())
    try:
        wait_for(
            "a checkpoint",
            lambda: (
                (run_dir / "checkpoint" / "state.json").is_file() and 1 <= history_rows(run_dir) < epochs - 5
            ),
            proc,
            log,
        )
        pid = int((run_dir / ".lock").read_text())  # the training process holds the run's lock
        assert b"ftvs\x00train" in Path(f"/proc/{pid}/cmdline").read_bytes()
        os.kill(pid, signal.SIGKILL)
        assert proc.wait(timeout=600) == 1, log.read_text()[-3000:]  # 1: --only left the other runs out
    finally:
        if proc.poll() is None:
            proc.kill()
    assert registry(out)["state"] == "incomplete"
    e = registry(out)["runs"]["scratch-f1-s0"]
    assert e["state"] == "completed" and [a["outcome"] for a in e["attempts"]] == ["ok"]
    starts = [ln for ln in (out / e["log"]).read_text().splitlines() if ln.startswith("=== ")]
    assert len(starts) == 2 and "--output_dir" in starts[0] and f"--resume {run_dir}" in starts[1]
    assert history_rows(run_dir) == epochs  # the retry continued from the checkpoint, every epoch once
    assert json.loads((run_dir / "train_summary.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_ray_study_resumes_after_its_driver_is_killed(ray_address, tmp_path):
    epochs = 30
    cfg = tiny_study_yaml(tmp_path, epochs=epochs)
    out, log = tmp_path / "study", tmp_path / "driver.log"
    cmd = study_cmd(cfg, out, "--executor", "ray", "--ray_address", ray_address)

    def one_done_one_training() -> bool:
        if not (out / "study.json").is_file():
            return False
        runs = registry(out)["runs"].values()
        return any(r["state"] == "completed" for r in runs) and any(
            (out / r["run_dir"] / "checkpoint" / "state.json").is_file() and r["state"] == "running"
            for r in runs
        )

    kill_study_when(cmd, log, "a finished run and one in training", one_done_one_training)
    before = registry(out)["runs"]
    done = {
        rid: (
            e["finished_at"],
            len(e["attempts"]),
            (out / e["run_dir"] / "predictions.json").stat().st_mtime_ns,
        )
        for rid, e in before.items()
        if e["state"] == "completed"
    }
    killed = [rid for rid, e in before.items() if e["state"] == "running"]
    assert done and killed

    res = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    after = registry(out)["runs"]
    assert all(e["state"] == "completed" for e in after.values())
    for rid, (fin, n_att, mtime) in done.items():
        e = after[rid]
        assert (e["finished_at"], len(e["attempts"])) == (fin, n_att), f"{rid} was rerun"
        assert (out / e["run_dir"] / "predictions.json").stat().st_mtime_ns == mtime
        assert f"{rid}: done earlier" in res.stdout
    for rid in killed:
        assert (
            after[rid]["attempts"][0]["outcome"] == "killed" and after[rid]["attempts"][-1]["outcome"] == "ok"
        )


# --------------------------------------------------------------------------------------------------
# A search's trials on the same executors (here with the Ray instance of the tests above)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tune_data(tmp_path_factory) -> Path:
    return prepare_intents(tmp_path_factory.mktemp("intents"), INTENTS)


@pytest.fixture(scope="module")
def tune_space(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("space") / "space.yaml"
    path.write_text(yaml.safe_dump(SPACE))
    return path


@pytest.mark.slow
def test_ray_trials_with_a_journal_storage_resume_anywhere(tune_data, tune_space, ray_address, tmp_path):
    out = tmp_path / "tune"
    ray = ["--executor", "ray", "--ray_address", ray_address]
    done = run_tune(tune_cmd(tune_data, out, tune_space, 2) + ["--pruner", "none", *ray])
    assert done.returncode == 0, done.stderr[-2000:]
    first = json.loads((out / "tune.json").read_text())
    assert first["executor"] == {"name": "ray", "trials_at_once": 2}
    # the journal file, not SQLite, is the default on a cluster: its locks hold on a shared filesystem
    assert first["storage"] == "journal:optuna.journal" and not (out / "optuna.db").exists()
    assert [t["state"] for t in first["trials"]] == ["COMPLETE", "COMPLETE"]
    assert not (out / ".ftvs-ray-check").exists()  # the shared-folder probe cleans up

    # the same search continues from its journal without Ray, with a raised budget
    more = run_tune(tune_cmd(tune_data, out, tune_space, 3) + ["--pruner", "none"])
    assert more.returncode == 0, more.stderr[-2000:]
    summary = json.loads((out / "tune.json").read_text())
    assert len(finished(summary)) == 3 and summary["storage"] == "journal:optuna.journal"
    assert [t["value"] for t in summary["trials"][:2]] == [t["value"] for t in first["trials"]]
    # ...and refuses another storage instead of starting over
    refused = run_tune(tune_cmd(tune_data, out, tune_space, 3) + ["--storage", "sqlite"])
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr[-2000:]
    assert lines[0].startswith("ftvs: error:") and "--storage journal" in lines[0]
