"""Slurm: the same jobs as job arrays, one array per dependency level (training, then the evaluations that load
its prompts), chained with ``--dependency=afterany``. Each array task runs ``python -m promptot.sweep.task PLAN
LEVEL INDEX``, which skips a finished job, refuses a changed one and retries a failed one once, exactly as the
local runner does. Either written as ``sbatch`` scripts (no dependency) or submitted through ``submitit`` when it
is installed (``pip install "promptot[slurm]"``).
"""
from __future__ import annotations

import json
import os
import shlex
import stat
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from ..errors import UserError
from .jobs import Job


@dataclass
class SlurmOptions:
    """Resources of one array task (one job) and how many tasks may run at once."""

    gpus_per_task: int = 1
    cpus_per_task: int = 8
    time: str = "24:00:00"
    max_parallel: int = 0  #: 0 = no ``%`` limit
    job_name: str = "promptot"
    extra: List[str] = field(default_factory=list)  #: e.g. ["--partition=gpu", "--account=abc"]


def levels(jobs: Sequence[Job]) -> List[List[Job]]:
    """Jobs grouped by dependency depth inside the plan (jobs they need outside the plan must be done already)."""
    by_dir = {os.path.normpath(j.output_dir): j for j in jobs}
    depth: Dict[str, int] = {}

    def d(j: Job) -> int:
        if j.id not in depth:
            deps = [by_dir[os.path.normpath(n)] for n in j.needs if os.path.normpath(n) in by_dir]
            depth[j.id] = 1 + max((d(x) for x in deps), default=-1)
        return depth[j.id]

    out: List[List[Job]] = []
    for j in jobs:
        k = d(j)
        while len(out) <= k:
            out.append([])
        out[k].append(j)
    return out


def write_plan(path: str, repo: str, python: str, jobs: Sequence[Job], hashes: Dict[str, str], retries: int) -> \
        List[List[Job]]:
    """``PLAN.json``: the jobs by level with their config hashes, read by each array task."""
    lv = levels(jobs)
    with open(path, "w") as f:
        json.dump({"repo": repo, "python": python, "retries": retries, "hashes": hashes,
                   "levels": [[j.to_dict() for j in level] for level in lv]}, f, indent=1)
    return lv


def _array_spec(n: int, max_parallel: int) -> str:
    return f"0-{n - 1}" + (f"%{max_parallel}" if max_parallel > 0 else "")


def write_scripts(out_dir: str, repo: str, python: str, jobs: Sequence[Job], hashes: Dict[str, str],
                  opts: SlurmOptions, retries: int = 1) -> List[str]:
    """Write ``plan.json``, ``level<k>.sbatch`` and ``submit.sh`` into ``out_dir``; returns the sbatch files."""
    if not jobs:
        raise UserError("Nothing to submit: every job of the plan is done.")
    os.makedirs(os.path.join(out_dir, "logs"), exist_ok=True)
    plan = os.path.abspath(os.path.join(out_dir, "plan.json"))
    lv = write_plan(plan, repo, python, jobs, hashes, retries)
    files = []
    for k, level in enumerate(lv):
        lines = ["#!/bin/bash",
                 f"#SBATCH --job-name={opts.job_name}-{k}",
                 f"#SBATCH --array={_array_spec(len(level), opts.max_parallel)}",
                 f"#SBATCH --cpus-per-task={opts.cpus_per_task}",
                 f"#SBATCH --time={opts.time}",
                 f"#SBATCH --output={os.path.abspath(os.path.join(out_dir, 'logs'))}/%x_%A_%a.out"]
        if opts.gpus_per_task > 0:
            lines.append(f"#SBATCH --gres=gpu:{opts.gpus_per_task}")
        lines += [f"#SBATCH {x}" for x in opts.extra]
        lines += [f"# level {k}: {len(level)} job(s); task i runs job i of this level in {plan}",
                  f"cd {shlex.quote(repo)}",
                  f"exec {shlex.quote(python)} -m promptot.sweep.task {shlex.quote(plan)} {k} \"$SLURM_ARRAY_TASK_ID\"",
                  ""]
        path = os.path.join(out_dir, f"level{k}.sbatch")
        with open(path, "w") as f:
            f.write("\n".join(lines))
        files.append(path)
    submit = ["#!/bin/bash", "# Submit the sweep: each level waits for the previous one (afterany: a task whose own",
              "# dependency failed stops with a message, the others run).", "set -euo pipefail",
              f"cd {shlex.quote(os.path.abspath(out_dir))}", "prev="]
    for k, level in enumerate(lv):
        dep = '${prev:+--dependency=afterany:$prev}'
        submit.append(f"prev=$(sbatch --parsable {dep} level{k}.sbatch)")
        submit.append(f'echo "level {k}: Slurm job $prev ({len(level)} array task(s))"')
    path = os.path.join(out_dir, "submit.sh")
    with open(path, "w") as f:
        f.write("\n".join(submit) + "\n")
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    return files


def submit_with_submitit(out_dir: str, repo: str, python: str, jobs: Sequence[Job], hashes: Dict[str, str],
                         opts: SlurmOptions, retries: int = 1, cluster: Optional[str] = None) -> List[list]:
    """Submit the levels as job arrays through submitit (``cluster`` as ``submitit.AutoExecutor`` takes it,
    e.g. "debug" to run them in this process). Returns the submitit jobs per level."""
    try:
        import submitit
    except ImportError as e:
        raise UserError("--slurm-backend submitit needs the submitit package: pip install 'promptot[slurm]' "
                        "(or use the default backend, which writes sbatch scripts).") from e
    from .task import run_task

    os.makedirs(out_dir, exist_ok=True)
    plan = os.path.abspath(os.path.join(out_dir, "plan.json"))
    lv = write_plan(plan, repo, python, jobs, hashes, retries)
    ex = submitit.AutoExecutor(folder=os.path.join(out_dir, "submitit"), cluster=cluster)
    params = dict(name=opts.job_name, cpus_per_task=opts.cpus_per_task, gpus_per_node=opts.gpus_per_task,
                  timeout_min=time_to_minutes(opts.time), slurm_array_parallelism=opts.max_parallel or len(jobs))
    if opts.extra and ex.cluster == "slurm":
        params["slurm_additional_parameters"] = dict(x.lstrip("-").split("=", 1) for x in opts.extra if "=" in x)
    submitted: List[list] = []
    for k, level in enumerate(lv):
        extra = {}
        if submitted and ex.cluster == "slurm":
            extra["slurm_additional_parameters"] = dict(params.get("slurm_additional_parameters", {}), dependency=(
                "afterany:" + ":".join(str(j.job_id) for j in submitted[-1])))
        ex.update_parameters(**{**params, **extra})
        if ex.cluster != "slurm":  # the local/debug executors run levels in order themselves
            for prev in submitted[-1] if submitted else []:
                prev.result()
        submitted.append(ex.map_array(run_task, [plan] * len(level), [k] * len(level), list(range(len(level)))))
    return submitted


def time_to_minutes(value: str) -> int:
    """Slurm's ``[D-]HH:MM:SS`` (or ``MM``) as minutes, for submitit's ``timeout_min``."""
    try:
        days, _, rest = value.rpartition("-")
        parts = [int(x) for x in rest.split(":")]
        if len(parts) == 1:
            minutes = parts[0]
        else:
            parts = [0] * (3 - len(parts)) + parts
            minutes = parts[0] * 60 + parts[1] + (1 if parts[2] else 0)
        return minutes + int(days or 0) * 1440
    except ValueError as e:
        raise UserError(f"--slurm-time must look like 24:00:00 or 1-12:00:00, got {value!r}") from e
