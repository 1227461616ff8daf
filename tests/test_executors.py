"""Where a study's runs execute (ftvs/executors): one at a time, `--parallel 2`, and a local Ray
instance with 2 CPUs, on the tiny 4-run study of tests/study_tiny.py. The executors must give the same
per-run test predictions; under Ray a killed training process is retried and a killed driver leaves a
study that the same command finishes without retraining what was done.

Each child process (torch and the model code imported) takes tens of seconds on a loaded two-core
machine, so the whole-study tests are marked slow.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
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


def test_a_ray_address_that_does_not_answer_fails_in_one_line(tiny, tmp_path, capsys):
    pytest.importorskip("ray")
    from ftvs.errors import FtvsError
    from ftvs.executors.ray import connect

    assert_one_line_error(
        capsys,
        ["study", str(tiny), "--executor", "ray", "--ray_timeout", "0", "--output_dir", str(tmp_path / "o")],
        "--ray_timeout 0",
    )

    cmd = study_cmd(tiny, tmp_path / "o", "--executor", "ray", "--ray_address", "junk:99999")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=300)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr[-3000:]  # no Ray retry warnings
    assert lines[0].startswith("ftvs: error: cannot reach the Ray cluster at junk:99999"), lines[0]
    # a host that refuses: retried until --ray_timeout, then one line (the default wait is 60 s)
    start = time.monotonic()
    with pytest.raises(FtvsError, match=r"127.0.0.1:9 did not answer within 2 s .*--ray_timeout"):
        connect("127.0.0.1:9", timeout=2)
    assert 2 <= time.monotonic() - start < 30


# --------------------------------------------------------------------------------------------------
# Whole studies
# --------------------------------------------------------------------------------------------------


def most_at_once(reg: dict) -> int:
    """The most runs of a study that were in flight at one moment, from their recorded start and end."""
    spans = [
        (datetime.fromisoformat(e["started_at"]), datetime.fromisoformat(e["finished_at"]))
        for e in reg["runs"].values()
    ]
    return max(sum(s <= t < f for s, f in spans) for t, _ in spans)


@pytest.mark.slow
def test_parallel_2_gives_the_sequential_results_two_runs_at_a_time(tiny, sequential, tmp_path):
    out = tmp_path / "study"
    reg = run_study(tiny, out, "--parallel", "2")
    assert all(reg["runs"][r]["state"] == "completed" for r in RUNS)
    assert predictions(out) == predictions(sequential)
    assert most_at_once(registry(sequential)) == 1 and most_at_once(reg) == 2


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


# --------------------------------------------------------------------------------------------------
# A real two-node Ray cluster on this machine: a node dies in the middle of a study
# --------------------------------------------------------------------------------------------------


# the two-node cluster's environment (its nodes and the study driver): no token authentication (Ray 2.60
# turns it on for a head node when ~/.ray holds a token, but not for a node that joins it)
NO_TOKEN = {"RAY_AUTH_MODE": "disabled"}


_PORTS_GIVEN: set[int] = set()


def _free_port() -> int:
    """A port free now and not handed out before in this test session: the kernel can hand the same
    ephemeral port to two `bind(0)` calls once the first socket is closed, and Ray refuses a node whose
    components share a port (a CI failure: runtime_env_agent and dashboard_agent_grpc both got 48085)."""
    import socket

    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port


def _process_tree(root: int) -> list[int]:
    """`root` and every process below it now (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(p.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _kill_tree(proc: subprocess.Popen) -> None:
    """Kill a node as a power cut would: `ray start --block` and every process it started."""
    for pid in _process_tree(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def _ray_node(log: Path, temp_dir: str, *flags: str) -> subprocess.Popen:
    """`ray start --block` on this machine with its own ports (other Ray instances may run here), in its
    own session so that killing it reaches every process of the node. Addresses are given as 127.0.0.1;
    on Linux Ray replaces a loopback address by the machine's own interface address (its
    `resolve_ip_for_localhost`, for every node that joins a cluster), so the nodes talk over that: still
    this machine only."""
    ports = {
        f"--{name}": str(_free_port())
        for name in (
            "node-manager-port",
            "object-manager-port",
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "runtime-env-agent-port",
            "metrics-export-port",
        )
    }
    cmd = [str(Path(sys.executable).with_name("ray")), "start", "--block", "--disable-usage-stats"]
    cmd += ["--node-ip-address", "127.0.0.1", "--temp-dir", temp_dir, "--num-cpus", "1"]
    cmd += [a for kv in ports.items() for a in kv] + list(flags)
    # the head notices a dead node within seconds (default: about half a minute)
    fast = {"RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "3"}
    with open(log, "w") as f:
        return subprocess.Popen(
            cmd,
            stdout=f,
            stderr=subprocess.STDOUT,
            env={**env(), **NO_TOKEN, **fast},
            start_new_session=True,
        )


def _started(log: Path, proc: subprocess.Popen) -> bool:
    assert proc.poll() is None, "a Ray node did not start:\n" + log.read_text()[-3000:]
    return "Ray runtime started" in log.read_text()


@pytest.mark.slow
def test_two_node_ray_cluster_loses_a_node_mid_study(tmp_path):
    """Head and worker node each with 1 CPU and their own resources; the two from-scratch runs of a study
    start one on each node; the worker node is killed while its run trains: the study completes on the
    head, the killed run continues from its checkpoint there, the other run is not retrained."""
    pytest.importorskip("ray")
    import tempfile

    epochs = 30
    cfg = tiny_study_yaml(tmp_path, epochs=epochs)
    study = yaml.safe_load(cfg.read_text())
    study["arms"] = [a for a in study["arms"] if a["arm"] == "scratch"]
    cfg.write_text(yaml.safe_dump(study, sort_keys=False))
    gcs = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="ftvs-ray-", dir="/tmp")  # short: Ray's socket paths live in it
    out, log = tmp_path / "study", tmp_path / "driver.log"
    nodes, proc = [], None
    try:
        head_log, worker_log = tmp_path / "head.log", tmp_path / "worker.log"
        head_flags = ["--head", "--port", str(gcs), "--include-dashboard", "false"]
        head_flags += ["--ray-client-server-port", str(_free_port()), "--resources", '{"ftvs_head": 1}']
        head = _ray_node(head_log, temp_dir, *head_flags)
        nodes.append(head)
        wait_for("the head node", lambda: _started(head_log, head), head, head_log, timeout=300)
        worker = _ray_node(
            worker_log, temp_dir, "--address", f"127.0.0.1:{gcs}", "--resources", '{"ftvs_worker": 1}'
        )
        nodes.append(worker)
        wait_for("the worker node", lambda: _started(worker_log, worker), worker, worker_log, timeout=300)

        cmd = study_cmd(cfg, out, "--executor", "ray", "--ray_address", f"127.0.0.1:{gcs}")
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**env(), **NO_TOKEN})

        seen_on: dict[str, set] = {"head": set(), "worker": set()}
        found: list[Path] = []

        def training_on_the_worker() -> Path | None:
            """A run folder whose training process runs on the worker node, checkpointed, epochs to go
            (and which run trains on which node)."""
            for run_dir in (out / "runs").glob("*"):
                try:
                    pid = int((run_dir / ".lock").read_text())
                except (OSError, ValueError):
                    continue
                for name, node in (("head", head), ("worker", worker)):
                    if pid in _process_tree(node.pid):
                        seen_on[name].add(run_dir.name)
                checkpointed = (run_dir / "checkpoint" / "state.json").is_file()
                if (
                    run_dir.name in seen_on["worker"]
                    and checkpointed
                    and 1 <= history_rows(run_dir) < epochs - 5
                ):
                    found.append(run_dir)
                    return run_dir
            return None

        wait_for("a run training on the worker node", training_on_the_worker, proc, log)
        killed = found[-1]
        _kill_tree(worker)
        assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        for p in [proc, *nodes]:
            if p is not None and p.poll() is None:
                _kill_tree(p)
        shutil.rmtree(temp_dir, ignore_errors=True)
    reg = registry(out)
    assert reg["state"] == "completed" and all(e["state"] == "completed" for e in reg["runs"].values())
    (other,) = [out / e["run_dir"] for rid, e in reg["runs"].items() if rid != killed.name]
    assert seen_on["head"] == {other.name}  # the study was spread over both nodes
    for run_dir, starts_expected in ((killed, 2), (other, 1)):
        e = reg["runs"][run_dir.name]
        assert [a["outcome"] for a in e["attempts"]] == ["ok"]  # Ray's retry is inside the one attempt
        starts = [ln for ln in (out / e["log"]).read_text().splitlines() if ln.startswith("=== ")]
        assert len(starts) == starts_expected, starts
        assert history_rows(run_dir) == epochs  # every epoch once: resumed, not retrained
    starts = [
        ln for ln in (out / reg["runs"][killed.name]["log"]).read_text().splitlines() if ln.startswith("=== ")
    ]
    assert "--output_dir" in starts[0] and f"--resume {killed}" in starts[1]
