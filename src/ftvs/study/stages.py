"""The study's stages after its runs: `ftvs compare` over study.json, with the report."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from ftvs.executors.local import child_process, last_error
from ftvs.study.progress import fmt_seconds


def _stage(study, name: str, cmd: list[str], out: Path) -> None:
    st = study.reg["stages"].setdefault(name, {})
    log = study.dir / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    st.update(state="running", out=study.rel(out), log=study.rel(log), error=None)
    study.save()
    study.progress.say(f"{name}: {shlex.join(cmd[2:])}")
    t0 = time.monotonic()
    try:
        with child_process(cmd, log, "") as proc:
            rc = proc.wait()
    except BaseException:
        st["state"] = "interrupted"
        study.save()
        raise
    st["seconds"] = time.monotonic() - t0
    if rc == 0:
        st.update(state="completed")
        study.progress.say(f"  {name} -> {study.rel(out)} ({fmt_seconds(st['seconds'])})")
    else:
        st.update(state="failed", error=last_error(log), exit_code=rc)
        study.progress.say(f"  {name} FAILED: {st['error']} (log: {study.rel(log)})")
    study.save()


def stage_compare(study, report: bool = True) -> None:
    """`ftvs compare STUDY/study.json --out STUDY/report`: every evaluated run of the registry (sweeps
    included; compare groups seeds by arm/method/model/train_fraction), plus the report."""
    done = [r for r in study.reg["runs"].values() if r["state"] == "completed"]
    if len(done) < 2:
        study.reg["stages"]["compare"] = {"state": "skipped", "error": "fewer than two completed runs"}
        study.progress.say("compare: skipped (fewer than two completed runs)")
        return
    out = study.dir / "report"
    cmd = [sys.executable, "-m", "ftvs", "compare", str(study.path), "--out", str(out)]
    if not report:
        cmd.append("--no-report")
    for name, limit in (study.cfg.get("decide") or {}).items():  # the recommendation's constraints
        cmd += [f"--{name}", str(limit)]
    _stage(study, "compare", cmd, out)
    st = study.reg["stages"]["compare"]
    st["with_report"] = report
    st["report"] = (
        [study.rel(p) for p in sorted(out.glob("report.*"))] if st.get("state") == "completed" else []
    )
