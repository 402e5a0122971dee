"""The sweep runner's accounting with a stand-in for train.py (fast): one job per slot, dependencies, retry once,
failed and blocked jobs, restart without rerunning finished jobs, refusal of changed configs, locks, Slurm arrays
and their tasks. The real train.py runs through the runner in test_sweep_e2e.py."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from promptot.sweep.jobs import Job, JobStatus, job_status
from promptot.sweep.runner import (History, SubprocessLauncher, SweepRefused, check_changed, lock_path, make_slots,
                                   run_jobs, try_lock)
from promptot.sweep.slurm import SlurmOptions, levels, submit_with_submitit, write_scripts
from promptot.sweep.task import run_task

# A stand-in for train.py: parses the same arguments, sleeps, writes the results record the real one writes
# (split, epoch, model_dir, config_hash), and records the CUDA_VISIBLE_DEVICES it got and when it ran.
# <output_dir>.fail_once: fail the first attempt; <output_dir>.fail: always fail.
FAKE_TRAIN = r'''
import datetime, hashlib, json, os, sys, time
argv = sys.argv[1:]
def val(flag):
    return argv[argv.index(flag) + 1] if flag in argv else None
out = val("--output-dir")
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "attempts"), "a") as f:
    f.write("x")
start = time.time()
time.sleep(float(os.environ.get("FAKE_SLEEP", "0.3")))
if os.path.exists(out.rstrip("/") + ".usererror"):
    print("ERROR: dataset not found", file=sys.stderr)
    sys.exit(2)
if os.path.exists(out.rstrip("/") + ".fail") or (
        os.path.exists(out.rstrip("/") + ".fail_once") and len(open(os.path.join(out, "attempts")).read()) == 1):
    sys.exit(3)
first = next((i for i, a in enumerate(argv) if "." in a and a.isupper()), len(argv))
kv = dict(zip(argv[first::2], argv[first + 1::2]))
if "--eval-only" in argv:
    epoch = int(val("--load-epoch") or 0)
else:
    epoch = int(kv.get("OPTIM.MAX_EPOCH", 10))
core = [a for i, a in enumerate(argv) if not (a in ("--output-dir", "--root") or (i and argv[i - 1] in ("--output-dir", "--root")))]
rec = {"split": "test", "epoch": epoch, "model_dir": val("--model-dir"), "seed": int(val("--seed") or -1),
       "config_hash": hashlib.sha256(json.dumps(core).encode()).hexdigest()[:12], "metrics": {"accuracy": 50.0},
       "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start, "end": time.time(),
       "time": datetime.datetime.now().isoformat(timespec="seconds")}
with open(os.path.join(out, "results.jsonl"), "a") as f:
    f.write(json.dumps(rec) + "\n")
'''


class FakeResolver:
    """The hash the stand-in writes: its arguments without the output folder and data root."""

    @staticmethod
    def hash(job: Job) -> str:
        a = job.argv()
        core = [x for i, x in enumerate(a) if not (x in ("--output-dir", "--root") or
                                                   (i and a[i - 1] in ("--output-dir", "--root")))]
        return hashlib.sha256(json.dumps(core).encode()).hexdigest()[:12]


@pytest.fixture
def repo(tmp_path) -> Path:
    r = tmp_path / "repo"
    r.mkdir()
    (r / "train.py").write_text(FAKE_TRAIN)
    return r


def _jobs(out: Path, n_train: int = 3) -> list:
    jobs = []
    for i in range(n_train):
        t = Job(id=f"train{i}", protocol="base2new", method="M", trainer="M", role="train", dataset=f"d{i}",
                config="c.yaml", output_dir=str(out / f"train{i}"), data_root="DATA", seed=1, shots=2,
                opts=["DATASET.NUM_SHOTS", "2", "OPTIM.MAX_EPOCH", "2"], max_epoch=2)
        e = Job(id=f"eval{i}", protocol="base2new", method="M", trainer="M", role="eval", dataset=f"d{i}",
                config="c.yaml", output_dir=str(out / f"eval{i}"), data_root="DATA", seed=1, shots=2,
                opts=["DATASET.NUM_SHOTS", "2"], model_dir=t.output_dir, load_epoch=2, needs=[t.output_dir])
        jobs += [t, e]
    return jobs


def _run(repo: Path, out: Path, jobs, slots=None, **kw):
    hashes = {j.id: FakeResolver.hash(j) for j in jobs}
    lines = []
    res = run_jobs(jobs, hashes, slots or make_slots(["0", "1"], 1), SubprocessLauncher(str(repo)),
                   str(out / ".sweep"), poll=0.05, out=lines.append, **kw)
    return res, lines


def _records(d: str) -> list:
    return [json.loads(x) for x in Path(d, "results.jsonl").read_text().splitlines()]


def test_one_job_per_gpu_dependencies_and_restart(repo, tmp_path):
    out = tmp_path / "out"
    jobs = _jobs(out)
    res, lines = _run(repo, out, jobs)
    assert res.ok and sorted(res.ran) == sorted(j.id for j in jobs) and not res.done
    recs = {j.id: _records(j.output_dir)[0] for j in jobs}
    assert {r["gpu"] for r in recs.values()} <= {"0", "1"}
    for gpu in ("0", "1"):  # never two jobs on one GPU at a time
        spans = sorted((r["start"], r["end"]) for r in recs.values() if r["gpu"] == gpu)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    for i in range(3):  # an evaluation starts after the training it loads has ended
        assert recs[f"eval{i}"]["start"] >= recs[f"train{i}"]["end"]
    assert any("6/6 done" in ln for ln in lines) and any("ETA 0:" in ln for ln in lines)
    events = History(str(out / ".sweep")).events()
    assert sum(e["event"] == "start" for e in events) == 6
    # restart: everything is done, nothing runs again
    res2, lines2 = _run(repo, out, jobs)
    assert sorted(res2.done) == sorted(j.id for j in jobs) and not res2.ran
    assert sum(e["event"] == "start" for e in History(str(out / ".sweep")).events()) == 6
    assert all(Path(j.output_dir, "attempts").read_text() == "x" for j in jobs)
    assert "6 jobs: 6 already done" in lines2[0]


def test_failed_job_is_retried_once_then_dependents_are_blocked(repo, tmp_path):
    out = tmp_path / "out"
    jobs = _jobs(out)
    out.mkdir()
    Path(jobs[0].output_dir + ".fail_once").touch()  # train0: crashes once, then succeeds
    Path(jobs[2].output_dir + ".fail").touch()  # train1: always fails
    res, lines = _run(repo, out, jobs, retries=1)
    assert not res.ok
    assert res.failed == ["train1"] and res.blocked == ["eval1"]
    assert {"train0", "eval0", "train2", "eval2"} == set(res.ran)
    assert Path(jobs[0].output_dir, "attempts").read_text() == "xx"  # retried once
    assert Path(jobs[2].output_dir, "attempts").read_text() == "xx"  # one retry, no more
    assert not Path(jobs[3].output_dir).exists()
    assert any("retrying (attempt 2)" in ln for ln in lines) and any("FAILED (exit code 3)" in ln for ln in lines)
    # fixed and restarted: only the failed job and its dependent run
    os.remove(jobs[2].output_dir + ".fail")
    res2, _ = _run(repo, out, jobs)
    assert res2.ok and sorted(res2.ran) == ["eval1", "train1"]


def test_changed_config_is_refused_unless_told(repo, tmp_path):
    out = tmp_path / "out"
    jobs = _jobs(out, n_train=1)
    assert _run(repo, out, jobs)[0].ok
    jobs[0].opts = ["DATASET.NUM_SHOTS", "2", "OPTIM.MAX_EPOCH", "3"]  # the config changed
    jobs[0].max_epoch = 3
    jobs[1].load_epoch = 3
    hashes = {j.id: FakeResolver.hash(j) for j in jobs}
    assert job_status(jobs[0], hashes["train0"]) == JobStatus.CHANGED
    with pytest.raises(SweepRefused, match="different config"):
        _run(repo, out, jobs)
    res, lines = _run(repo, out, jobs, rerun_changed=True)
    assert res.ok and sorted(res.ran) == ["eval0", "train0"]
    moved = [p for p in out.iterdir() if ".changed-" in p.name]
    assert len(moved) == 2 and any("moved the old folder" in ln for ln in lines)
    assert _records(jobs[0].output_dir)[-1]["epoch"] == 3


def test_a_job_locked_by_another_process_waits(repo, tmp_path):
    out = tmp_path / "out"
    jobs = _jobs(out, n_train=1)[:1]
    (out / ".sweep" / "locks").mkdir(parents=True)
    fd = try_lock(lock_path(str(out / ".sweep"), jobs[0]))
    assert fd is not None and try_lock(lock_path(str(out / ".sweep"), jobs[0])) is None
    threading.Timer(1.0, os.close, args=(fd,)).start()
    t0 = time.time()
    res, lines = _run(repo, out, jobs)
    assert res.ok and time.time() - t0 >= 1.0
    assert any("running in another process" in ln for ln in lines)


def test_cpu_workers_share_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    slots = make_slots(None, 2)
    assert [s.name for s in slots] == ["cpu0", "cpu1"]
    assert all(s.env["CUDA_VISIBLE_DEVICES"] == "" for s in slots)
    assert slots[0].threads == max(1, (os.cpu_count() or 1) // 2)
    with pytest.raises(SweepRefused):
        make_slots(None, 0)
    with pytest.raises(SweepRefused, match="distinct GPU ids"):
        make_slots(["all"], 1)


def test_slurm_arrays_by_dependency_level_and_their_tasks(repo, tmp_path):
    out = tmp_path / "out"
    jobs = _jobs(out)
    hashes = {j.id: FakeResolver.hash(j) for j in jobs}
    lv = levels(jobs)
    assert [[j.id for j in x] for x in lv] == [["train0", "train1", "train2"], ["eval0", "eval1", "eval2"]]
    files = write_scripts(str(tmp_path / "slurm"), str(repo), sys.executable, jobs, hashes,
                          SlurmOptions(max_parallel=2, extra=["--partition=gpu"]))
    level0 = Path(files[0]).read_text()
    assert "#SBATCH --array=0-2%2" in level0 and "#SBATCH --gres=gpu:1" in level0
    assert "#SBATCH --partition=gpu" in level0
    assert f"-m promptot.sweep.task {tmp_path / 'slurm' / 'plan.json'} 0 \"$SLURM_ARRAY_TASK_ID\"" in level0
    submit = (tmp_path / "slurm" / "submit.sh").read_text()
    assert "sbatch --parsable ${prev:+--dependency=afterany:$prev} level0.sbatch" in submit
    assert "level1.sbatch" in submit
    plan = str(tmp_path / "slurm" / "plan.json")
    # an array task whose training has not run refuses; then each runs as Slurm would start it
    with pytest.raises(Exception, match="needs"):
        run_task(plan, 1, 0)
    assert [run_task(plan, 0, i) for i in range(3)] == [0, 0, 0]
    assert [run_task(plan, 1, i) for i in range(3)] == [0, 0, 0]
    assert run_task(plan, 0, 0) == 0 and Path(jobs[0].output_dir, "attempts").read_text() == "x"  # done: skipped
    assert all(job_status(j, hashes[j.id]) == JobStatus.DONE for j in jobs)


def test_submitit_backend(repo, tmp_path):
    pytest.importorskip("submitit")
    out = tmp_path / "out"
    jobs = _jobs(out, n_train=2)
    hashes = {j.id: FakeResolver.hash(j) for j in jobs}
    submitted = submit_with_submitit(str(tmp_path / "sub"), str(repo), sys.executable, jobs, hashes,
                                     SlurmOptions(), cluster="debug")
    assert [len(x) for x in submitted] == [2, 2]
    assert [j.result() for level in submitted for j in level] == [0, 0, 0, 0]
    assert all(job_status(j, hashes[j.id]) == JobStatus.DONE for j in jobs)


def test_check_changed_lists_the_folders(tmp_path):
    j = _jobs(tmp_path, 1)[0]
    os.makedirs(j.output_dir)
    Path(j.output_dir, "results.jsonl").write_text(json.dumps({"split": "test", "epoch": 2,
                                                               "config_hash": "other"}) + "\n")
    with pytest.raises(SweepRefused, match=str(j.output_dir)):
        check_changed([j], {j.id: "mine"}, rerun_changed=False)


def test_an_evaluation_of_retrained_prompts_runs_again(repo, tmp_path):
    out = tmp_path / "out"
    jobs = _jobs(out, n_train=1)
    assert _run(repo, out, jobs)[0].ok
    # the training folder was deleted and is trained again: its evaluation (same config) is stale
    import shutil

    shutil.rmtree(jobs[0].output_dir)
    time.sleep(1.1)  # records carry times to the second
    res, _ = _run(repo, out, jobs)
    assert sorted(res.ran) == ["eval0", "train0"]
    assert Path(jobs[1].output_dir, "attempts").read_text() == "xx"


def test_a_user_error_is_not_retried(repo, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    jobs = _jobs(out, n_train=1)
    Path(jobs[0].output_dir + ".usererror").touch()
    res, lines = _run(repo, out, jobs)
    assert res.failed == ["train0"] and res.blocked == ["eval0"]
    assert Path(jobs[0].output_dir, "attempts").read_text() == "x"
    assert any("user error" in ln and "ERROR: dataset not found" in ln for ln in lines)
