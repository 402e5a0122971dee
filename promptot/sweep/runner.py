"""Run a sweep's jobs locally: one job per GPU (or N CPU workers), resumable, each failed job retried once.

The truth is on disk: a job is done when its results record is complete (:mod:`.jobs`), so a runner that is
killed (even with SIGKILL) and started again skips the finished jobs and reruns the others, which resume from
their last checkpoint. Jobs die with the runner (``PR_SET_PDEATHSIG`` on Linux), and each holds a lock on its
output folder while it runs, so two runners never run the same job at once.

The runner keeps ``<output root>/.sweep/``: ``history.jsonl`` (one line per job start and end: the accounting and
the ETA's durations), ``logs/<job>.<attempt>.log`` (the job's console) and ``locks/``.
"""
from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..errors import UserError
from .jobs import Job, JobStatus, dir_complete, job_status

STATE_DIR = ".sweep"


class SweepRefused(UserError):
    """The sweep would mix results of different configs, or cannot start."""


# ---------------------------------------------------------------------------------------------- config hashes
def load_application(repo: str) -> Any:
    """The repository's ``train.py`` as a module, loaded from its path (the library does not import the
    application; the runner drives it, as it runs it in each job). Its ``trainers`` and ``datasets`` packages are
    found through ``repo`` on ``sys.path``."""
    import importlib.util

    path = os.path.join(repo, "train.py")
    if not os.path.isfile(path):
        raise SweepRefused(f"{path} not found: run the sweep from a promptot repository (the folder holding train.py "
                           "and configs/), or pass --protocol-file of one.")
    if repo not in sys.path:
        sys.path.insert(0, repo)
    spec = importlib.util.spec_from_file_location("promptot_application_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


class TrainPyResolver:
    """The config hash of a job, from ``train.py``'s own ``setup_cfg`` on the job's arguments (same merge order,
    same engine as the job itself), with ``train.py`` loaded once from the repository."""

    def __init__(self, repo: str) -> None:
        self.repo = repo
        self._train = None

    @property
    def train(self) -> Any:
        """The repository's ``train.py`` (loaded on first use)."""
        if self._train is None:
            self._train = load_application(self.repo)
        return self._train

    def hash(self, job: Job) -> str:
        """The config hash ``train.py`` will write for ``job`` (raises :class:`SweepRefused` on a bad config)."""
        from ..config import config_hash

        train = self.train
        try:
            cfg = train.setup_cfg(train.build_parser().parse_args(job.argv()))
        except UserError as e:
            raise SweepRefused(f"Job {job.id} ({job.label()}) has a bad config: {e}") from e
        return config_hash(cfg)


# ---------------------------------------------------------------------------------------------- launching
def _die_with_parent(parent: int) -> None:
    """In a job process: get SIGKILL when the runner dies (Linux); exit at once if it is already gone."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: jobs then outlive a killed runner (the lock still protects)
        pass
    if os.getppid() != parent:
        os._exit(1)


@dataclass
class Slot:
    """Where a job runs: a GPU (``CUDA_VISIBLE_DEVICES``) or a CPU worker with its share of threads."""

    name: str
    env: Dict[str, str]
    threads: Optional[int] = None


def make_slots(gpus: Optional[Sequence[str]], workers: int) -> List[Slot]:
    """One slot per GPU id, else ``workers`` CPU slots that share the cores."""
    if gpus:
        bad = [g for g in gpus if not (str(g).isdigit() or str(g).startswith(("GPU-", "MIG-")))]
        if bad or len(set(gpus)) != len(gpus):
            raise SweepRefused(f"--gpus takes distinct GPU ids (e.g. 0,1,2,3, or GPU-/MIG- UUIDs as nvidia-smi -L "
                               f"lists them), got {list(gpus)}.")
        return [Slot(f"gpu{g}", {"CUDA_VISIBLE_DEVICES": str(g)}) for g in gpus]
    if workers < 1:
        raise SweepRefused(f"--workers must be >= 1, got {workers}")
    threads = max(1, (os.cpu_count() or 1) // workers)
    return [Slot(f"cpu{i}", {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS",
                                                                                            str(threads))},
                 threads=int(os.environ.get("OMP_NUM_THREADS", threads))) for i in range(workers)]


class Running:
    """A started job: its process and bookkeeping."""

    def __init__(self, job: Job, attempt: int, slot: Slot, pid: int, log: str, popen=None) -> None:
        self.job, self.attempt, self.slot, self.pid, self.log, self.popen = job, attempt, slot, pid, log, popen
        self.start = time.time()

    def poll(self) -> Optional[int]:
        """The exit code once the job ended, else None."""
        if self.popen is not None:
            return self.popen.poll()
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            return None
        return os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else status >> 8

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class SubprocessLauncher:
    """Each job is ``python train.py ...`` in its own process (the default)."""

    def __init__(self, repo: str, python: str = sys.executable, script: str = "train.py") -> None:
        self.repo, self.python, self.script = repo, python, script

    def start(self, job: Job, slot: Slot, log: str, lock_fd: int, attempt: int) -> Running:
        """Start ``python train.py ARGS`` on ``slot``, console to ``log``, holding the lock ``lock_fd``."""
        env = dict(os.environ, **slot.env)
        parent = os.getpid()
        with open(log, "ab") as out:
            p = subprocess.Popen([self.python, os.path.join(self.repo, self.script)] + job.argv(), cwd=self.repo,
                                 stdout=out, stderr=subprocess.STDOUT, env=env, pass_fds=(lock_fd,),
                                 preexec_fn=lambda: _die_with_parent(parent))
        return Running(job, attempt, slot, p.pid, log, popen=p)


class ForkLauncher:
    """Each job is forked from a process that imported ``train.py`` (torch, trainers, datasets) once: no import
    cost per job, which dominates short jobs (evaluations, small datasets). Needs ``os.fork`` (Linux, macOS);
    the runner itself never initialises CUDA, so each child picks its GPU from ``CUDA_VISIBLE_DEVICES``."""

    def __init__(self, resolver: TrainPyResolver) -> None:
        self.resolver = resolver

    def start(self, job: Job, slot: Slot, log: str, lock_fd: int, attempt: int) -> Running:
        """Fork a child that runs ``train.main`` on the job's arguments (same exit codes as ``train.py``)."""
        train = self.resolver.train  # import before forking
        parent = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            return Running(job, attempt, slot, pid, log)
        code = 1
        try:  # the job process
            _die_with_parent(parent)
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_DFL)
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = open(1, "w", buffering=1, closefd=False)
            sys.stderr = open(2, "w", buffering=1, closefd=False)
            os.environ.update(slot.env)
            if slot.threads:
                import torch

                torch.set_num_threads(slot.threads)
            from ..errors import format_user_error

            try:
                train.main(train.build_parser().parse_args(job.argv()))
                code = 0
            except UserError as e:  # as train.py's entry point: one paragraph, exit 2
                print(format_user_error(e), file=sys.stderr)
                code = 2
            except Exception:  # noqa: BLE001 - a bug: its traceback, exit 1
                import traceback

                traceback.print_exc()
                code = 1
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)


# ---------------------------------------------------------------------------------------------- bookkeeping
class History:
    """``history.jsonl``: start/end events, the runner's accounting across restarts."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, "history.jsonl")

    def write(self, **event) -> None:
        event.setdefault("time", datetime.datetime.now().isoformat(timespec="seconds"))
        with open(self.path, "a") as f:
            f.write(json.dumps(event) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def events(self) -> List[dict]:
        if not os.path.isfile(self.path):
            return []
        out = []
        with open(self.path) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a kill
                    continue
        return out


def _duration_key(job: Job) -> str:
    return f"{job.method}|{job.role}|{job.dataset}"


class Eta:
    """Remaining time from the durations of finished jobs (this run and earlier ones): per method, role and
    dataset when known, else per method and role, else overall."""

    def __init__(self, events: Sequence[dict]) -> None:
        self.samples: Dict[str, List[float]] = {}
        for e in events:
            if e.get("event") == "end" and e.get("status") == "done" and "key" in e:
                self.add(e["key"], float(e["seconds"]))

    def add(self, key: str, seconds: float) -> None:
        self.samples.setdefault(key, []).append(seconds)

    def expected(self, job: Job) -> Optional[float]:
        key = _duration_key(job)
        prefix = key.rsplit("|", 1)[0] + "|"
        for pool in ([v for k, v in self.samples.items() if k == key],
                     [v for k, v in self.samples.items() if k.startswith(prefix)],
                     list(self.samples.values())):
            flat = [x for xs in pool for x in xs]
            if flat:
                return sum(flat) / len(flat)
        return None

    def remaining(self, waiting: Sequence[Job], running: Sequence[Running], n_slots: int) -> Optional[float]:
        total = 0.0
        for j in waiting:
            e = self.expected(j)
            if e is None:
                return None
            total += e
        for r in running:
            e = self.expected(r.job)
            if e is None:
                return None
            total += max(0.0, e - (time.time() - r.start))
        return total / max(1, n_slots)


def _fmt_eta(seconds: Optional[float]) -> str:
    if seconds is None:
        return "ETA unknown until a job finishes"
    return f"ETA {datetime.timedelta(seconds=int(seconds))}"


def lock_path(state_dir: str, job: Job) -> str:
    """The lock file of a job's output folder (one per folder, under the sweep's state folder)."""
    return os.path.join(state_dir, "locks", hashlib.sha1(os.path.abspath(job.output_dir).encode()).hexdigest()[:16]
                        + ".lock")


def try_lock(path: str) -> Optional[int]:
    """An exclusive lock on ``path`` (an fd), or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


@dataclass
class SweepResult:
    done: List[str] = field(default_factory=list)  #: done when the runner started (not run again)
    ran: List[str] = field(default_factory=list)  #: run and completed now
    failed: List[str] = field(default_factory=list)
    blocked: List[str] = field(default_factory=list)  #: not run: a job they need failed or is missing

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked


def check_changed(jobs: Sequence[Job], hashes: Dict[str, str], rerun_changed: bool,
                  out: Callable[[str], None] = print) -> Dict[str, str]:
    """Statuses of ``jobs``; folders of another config are refused, or moved aside with ``rerun_changed``."""
    status = {j.id: job_status(j, hashes.get(j.id)) for j in jobs}
    changed = [j for j in jobs if status[j.id] == JobStatus.CHANGED]
    if changed and not rerun_changed:
        listing = "\n".join(f"  {j.output_dir}" for j in changed[:20]) + (
            f"\n  ... and {len(changed) - 20} more" if len(changed) > 20 else "")
        raise SweepRefused(
            f"{len(changed)} job folder(s) hold results or checkpoints of a different config than the job would "
            f"run now (the config hash differs: a config file, an option or the code changed):\n{listing}\n"
            "Mixing them would average different experiments. Rerun with --rerun-changed to move those folders "
            "aside (renamed to <folder>.changed-<time>) and run the jobs again, or use another --output-root.")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for j in changed:
        dest = f"{j.output_dir.rstrip(os.sep)}.changed-{stamp}"
        shutil.move(j.output_dir, dest)
        out(f"[sweep] {j.id}: config changed; moved the old folder to {dest}")
        status[j.id] = JobStatus.PENDING
    return status


def run_jobs(jobs: Sequence[Job], hashes: Dict[str, str], slots: Sequence[Slot], launcher, state_dir: str,
             retries: int = 1, rerun_changed: bool = False, poll: float = 0.5,
             out: Callable[[str], None] = print) -> SweepResult:
    """Run ``jobs`` (in order, each after the jobs it needs) on ``slots``; see the module docstring."""
    for sub in ("logs", "locks"):
        os.makedirs(os.path.join(state_dir, sub), exist_ok=True)
    history = History(state_dir)
    eta = Eta(history.events())
    status = check_changed(jobs, hashes, rerun_changed, out)
    by_dir = {os.path.normpath(j.output_dir): j for j in jobs}
    finished = set()
    for j in jobs:  # in plan order: a job is done only if what it loads is done too (else it runs again after it)
        deps = [by_dir.get(os.path.normpath(d)) for d in j.needs]
        if status[j.id] == JobStatus.DONE and all(dj is None or dj.id in finished for dj in deps):
            finished.add(j.id)
    result = SweepResult(done=[j.id for j in jobs if j.id in finished])
    waiting = [j for j in jobs if j.id not in finished]
    attempts: Dict[str, int] = {}
    running: List[Running] = []
    free = list(slots)
    elsewhere: set = set()
    announced: set = set()
    total = len(jobs)
    history.write(event="plan", jobs=total, done=len(finished), slots=[s.name for s in slots])
    resumed = sum(1 for j in waiting if status[j.id] == JobStatus.PARTIAL)
    out(f"[sweep] {total} jobs: {len(finished)} already done (skipped), {len(waiting)} to run"
        + (f" ({resumed} resume from an interrupted run)" if resumed else "") + f"; slots: "
        f"{', '.join(s.name for s in slots)}")

    def dep_state(j: Job) -> str:
        """ready | wait | broken"""
        for d in j.needs:
            dj = by_dir.get(os.path.normpath(d))
            if dj is None:  # not part of this sweep: must be finished on disk
                if not dir_complete(d):
                    return "broken"
                continue
            if dj.id in finished:
                continue
            if dj.id in result.failed or dj.id in result.blocked:
                return "broken"
            return "wait"
        return "ready"

    def progress(note: str = "") -> None:
        n_done = len(finished)
        remaining = eta.remaining(waiting, running, len(slots))
        extra = f", {len(elsewhere)} running in another process" if elsewhere else ""
        out(f"[sweep] {n_done}/{total} done, {len(running)} running, {len(result.failed)} failed"
            f"{', ' + str(len(result.blocked)) + ' blocked' if result.blocked else ''}, {len(waiting)} waiting"
            f"{extra} | {_fmt_eta(remaining)}" + (f" | {note}" if note else ""))

    try:
        while waiting or running:
            changed_state = False
            # start what can start
            i = 0
            elsewhere.clear()
            while free and i < len(waiting):
                j = waiting[i]
                dep = dep_state(j)
                if dep == "broken":
                    waiting.pop(i)
                    result.blocked.append(j.id)
                    history.write(event="blocked", job=j.id)
                    out(f"[sweep] {j.id}: not run, a job it needs failed or is missing ({', '.join(j.needs)})")
                    changed_state = True
                    continue
                if dep == "wait":
                    i += 1
                    continue
                fd = try_lock(lock_path(state_dir, j))
                if fd is None:
                    elsewhere.add(j.id)
                    if j.id not in announced:
                        announced.add(j.id)
                        progress(f"{j.label()} is running in another process (its folder is locked); waiting")
                    i += 1
                    continue
                if job_status(j, hashes.get(j.id)) == JobStatus.DONE:  # finished by another process meanwhile
                    os.close(fd)
                    waiting.pop(i)
                    finished.add(j.id)
                    result.done.append(j.id)
                    continue
                waiting.pop(i)
                slot = free.pop(0)
                attempts[j.id] = attempts.get(j.id, 0) + 1
                log = os.path.join(state_dir, "logs", j.id.replace(os.sep, "__") + f".{attempts[j.id]}.log")
                try:
                    r = launcher.start(j, slot, log, fd, attempts[j.id])
                finally:
                    os.close(fd)  # the job process holds the lock now
                running.append(r)
                history.write(event="start", job=j.id, attempt=attempts[j.id], pid=r.pid, slot=slot.name, log=log)
                progress(f"started {j.label()} on {slot.name}")
            # collect what ended
            for r in list(running):
                rc = r.poll()
                if rc is None:
                    continue
                running.remove(r)
                free.append(r.slot)
                seconds = time.time() - r.start
                j = r.job
                ok = rc == 0 and job_status(j, hashes.get(j.id)) == JobStatus.DONE
                if ok:
                    finished.add(j.id)
                    result.ran.append(j.id)
                    eta.add(_duration_key(j), seconds)
                    history.write(event="end", job=j.id, attempt=r.attempt, rc=rc, status="done",
                                  seconds=round(seconds, 2), key=_duration_key(j))
                    progress(f"finished {j.label()} in {seconds:.0f} s")
                else:
                    why = f"exit code {rc}" if rc != 0 else "exit code 0 but no complete results record"
                    history.write(event="end", job=j.id, attempt=r.attempt, rc=rc, status="failed",
                                  seconds=round(seconds, 2), key=_duration_key(j))
                    tail = _tail(r.log)
                    if rc == 2:  # a user error (config, data, weights): the same run would fail the same way
                        result.failed.append(j.id)
                        progress(f"{j.label()} FAILED with a user error (exit code 2), not retried. Log: {r.log}{tail}")
                    elif r.attempt <= retries:
                        waiting.insert(0, j)
                        progress(f"{j.label()} failed ({why}); retrying (attempt {r.attempt + 1}), it resumes from "
                                 f"its last checkpoint. Log: {r.log}{tail}")
                    else:
                        result.failed.append(j.id)
                        progress(f"{j.label()} FAILED ({why}) after {r.attempt} attempt(s). Log: {r.log}{tail}")
                changed_state = True
            if not changed_state and (waiting or running):
                if not running and waiting and not free:
                    raise RuntimeError("no free slot and nothing running")  # cannot happen: slots come back
                if not running and waiting and all(dep_state(j) == "wait" for j in waiting) and not elsewhere:
                    # only jobs waiting for jobs that will never run here (e.g. --only eval): block them
                    for j in waiting:
                        result.blocked.append(j.id)
                    waiting.clear()
                    continue
                time.sleep(poll)
    except KeyboardInterrupt:
        for r in running:
            r.kill()
        history.write(event="interrupted", running=[r.job.id for r in running])
        out("[sweep] interrupted; running jobs stopped. Run the same command again to continue (finished jobs are "
            "skipped, interrupted ones resume).")
        raise
    history.write(event="finish", done=len(finished), failed=len(result.failed), blocked=len(result.blocked))
    progress("sweep finished")
    return result


def _tail(log: str, n: int = 6) -> str:
    try:
        with open(log, errors="replace") as f:
            lines = [ln.rstrip() for ln in f.readlines()[-n:]]
    except OSError:
        return ""
    return "".join("\n    " + ln for ln in lines)
