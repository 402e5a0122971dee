"""The same tiny CoOp job under real Dassl and under the built-in engine gives the same few-shot picks,
loss/LR trace, logged accuracy and checkpoint contents. Skipped when Dassl is not importable.

To run it, make Dassl importable (e.g. ``PYTHONPATH=/path/to/Dassl.pytorch:/path/to/its/deps``); the
path can also be given as ``PROMPTOT_TEST_DASSL_PATH``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys


import pytest
import torch

from conftest import ROOT

DASSL_PATH = os.environ.get("PROMPTOT_TEST_DASSL_PATH", "")


def _env(engine: str) -> dict:
    env = dict(os.environ, PROMPTOT_ENGINE=engine)
    extra = [p for p in (DASSL_PATH, env.get("PYTHONPATH", ""), str(ROOT)) if p]
    env["PYTHONPATH"] = os.pathsep.join(extra)
    return env


def _dassl_available() -> bool:
    r = subprocess.run([sys.executable, "-c", "import dassl.engine"], env=_env("dassl"), capture_output=True)
    return r.returncode == 0


pytestmark = pytest.mark.skipif(not _dassl_available(), reason="real Dassl is not importable")


def _strip(line: str) -> str:
    return re.sub(r"time \S+ \(\S+\) data \S+ \(\S+\) |eta \S+", "", line).strip()


def test_same_job_same_results(tmp_path, toy_root, tiny_vit_path):
    runs = {}
    for engine in ("builtin", "dassl"):
        data = tmp_path / f"data_{engine}"
        shutil.copytree(toy_root, data)  # separate few-shot caches: each engine draws its own picks
        out = tmp_path / f"out_{engine}"
        cmd = [sys.executable, str(ROOT / "train.py"), "--root", str(data), "--trainer", "CoOp",
               "--dataset-config-file", str(ROOT / "configs/datasets/image_folder.yaml"),
               "--config-file", str(ROOT / "configs/trainers/CoOp/vit_b16_ep50.yaml"), "--output-dir", str(out),
               "--seed", "1", "DATASET.FOLDER", "toy", "DATASET.NUM_SHOTS", "3", "MODEL.BACKBONE.NAME", "",
               "MODEL.BACKBONE.PATH", tiny_vit_path, "INPUT.SIZE", "(32, 32)", "OPTIM.MAX_EPOCH", "3",
               "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "TRAINER.COOP.PREC", "fp32",
               "TRAINER.COOP.N_CTX", "4", "TRAIN.PRINT_FREQ", "1"]
        r = subprocess.run(cmd, env=_env(engine), capture_output=True, text=True, cwd=str(ROOT))
        assert r.returncode == 0, r.stderr[-3000:]
        log = (out / "log.txt").read_text()
        assert f"promptot engine: {engine}" in log
        fewshot = json.loads(next((data / "toy" / "split_fewshot").glob("shot_3-seed_1.*")).read_text())
        runs[engine] = {
            "trace": [_strip(l) for l in log.splitlines() if l.startswith("epoch [")],
            "result": [l for l in log.splitlines() if l.startswith("* ")],
            "fewshot": fewshot,
            "ckpt": torch.load(out / "prompt_learner" / "model.pth.tar-3", weights_only=False),
        }
    a, b = runs["builtin"], runs["dassl"]
    assert a["fewshot"] == b["fewshot"]
    assert a["trace"] == b["trace"] and len(a["trace"]) > 0
    assert a["result"] == b["result"]
    assert set(a["ckpt"]) == set(b["ckpt"])
    assert torch.equal(a["ckpt"]["state_dict"]["ctx"], b["ckpt"]["state_dict"]["ctx"])
    assert a["ckpt"]["epoch"] == b["ckpt"]["epoch"] == 3
