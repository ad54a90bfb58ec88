"""Slurm facts: the job's own (environment, peak memory) and the cluster's (``sacct``, else ``scontrol``).

A fit job running under Slurm writes ``slurm.json`` into its run folder (:func:`record_job`): the job id
(``<array job>_<task>`` for array jobs, as ``sacct``/``scontrol`` spell it), node, restart count, start
and end times and the process's own peak RSS. The benchmark reads those ids back and asks the cluster
(:func:`job_accounting`) for state, elapsed time and MaxRSS: ``sacct`` when the cluster keeps accounting,
else ``scontrol show job`` (finished jobs stay there for ``MinJobAge`` seconds), else nothing, and the
job's own record is what is left.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import time
from pathlib import Path

RECORD = "slurm.json"


def job_id(environ=None) -> str | None:
    """This process's Slurm job id (``123`` or ``123_4`` for task 4 of array job 123), None outside Slurm."""
    env = os.environ if environ is None else environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def restart_count(environ=None) -> int:
    """How many times Slurm has requeued this job (``scontrol requeue``, preemption): 0 on the first run."""
    env = os.environ if environ is None else environ
    try:
        return int(env.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        return 0


def peak_rss_mb() -> float:
    """Peak resident memory of this process or its largest waited-for child (MiB; Linux reports KiB)."""
    kb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return kb / 1024.0


def record_job(out: Path, **fields) -> dict | None:
    """Merge ``fields`` into ``<out>/slurm.json`` when this process is a Slurm job; returns the record."""
    jid = job_id()
    if jid is None:
        return None
    path = Path(out) / RECORD
    rec = {}
    if path.is_file():
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            rec = {}
    if rec.get("job_id") != jid:
        rec = {}
    rec.update(job_id=jid, slurm_job_id=os.environ.get("SLURM_JOB_ID"), node=socket.gethostname(),
               restarts=restart_count(), **fields)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rec, indent=1))
    tmp.replace(path)
    return rec


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def cluster_answers(timeout: float = 10.0) -> str | None:
    """None when ``sinfo`` answers (a cluster is reachable), else the reason it does not."""
    if shutil.which("sinfo") is None:
        return "sinfo is not installed"
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%P %a %T"], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"sinfo did not answer within {timeout:.0f} s"
    if r.returncode != 0:
        return "sinfo failed: " + (r.stderr.strip().splitlines() or ["?"])[-1]
    if not r.stdout.strip():
        return "sinfo lists no partition"
    return None


def _rss_mb(text: str) -> float | None:
    """sacct's MaxRSS (``1648K``, ``12.5M``, ``2G``, plain bytes) in MiB."""
    text = (text or "").strip()
    if not text:
        return None
    scale = {"K": 1 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0 ** 2}
    try:
        if text[-1].upper() in scale:
            return float(text[:-1]) * scale[text[-1].upper()]
        return float(text) / 2 ** 20
    except ValueError:
        return None


def _seconds(text: str) -> float | None:
    """Slurm durations ``[D-]HH:MM:SS`` / ``MM:SS`` (``Elapsed``, ``RunTime``) in seconds."""
    text = (text or "").strip()
    if not text or text in ("INVALID", "UNLIMITED"):
        return None
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
    try:
        parts = [float(p) for p in text.split(":")]
    except ValueError:
        return None
    secs = 0.0
    for p in parts:
        secs = secs * 60 + p
    return days * 86400 + secs


def parse_sacct(text: str) -> dict[str, dict]:
    """``sacct -P -n --format=JobID,State,Elapsed,MaxRSS`` output -> {job id: {state, elapsed_s, max_rss_mb}}:
    state and elapsed from the job's own line, MaxRSS the largest over its steps (``.batch``, ``.0``, ...)."""
    out: dict[str, dict] = {}
    for line in text.splitlines():
        cells = line.split("|")
        if len(cells) < 4 or not cells[0]:
            continue
        jid, state, elapsed, rss = cells[:4]
        base = jid.split(".", 1)[0]
        rec = out.setdefault(base, dict(state=None, elapsed_s=None, max_rss_mb=None))
        if "." not in jid:
            rec["state"] = state.split()[0] if state else None  # "CANCELLED by 0" -> CANCELLED
            rec["elapsed_s"] = _seconds(elapsed)
        mb = _rss_mb(rss)
        if mb is not None and (rec["max_rss_mb"] is None or mb > rec["max_rss_mb"]):
            rec["max_rss_mb"] = mb
    return out


def parse_scontrol(text: str) -> dict[str, dict]:
    """``scontrol show job -o`` output -> {job id: {state, elapsed_s, max_rss_mb=None}} (no memory there)."""
    out = {}
    for line in text.splitlines():
        kv = dict(tok.split("=", 1) for tok in line.split() if "=" in tok)
        if "JobId" not in kv:
            continue
        jid = kv["JobId"]
        if kv.get("ArrayJobId") and kv.get("ArrayTaskId"):
            jid = f"{kv['ArrayJobId']}_{kv['ArrayTaskId']}"
        out[jid] = dict(state=kv.get("JobState"), elapsed_s=_seconds(kv.get("RunTime", "")), max_rss_mb=None)
    return out


def job_accounting(ids: list[str], timeout: float = 30.0) -> tuple[dict[str, dict], str]:
    """{job id: {state, elapsed_s, max_rss_mb}} for ``ids`` and where it came from (``sacct``, ``scontrol``
    or ``none``: no Slurm command answered)."""
    ids = sorted({str(i) for i in ids if i})
    if not ids:
        return {}, "none"
    if shutil.which("sacct"):
        try:
            r = subprocess.run(["sacct", "-P", "-n", "--format=JobID,State,Elapsed,MaxRSS", "-j", ",".join(ids)],
                               capture_output=True, text=True, timeout=timeout)
            if r.returncode == 0:
                got = parse_sacct(r.stdout)
                if got:
                    return got, "sacct"
        except subprocess.TimeoutExpired:
            pass
    if shutil.which("scontrol"):
        got = {}
        for jid in ids:
            try:
                r = subprocess.run(["scontrol", "show", "job", "-o", jid], capture_output=True, text=True,
                                   timeout=timeout)
            except subprocess.TimeoutExpired:
                continue
            if r.returncode == 0:
                got.update({k: v for k, v in parse_scontrol(r.stdout).items() if k == jid})
        if got:
            return got, "scontrol"
    return {}, "none"


def active_jobs(ids: list[str], timeout: float = 30.0) -> list[str]:
    """The ``ids`` still pending/running/requeued according to ``squeue`` (empty when squeue is missing)."""
    ids = sorted({str(i) for i in ids if i})
    if not ids or shutil.which("squeue") is None:
        return []
    try:
        r = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(ids)], capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return ids
    if r.returncode != 0:  # squeue fails on ids it no longer knows: they are finished
        return []
    return sorted(set(r.stdout.split()) & set(ids))
