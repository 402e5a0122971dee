"""One job of a written sweep plan, as a Slurm array task runs it:
``python -m promptot.sweep.task PLAN.json LEVEL INDEX``.

Skips the job when it is done, refuses a folder of another config, waits for nothing (the level before it has
ended: ``afterany``) but stops with a message when a job it needs is not done, and retries a failed run once
(it resumes from its last checkpoint). Exit code 0 when the job is done.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import List, Optional

from ..errors import UserError, format_user_error
from .jobs import Job, JobStatus, dir_complete, job_status


def run_task(plan_path: str, level: int, index: int) -> int:
    """Run job ``index`` of ``level`` of the plan; returns the exit code (also what submitit gets back)."""
    with open(plan_path) as f:
        plan = json.load(f)
    try:
        job = Job.from_dict(plan["levels"][level][index])
    except (IndexError, KeyError) as e:
        raise UserError(f"{plan_path} has no job {index} at level {level}") from e
    os.chdir(plan["repo"])
    expected = plan["hashes"].get(job.id)
    state = job_status(job, expected)
    if state == JobStatus.DONE:
        print(f"[task] {job.id}: already done, skipping")
        return 0
    if state == JobStatus.CHANGED:
        raise UserError(f"{job.output_dir} holds results of a different config than this job; move it aside or "
                        "rerun the sweep with --rerun-changed before submitting.")
    missing = [d for d in job.needs if not dir_complete(d)]
    if missing:
        raise UserError(f"{job.id} needs {missing}, which did not finish (see their logs); resubmit after fixing "
                        "them (finished jobs are skipped).")
    code = 1
    for attempt in range(1, int(plan.get("retries", 1)) + 2):
        print(f"[task] {job.id}: attempt {attempt}: {job.command(plan['python'])}", flush=True)
        code = subprocess.call([plan["python"], "train.py"] + job.argv(), cwd=plan["repo"])
        if code == 0 and job_status(job, expected) == JobStatus.DONE:
            return 0
        print(f"[task] {job.id}: attempt {attempt} failed (exit code {code})", flush=True)
    return code or 1


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m promptot.sweep.task PLAN LEVEL INDEX``; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        print("usage: python -m promptot.sweep.task PLAN.json LEVEL INDEX", file=sys.stderr)
        return 2
    try:
        return run_task(argv[0], int(argv[1]), int(argv[2]))
    except UserError as e:
        print(format_user_error(e), file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
