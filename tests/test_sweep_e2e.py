"""End to end on the embedded default (mini CLIP, FashionMNISTShift): one sweep of two trainers x two shot counts x
two seeds for few-shot, plus base-to-new (train on base classes, test on new ones) for the same trainers and seeds,
run by ``python -m promptot.sweep`` on two CPU workers, killed with SIGKILL half-way, restarted, completed without
rerunning finished jobs; then the report's tables and figures, checked against the results records.

Needs the Debian package dataset-fashion-mnist (skipped otherwise); about 1-2 minutes on 2 idle cores.
"""
from __future__ import annotations

import csv
import importlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from conftest import ROOT


def _fmnist_available() -> bool:
    for module in ("promptot.miniclip.data", "promptot.datasets.fmnist"):
        try:
            return bool(importlib.import_module(module).fmnist_available())
        except (ImportError, AttributeError):
            continue
    return False


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not _fmnist_available(), reason="apt-get install dataset-fashion-mnist")]

TRAINERS, SHOTS, SEEDS, B2N_SHOTS = ("CoOp", "PLOT"), (2, 4), (1, 2), 2
N_JOBS = len(TRAINERS) * len(SEEDS) * (len(SHOTS) + 2)  # few-shot runs; base-to-new training + new-class evaluation


def _history(out: Path) -> list:
    path = out / ".sweep" / "history.jsonl"
    if not path.is_file():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return events


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def test_sweep_killed_half_way_restarts_and_reports(tmp_path):
    out, data = tmp_path / "runs", tmp_path / "data"
    cmd = [sys.executable, "-m", "promptot.sweep", "fewshot", "base2new", "--trainers", *TRAINERS,
           "--datasets", "fashion_mnist_shift", "--shots", "fewshot=" + ",".join(map(str, SHOTS)),
           f"base2new={B2N_SHOTS}", "--seeds", *map(str, SEEDS),
           "--config", "miniclip", "--param", "nctx=4", "--data-root", str(data), "--output-root", str(out),
           "--workers", "2", "--preload", "--opts", "OPTIM.MAX_EPOCH", "2", "TRAIN.CHECKPOINT_FREQ", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    log1 = open(tmp_path / "run1.log", "w")
    runner = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log1, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    def half_way_with_jobs_running() -> bool:
        events = _history(out)
        ended = {e["job"] for e in events if e["event"] == "end"}
        running = {e["job"] for e in events if e["event"] == "start"} - ended
        return len(ended) >= N_JOBS // 3 and bool(running)

    while not half_way_with_jobs_running():
        assert runner.poll() is None, (tmp_path / "run1.log").read_text()
        assert time.time() < deadline, "the sweep made no progress"
        time.sleep(0.2)
    runner.send_signal(signal.SIGKILL)
    assert runner.wait() == -signal.SIGKILL
    before = _history(out)
    done_before = {e["job"] for e in before if e["event"] == "end" and e["status"] == "done"}
    started = {e["job"]: e["pid"] for e in before if e["event"] == "start"}
    interrupted = {j for j in started if j not in done_before}
    assert interrupted, "the kill should land while jobs run (two workers)"
    finished_unrecorded = {j for j in interrupted if (out / j / "results.jsonl").is_file()}  # ended, not yet logged
    had_checkpoint = {j for j in interrupted - finished_unrecorded
                      if list((out / j).glob("prompt_learner/model.pth.tar-*"))}
    # the jobs died with the runner (PR_SET_PDEATHSIG)
    t0 = time.time()
    while any(_alive(started[j]) for j in interrupted) and time.time() - t0 < 10:
        time.sleep(0.1)
    assert not any(_alive(started[j]) for j in interrupted)

    restart = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert restart.returncode == 0, restart.stdout + restart.stderr
    after = _history(out)[len(before):]
    plan = next(e for e in after if e["event"] == "plan")
    assert plan["jobs"] == N_JOBS and plan["done"] >= len(done_before)
    restarted = [e["job"] for e in after if e["event"] == "start"]
    assert not set(restarted) & (done_before | finished_unrecorded), "a finished job was run again"
    assert len(restarted) == len(set(restarted)) == N_JOBS - plan["done"]  # each remaining job once, no retry
    assert {e["job"] for e in after if e["event"] == "end" and e["status"] == "done"} == set(restarted)
    assert f"{N_JOBS} jobs: {plan['done']} already done (skipped)" in restart.stdout

    # every job folder holds exactly one test record (finished jobs were not rerun), with the job's hashes
    records = {}
    for path in out.rglob("results.jsonl"):
        recs = [json.loads(x) for x in path.read_text().splitlines()]
        tests = [r for r in recs if r["split"] == "test"]
        assert len(tests) == 1, path
        records[path.parent] = tests[0]
    assert len(records) == N_JOBS
    assert all(r["config_hash"] and r["group_hash"] for r in records.values())
    # a job interrupted after it saved a checkpoint resumed from it instead of starting over
    for job in had_checkpoint:
        assert any("Resuming training" in p.read_text() or "already finished" in p.read_text()
                   for p in (out / job).glob("log.txt-*")), job

    # the report: tables and figures, values as computed from the records
    from promptot.report.__main__ import main as report_main

    assert report_main([str(out), "--protocol", "fewshot", "--protocol", "base2new"]) == 0
    rep = out / "report"
    for name in ("fewshot", "base2new", "ot_diagnostics"):
        for ext in ("png", "svg"):
            assert (rep / f"{name}.{ext}").stat().st_size > 1000, name
    fewshot = {(r["method"], r["setting"]): r for r in csv.DictReader(open(rep / "fewshot.csv"))
               if r["dataset"] == "FashionMNISTShift"}
    by_cell = defaultdict(list)
    b2n = defaultdict(list)
    for r in records.values():
        acc = r["metrics"]["accuracy"]
        if r["subsample_classes"] == "all":
            by_cell[(r["method"], f"{r['num_shots']} shots")].append(acc)
        else:
            b2n[(r["method"], r["num_shots"], r["subsample_classes"])].append(acc)
    assert len(by_cell) == len(TRAINERS) * len(SHOTS)
    for key, accs in by_cell.items():
        mean = sum(accs) / len(accs)
        std = math.sqrt(sum((a - mean) ** 2 for a in accs) / len(accs))
        row = fewshot[key]
        assert row["status"] == "ok" and int(row["n_seeds"]) == len(SEEDS)
        assert float(row["mean"]) == pytest.approx(mean, abs=1e-3) and float(row["std"]) == pytest.approx(std, abs=1e-3)
    # base-to-new: Base and New means over seeds, H from those means
    b2n_csv = {(r["method"], int(r["shots"]), r["setting"]): r for r in csv.DictReader(open(rep / "base2new.csv"))
               if r["dataset"] == "FashionMNISTShift"}
    for method in TRAINERS:
        for shots in (B2N_SHOTS,):
            b = sum(b2n[(method, shots, "base")]) / len(SEEDS)
            n = sum(b2n[(method, shots, "new")]) / len(SEEDS)
            assert float(b2n_csv[(method, shots, "base")]["mean"]) == pytest.approx(b, abs=1e-3)
            assert float(b2n_csv[(method, shots, "new")]["mean"]) == pytest.approx(n, abs=1e-3)
            assert int(b2n_csv[(method, shots, "new")]["n_seeds"]) == len(SEEDS)
            assert float(b2n_csv[(method, shots, "H")]["mean"]) == pytest.approx(2 * b * n / (b + n), abs=1e-3)
    report_md = (rep / "report.md").read_text()
    assert "Few-shot classification" in report_md and "Base-to-new generalisation" in report_md
