"""Data-parallel training: ``torchrun --nproc_per_node=2 train.py ...`` on CPU (gloo) follows the single-process
run — same global batches, same loss trajectory, same final prompts (1e-5) and the same accuracy — with rank 0 alone
writing the log, checkpoints and results record, and evaluation sharded over the processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, base_args, tiny_opts

OPTS = ["TRAINER.COOP.N_CTX", "4", "TRAINER.COOP.PREC", "fp32", "OPTIM.NAME", "adam", "OPTIM.LR", "0.01",
        "INPUT.TRANSFORMS", "['normalize']", "TRAIN.PRINT_FREQ", "1", "DATALOADER.TEST.BATCH_SIZE", "5"]


def _losses(out: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    return [e.value for e in acc.Scalars("train/loss")]


def _run(cmd, out: Path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, cwd=str(ROOT), capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    ck = torch.load(out / "prompt_learner" / "model.pth.tar-3", weights_only=False)
    rec = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    return ck["state_dict"]["ctx"], rec, r


@pytest.mark.parametrize("batch", [4, 6])
def test_two_processes_follow_the_single_process_run(batch, toy_root, tiny_vit_path, tmp_path):
    def argv(out):
        return base_args(toy_root, out, "CoOp", "configs/trainers/CoOp/vit_b16_ep50.yaml", tiny_vit_path) + \
            tiny_opts(tiny_vit_path, epochs=3, batch=batch) + OPTS

    one, two = tmp_path / "one", tmp_path / "two"
    ctx1, rec1, _ = _run([sys.executable, "train.py"] + argv(one), one)
    ctx2, rec2, r = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "train.py"] + argv(two), two)
    assert "Distributed: 2 processes, global batch" in (two / "log.txt").read_text()
    l1, l2 = _losses(one), _losses(two)
    assert len(l1) == len(l2) == 3 * (24 // batch)
    torch.testing.assert_close(torch.tensor(l2), torch.tensor(l1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ctx2, ctx1, rtol=1e-5, atol=1e-5)
    test1 = [x for x in rec1 if x["split"] == "test"]
    test2 = [x for x in rec2 if x["split"] == "test"]
    assert len(test2) == 1, "rank 0 alone writes the results record"
    assert test2[0]["metrics"]["accuracy"] == test1[0]["metrics"]["accuracy"]
    assert "* total: 12" in (two / "log.txt").read_text()  # every test item evaluated once, over both shards
    assert not (two / ".promptot.lock").exists()
