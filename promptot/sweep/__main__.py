"""Run a protocol of the papers' tables: ``python -m promptot.sweep PROTOCOL [PROTOCOL ...] [options]``.

Expands the protocol (``configs/protocols.yaml``) into ``train.py`` jobs, shows the plan, and runs it on the given
GPUs (one job per GPU) or on CPU workers, with progress (done / running / failed, ETA). Kill it and run the
same command again: finished jobs are skipped (their results record is complete), interrupted ones resume from
their checkpoint, and a folder whose config changed is refused unless ``--rerun-changed``. A failed job is
retried once. ``--slurm DIR`` writes (or, with ``--slurm-submit``, submits) the same jobs as Slurm job arrays.

Examples::

    python -m promptot.sweep fewshot --trainers CoOp --datasets caltech101 --dry-run
    DATA=/data python -m promptot.sweep base2new --trainers CoCoOp --gpus 0,1,2,3
    python -m promptot.sweep fewshot base2new --trainers CoOp CoCoOp --datasets fashion_mnist_shift \\
        --shots 2 4 --seeds 1 2 --config miniclip --data-root data --workers 2 --opts OPTIM.MAX_EPOCH 2
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
from typing import Dict, List, Optional

from ..errors import UserError, format_user_error
from .jobs import Job, job_status
from .protocols import ProtocolError, Selection, expand, load_protocols, repo_root
from .runner import STATE_DIR, ForkLauncher, SubprocessLauncher, SweepRefused, TrainPyResolver, check_changed, \
    make_slots, run_jobs
from .slurm import SlurmOptions, levels, submit_with_submitit, write_scripts


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m promptot.sweep``."""
    p = argparse.ArgumentParser(prog="python -m promptot.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("protocols", nargs="+", metavar="PROTOCOL", help="protocol name(s) from the protocol file")
    g = p.add_argument_group("what to run")
    g.add_argument("--trainers", nargs="+", help="methods (default: every method with an entry for the protocol)")
    g.add_argument("--datasets", nargs="+", help="dataset config stems (transfer protocols: the targets)")
    g.add_argument("--source", help="transfer protocols: the dataset the prompts are learned on")
    g.add_argument("--shots", nargs="+", metavar="K",
                   help="shot counts; PROTOCOL=K,K sets them for one protocol (e.g. fewshot=2,4 base2new=2)")
    g.add_argument("--seeds", nargs="+", type=int)
    g.add_argument("--config", help="one config (stem in configs/trainers/<method>/ or a yaml path) for every job")
    g.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a method parameter used in its options and folders (e.g. nctx=8 for CoOp, n=2 for PLOT)")
    g.add_argument("--load-epoch", type=int, help="epoch evaluation jobs load (default: where training ends)")
    g.add_argument("--only", choices=["train", "eval"], help="keep only training or only evaluation jobs")
    g.add_argument("--stage", help="keep only the jobs of one training stage (PLOT++: visiononly or joint)")
    g.add_argument("--data-root", default=os.environ.get("PROMPTOT_DATA") or os.environ.get("DATA"),
                   help="dataset root passed as --root (default: $PROMPTOT_DATA or $DATA)")
    g.add_argument("--output-root", default=os.environ.get("PROMPTOT_OUTPUT") or os.environ.get("OUT") or "output",
                   help="where the run folders go (default: $PROMPTOT_OUTPUT, $OUT or output)")
    g.add_argument("--protocol-file", help="default: configs/protocols.yaml of the repository")
    g = p.add_argument_group("how")
    g.add_argument("--dry-run", action="store_true", help="print the train.py commands and exit")
    g.add_argument("--status", action="store_true", help="print each job's status (done, pending, ...) and exit")
    g.add_argument("--gpus", help="GPU ids, one job per GPU at a time, e.g. 0,1,2,3 (default: CPU)")
    g.add_argument("--workers", type=int, default=1, help="CPU jobs at a time when no --gpus (default 1)")
    g.add_argument("--preload", action="store_true",
                   help="fork jobs from a process that imported train.py once (saves its start-up per job)")
    g.add_argument("--retries", type=int, default=1, help="reruns of a failed job (default 1)")
    g.add_argument("--rerun-changed", action="store_true",
                   help="move folders of a changed config aside and rerun them (default: refuse)")
    g.add_argument("--python", default=sys.executable, help="interpreter for the jobs")
    g.add_argument("--report", action="store_true", help="write the report (promptot.report) when done")
    g = p.add_argument_group("Slurm")
    g.add_argument("--slurm", metavar="DIR", help="write the jobs as Slurm job arrays into DIR instead of running")
    g.add_argument("--slurm-backend", choices=["script", "submitit"], default="script")
    g.add_argument("--slurm-submit", action="store_true", help="submit them (sbatch submit.sh, or submitit)")
    g.add_argument("--slurm-option", action="append", default=[], metavar="OPT",
                   help="extra #SBATCH option, e.g. --slurm-option=--partition=gpu (repeatable)")
    g.add_argument("--slurm-time", default="24:00:00")
    g.add_argument("--slurm-cpus", type=int, default=8)
    g.add_argument("--slurm-gpus", type=int, default=1)
    g.add_argument("--slurm-max-parallel", type=int, default=0)
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                   help="KEY VALUE overrides appended to every job (put last)")
    return p


def _params(items: List[str]) -> Dict[str, str]:
    out = {}
    for it in items:
        if "=" not in it:
            raise ProtocolError(f"--param takes NAME=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _shots(items: List[str], protocols: List[str]):
    """``--shots 2 4`` (every protocol) and ``--shots fewshot=2,4 base2new=2`` (per protocol)."""
    everywhere: List[int] = []
    by: Dict[str, List[int]] = {}
    try:
        for it in items:
            if "=" in it:
                name, _, ks = it.partition("=")
                if name not in protocols:
                    raise ProtocolError(f"--shots {it}: {name!r} is not one of the protocols asked for ({protocols}).")
                by[name] = [int(k) for k in ks.split(",") if k]
            else:
                everywhere.append(int(it))
    except ValueError as e:
        raise ProtocolError(f"--shots takes integers or PROTOCOL=K,K items, got {items}") from e
    return everywhere or None, by


def _root(path: str, repo: str) -> str:
    """Keep a relative root relative when running from the repository (the commands then read like the reference
    scripts'); make it absolute otherwise, since jobs run from the repository root."""
    if os.path.isabs(path) or os.path.realpath(os.getcwd()) == os.path.realpath(repo):
        return path
    return os.path.abspath(path)


def plan(args: argparse.Namespace, repo: str, data_root: str, out_root: str) -> List[Job]:
    """The jobs of every protocol asked for, deduplicated by output folder."""
    pf = load_protocols(args.protocol_file)
    if len(args.opts) % 2:
        raise ProtocolError(f"--opts takes KEY VALUE pairs; got an odd number: {args.opts}")
    shots_all, shots_by = _shots(args.shots or [], args.protocols)
    jobs: Dict[str, Job] = {}
    for proto in args.protocols:
        sel = Selection(trainers=args.trainers, datasets=args.datasets, source=args.source,
                        shots=shots_by.get(proto, shots_all), seeds=args.seeds, config=args.config,
                        params=_params(args.param), opts=list(args.opts), load_epoch=args.load_epoch, only=args.only,
                        stage=args.stage)
        for j in expand(pf, proto, sel, repo=repo, data_root=data_root, output_root=out_root):
            if j.output_dir in jobs and jobs[j.output_dir].argv() != j.argv():
                raise ProtocolError(f"{j.output_dir} is written by two protocols with different commands:\n  "
                                    f"{jobs[j.output_dir].command()}\n  {j.command()}")
            jobs.setdefault(j.output_dir, j)
    return list(jobs.values())


def _interrupt(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt


def main(argv: Optional[List[str]] = None) -> int:
    """The command line; returns the exit code (0 all done, 1 some job failed, 2 bad input)."""
    args = build_parser().parse_args(argv)
    repo = repo_root()
    try:
        data_root = _root(args.data_root, repo) if args.data_root else "/path/to/datasets"
        out_root = _root(args.output_root, repo)
        jobs = plan(args, repo, data_root, out_root)
        if args.dry_run:
            counts: Dict[str, int] = {}
            for j in jobs:
                counts[f"{j.method} {j.role}"] = counts.get(f"{j.method} {j.role}", 0) + 1
            print(f"# {' + '.join(args.protocols)}: {len(jobs)} job(s) ({', '.join(f'{k} {v}' for k, v in counts.items())})"
                  f"; run from {repo}")
            for j in jobs:
                print(j.command())
            return 0
        if not args.data_root:
            raise SweepRefused("No dataset root: pass --data-root DIR or set DATA (or PROMPTOT_DATA).")
        os.chdir(repo)
        resolver = TrainPyResolver(repo)
        hashes = {j.id: resolver.hash(j) for j in jobs}
        state_dir = os.path.join(out_root, STATE_DIR)
        if args.status:
            for j in jobs:
                print(f"{job_status(j, hashes[j.id]):8s} {j.id}")
            return 0
        if args.slurm:
            return _slurm(args, repo, jobs, hashes)
        gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else None
        slots = make_slots(gpus, args.workers)
        launcher = ForkLauncher(resolver) if args.preload else SubprocessLauncher(repo, args.python)
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            result = run_jobs(jobs, hashes, slots, launcher, state_dir, retries=args.retries,
                              rerun_changed=args.rerun_changed)
        except KeyboardInterrupt:
            return 130
        if result.failed or result.blocked:
            print(f"[sweep] {len(result.failed)} job(s) failed, {len(result.blocked)} not run because a job they "
                  f"need failed: {', '.join(result.failed + result.blocked)}. Fix the cause (see the logs in "
                  f"{os.path.join(state_dir, 'logs')}) and run the same command again.")
        if args.report:
            from ..report.build import ALL
            from ..report.__main__ import main as report_main

            pf = load_protocols(args.protocol_file)
            sections = {p if p in ALL else ("xd" if pf.protocols[p].kind == "transfer" else pf.protocols[p].kind)
                        for p in args.protocols}
            report_main([out_root] + [a for p in sorted(sections) for a in ("--protocol", p)])
        return 0 if result.ok else 1
    except UserError as e:
        print(format_user_error(e), file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `--dry-run | head`: the reader has what it wanted
        sys.stdout = open(os.devnull, "w")
        return 0


def _slurm(args: argparse.Namespace, repo: str, jobs: List[Job], hashes: Dict[str, str]) -> int:
    status = check_changed(jobs, hashes, args.rerun_changed)
    todo = [j for j in jobs if status[j.id] != "done"]
    print(f"[sweep] {len(jobs)} jobs, {len(jobs) - len(todo)} already done; {len(todo)} to submit in "
          f"{len(levels(todo)) if todo else 0} level(s)")
    opts = SlurmOptions(gpus_per_task=args.slurm_gpus, cpus_per_task=args.slurm_cpus, time=args.slurm_time,
                        max_parallel=args.slurm_max_parallel, extra=list(args.slurm_option),
                        job_name="promptot-" + "-".join(args.protocols))
    if not todo:
        return 0
    if args.slurm_backend == "submitit":
        if not args.slurm_submit:
            raise SweepRefused("--slurm-backend submitit submits at once: add --slurm-submit (or use the default "
                               "backend to only write the scripts).")
        submitted = submit_with_submitit(args.slurm, repo, args.python, todo, hashes, opts, args.retries)
        for k, level in enumerate(submitted):
            print(f"[sweep] level {k}: submitted {len(level)} task(s): {', '.join(str(j.job_id) for j in level)}")
        return 0
    files = write_scripts(args.slurm, repo, args.python, todo, hashes, opts, args.retries)
    submit = os.path.join(args.slurm, "submit.sh")
    print(f"[sweep] wrote {', '.join(files)} and {submit}")
    if args.slurm_submit:
        return subprocess.call(["bash", submit])
    print(f"[sweep] submit with: bash {shlex.quote(submit)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
