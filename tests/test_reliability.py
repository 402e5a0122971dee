"""Nothing lost, nothing silent. Runs are killed with SIGKILL (``os.kill`` on a ``train.py`` subprocess) mid-epoch,
mid-checkpoint-write and mid-evaluation, then restarted: the restarted run ends with the same learned tensors (bit for
bit) and the same accuracy as an uninterrupted run. Plus: run locks, evaluations that keep the training config,
stated shot rules, recorded effective values, clean errors, non-finite guards and the deterministic mode."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, base_args, run_cli, tiny_opts

COOP = "configs/trainers/CoOp/vit_b16_ep50.yaml"
OPTS = ["TRAINER.COOP.N_CTX", "4", "TRAINER.COOP.PREC", "fp32", "TRAIN.CHECKPOINT_FREQ", "1", "OPTIM.NAME", "adam",
        "OPTIM.LR", "0.01"]

# Child bootstrap: runs train.py after installing a pause at one point (test-only instrumentation, never in the
# library). At the point it writes MARKER and sleeps, so the parent can SIGKILL it exactly there.
BOOT = r"""
import os, sys, time, runpy
sys.path.insert(0, os.getcwd())
import torch
import promptot.fileio as fio
import promptot.trainer as pt
where, n = os.environ["PAUSE"].split(":")
n = int(n)
marker = os.environ["MARKER"]

def pause():
    open(marker, "w").close()
    time.sleep(120)

if where == "step":  # mid-epoch n, at its second batch
    orig_fb = pt.PromptTrainer.forward_backward
    def fb(self, batch):
        if self.epoch + 1 == n and self.batch_idx == 1:
            pause()
        return orig_fb(self, batch)
    pt.PromptTrainer.forward_backward = fb
elif where == "save":  # half-way through writing the checkpoint of epoch n
    orig_aw = fio.atomic_write
    def aw(path, write):
        if str(path).endswith(f"model.pth.tar-{n}"):
            import io
            buf = io.BytesIO(); write(buf); data = buf.getvalue()
            return orig_aw(path, lambda f: (f.write(data[: len(data) // 2]), f.flush(), os.fsync(f.fileno()), pause()))
        return orig_aw(path, write)
    fio.atomic_write = aw
elif where == "eval":  # during the final evaluation, after training finished
    orig_test = pt.PromptTrainer.test
    def test(self, split=None):
        if split is None and getattr(self, "_trained_epochs", False):
            pause()
        return orig_test(self, split)
    pt.PromptTrainer.test = test
sys.argv = ["train.py"] + sys.argv[1:]
runpy.run_path("train.py", run_name="__main__")
"""


def args_for(toy_root, out, clip, epochs=4, extra=()):
    return base_args(toy_root, out, "CoOp", COOP, clip) + tiny_opts(clip, epochs=epochs) + OPTS + list(extra)


def run(argv, env=None, timeout=600):
    r = subprocess.run([sys.executable, "train.py"] + argv, cwd=str(ROOT), capture_output=True, text=True,
                       env=env, timeout=timeout)
    return r


def run_and_kill(argv, where: str, tmp_path: Path):
    marker = tmp_path / f"paused-{where.replace(':', '-')}"
    env = dict(os.environ, PAUSE=where, MARKER=str(marker))
    p = subprocess.Popen([sys.executable, "-c", BOOT] + argv, cwd=str(ROOT), env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not marker.exists():
        if p.poll() is not None:
            raise AssertionError(f"the child ended before pausing at {where}: {p.stderr.read()[-2000:]}")
        if time.time() - t0 > 300:
            p.kill()
            raise AssertionError(f"the child never reached {where}")
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL


def final_state(out: Path):
    ck = torch.load(out / "prompt_learner" / "model.pth.tar-4", weights_only=False)
    recs = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    test = [r for r in recs if r["split"] == "test"]
    return ck["state_dict"]["ctx"], test[-1]["metrics"]["accuracy"], recs


@pytest.fixture(scope="module")
def uninterrupted(toy_root, tiny_vit_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    r = run(args_for(toy_root, out, tiny_vit_path))
    assert r.returncode == 0, r.stderr[-3000:]
    return final_state(out)


@pytest.mark.parametrize("where", ["step:3", "save:3", "eval:0"])
def test_killed_run_restarts_to_the_same_result(where, uninterrupted, toy_root, tiny_vit_path, tmp_path):
    out = tmp_path / "run"
    argv = args_for(toy_root, out, tiny_vit_path)
    run_and_kill(argv, where, tmp_path)
    if where.startswith("save"):
        # the half-written file never replaced anything: epoch 2's checkpoint and the pointer to it are intact
        assert (out / "prompt_learner" / "checkpoint").read_text().strip() == "model.pth.tar-2"
        assert not (out / "prompt_learner" / "model.pth.tar-3").exists()
    r = run(argv)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "taking over the lock" in r.stdout  # the killed run's lock was stale
    ctx, acc, recs = final_state(out)
    ref_ctx, ref_acc, _ = uninterrupted
    assert torch.equal(ctx, ref_ctx), "the resumed run must end with the uninterrupted run's prompts, bit for bit"
    assert acc == ref_acc
    assert sum(1 for r in recs if r["split"] == "test") == 1, "no evaluation is recorded twice or half"


def test_second_writer_is_refused_while_the_first_runs(toy_root, tiny_vit_path, tmp_path):
    out = tmp_path / "run"
    marker = tmp_path / "paused"
    env = dict(os.environ, PAUSE="step:1", MARKER=str(marker))
    p = subprocess.Popen([sys.executable, "-c", BOOT] + args_for(toy_root, out, tiny_vit_path), cwd=str(ROOT),
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.time()
        while not marker.exists() and time.time() - t0 < 300 and p.poll() is None:
            time.sleep(0.05)
        code, _, err = run_cli(args_for(toy_root, out, tiny_vit_path))
        assert code == 2 and f"pid {p.pid}" in err and "one writer per run directory" in err
    finally:
        p.kill()
        p.wait()


def test_eval_only_keeps_the_training_config(toy_root, tiny_vit_path, tmp_path):
    out = tmp_path / "run"
    code, _, err = run_cli(args_for(toy_root, out, tiny_vit_path, epochs=1))
    assert code == 0, err
    before = (out / "config.yaml").read_text()
    code, _, err = run_cli(base_args(toy_root, out, "CoOp", COOP, tiny_vit_path) +
                           ["--eval-only", "--model-dir", str(out), "--load-epoch", "1"] +
                           tiny_opts(tiny_vit_path) + OPTS + ["DATASET.SUBSAMPLE_CLASSES", "new"])
    assert code == 0, err
    assert (out / "config.yaml").read_text() == before
    evals = list(out.glob("config-eval-*.yaml"))
    assert len(evals) == 1 and "SUBSAMPLE_CLASSES: new" in evals[0].read_text()


def test_shot_rules_are_stated_and_recorded(toy_root, tiny_vit_path, tmp_path):
    code, log, err = run_cli(args_for(toy_root, tmp_path / "all", tiny_vit_path, epochs=1))
    assert code == 0, err
    assert "Shots: all training images (24 for 4 classes" in log
    rec = json.loads((tmp_path / "all" / "results.jsonl").read_text().splitlines()[-1])
    assert rec["shots_used"] == {"requested": -1, "used": "all"}
    code, log, err = run_cli(args_for(toy_root, tmp_path / "ten", tiny_vit_path, epochs=1,
                                      extra=["DATASET.NUM_SHOTS", "10"]))
    assert code == 0, err
    assert "4 class(es) have fewer training images than DATASET.NUM_SHOTS 10" in log and "blue (6)" in log
    rec = json.loads((tmp_path / "ten" / "results.jsonl").read_text().splitlines()[-1])
    assert rec["shots_used"]["short_classes"] == {"blue": 6, "green": 6, "red": 6, "yellow": 6}
    code, _, err = run_cli(args_for(toy_root, tmp_path / "strict", tiny_vit_path, epochs=1,
                                    extra=["DATASET.NUM_SHOTS", "10", "DATASET.STRICT_SHOTS", "True"]))
    assert code == 2 and "STRICT_SHOTS" in err and "blue (6)" in err


def test_ctx_init_replacing_n_ctx_is_recorded(toy_root, tiny_vit_path, tmp_path):
    code, log, err = run_cli(args_for(toy_root, tmp_path / "r", tiny_vit_path, epochs=1,
                                      extra=["TRAINER.COOP.CTX_INIT", "a photo of a", "TRAINER.COOP.N_CTX", "16"]))
    assert code == 0, err
    assert "Note: TRAINER.COOP.N_CTX is 4 in this run" in log
    assert "# effective: TRAINER.COOP.N_CTX: 4 (CTX_INIT has 4 words" in (tmp_path / "r" / "config.yaml").read_text()


def test_clean_errors_for_missing_root_and_unwritable_output(toy_root, tiny_vit_path, tmp_path):
    argv = args_for(toy_root, tmp_path / "o", tiny_vit_path)
    code, _, err = run_cli(argv[2:])  # without --root
    assert code == 2 and "--root" in err and "Traceback" not in err
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, _, err = run_cli(args_for(toy_root, blocker / "out", tiny_vit_path))
    assert code == 2 and "Cannot write to the output directory" in err and not (blocker.is_dir())


def test_nonfinite_guard_skips_and_counts(toy_root, tiny_vit_path, tmp_path):
    out = tmp_path / "r"
    code, log, err = run_cli(args_for(toy_root, out, tiny_vit_path, epochs=1,
                                      extra=["OPTIM.NAME", "sgd", "OPTIM.LR", "1e38", "OPTIM.WARMUP_EPOCH", "0",
                                             "TRAIN.NONFINITE", "skip", "TRAIN.PRINT_FREQ", "1"]))
    assert code == 0, err
    assert "WARNING: skipping the batch at epoch 1, batch 2" in log and "nonfinite_skipped" in log


def test_deterministic_mode_gives_identical_bytes(toy_root, tiny_vit_path, tmp_path):
    got = []
    for i in range(2):
        out = tmp_path / f"r{i}"
        code, _, err = run_cli(args_for(toy_root, out, tiny_vit_path, epochs=2, extra=["TRAIN.DETERMINISTIC", "True"]))
        assert code == 0, err
        got.append(((out / "prompt_learner" / "model.pth.tar-2").read_bytes(),
                    json.loads((out / "results.jsonl").read_text().splitlines()[-1])["metrics"]["accuracy"]))
    torch.use_deterministic_algorithms(False)
    a = torch.load(__import__("io").BytesIO(got[0][0]), weights_only=False)["state_dict"]["ctx"]
    b = torch.load(__import__("io").BytesIO(got[1][0]), weights_only=False)["state_dict"]["ctx"]
    assert a.numpy().tobytes() == b.numpy().tobytes() and got[0][1] == got[1][1]
