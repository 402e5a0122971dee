"""End-to-end regression on real images: the mini CLIP on FashionMNISTShift (inverted + recoloured
Fashion-MNIST, a domain it never saw). CoOp, ALIGN, MaPLe, IVLP, VPT, PromptSRC, DPT, VLP, KgCoOp, ProGrad and CoPL
must reach zero-shot CLIP plus margins set from measurements (README, "Measured on the embedded default", "MaPLe-style
deep prompting", "DPT" and "CoPL, KgCoOp and ProGrad"); base-to-new runs end to end (MaPLe's through
scripts/base2new.sh), and KgCoOp, ProGrad and CoPL keep measured base gains and new-class losses; every other
trainer's accuracy after a short training is recorded (printed in the test summary) and above chance.

These runs take a few minutes on 2 cores; ``-m "not slow"`` deselects them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run_cli

fm = pytest.importorskip("promptot.datasets.fmnist")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not fm.fmnist_available(), reason="apt-get install dataset-fashion-mnist"),
]

CHANCE = 10.0  # 10 classes
# Margins over zero-shot, in accuracy points, set below the smallest gain measured over seeds 1-3 with
# `python scripts/demo.py --seed S` (zero-shot 49.4%; CoOp 54.5 / 52.3 / 52.2%, i.e. +5.1 / +2.9 / +2.8;
# ALIGN 58.0 / 58.2 / 58.9%, i.e. +8.6 / +8.8 / +9.5), and with `python train.py ... --config-file
# configs/trainers/<T>/miniclip.yaml DATASET.NUM_SHOTS 16 --seed S` (README, "MaPLe-style deep prompting"): MaPLe
# 57.0 / 55.7 / 57.4 (+7.6 / +6.3 / +8.0), IVLP 57.6 / 55.4 / 56.8 (+8.2 / +6.0 / +7.4), VPT 55.6 / 54.9 / 55.5
# (+6.2 / +5.5 / +6.1), PromptSRC 53.0 / 53.0 / 53.8 (+3.6 / +3.6 / +4.4); with the same command (README, "DPT") and
# zero-shot 49.36%: DPT 56.86 / 56.34 / 59.68 (+7.5 / +7.0 / +10.3), VLP 54.92 / 54.74 / 55.02 (+5.6 / +5.4 / +5.7).
# The test runs seed 1.
# KgCoOp, ProGrad, CoPL (their configs/trainers/<Name>/miniclip.yaml, `train.py ... DATASET.NUM_SHOTS 16`,
# zero-shot 49.36%): KgCoOp 51.54 / 51.28 / 50.46 (+2.18 / +1.92 / +1.10); ProGrad 50.36 / 50.28 / 50.50
# (+1.00 / +0.92 / +1.14); CoPL 50.74 / 48.60 / 51.16 (+1.38 / -0.76 / +1.80: with CoCoOp's 10-epoch recipe the
# image-conditioned prompts gain little on this domain and fall below zero-shot on seed 2, as CoCoOp's do, 50.52 /
# 47.90 on seeds 1 / 2; so CoPL's margin only bounds its loss).
MARGIN = {"CoOp": 2.0, "ALIGN": 6.0, "MaPLe": 5.0, "IVLP": 5.0, "VPT": 4.0, "PromptSRC": 2.5, "DPT": 6.0, "VLP": 4.5,
          "KgCoOp": 1.0, "ProGrad": 0.5, "CoPL": -1.0}
RECORDED: dict = {}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fmnist")


def run(data_root: Path, out: Path, trainer: str, config: str, *extra: str, dataset="fashion_mnist_shift") -> dict:
    argv = ["--root", str(data_root), "--seed", "1", "--trainer", trainer,
            "--dataset-config-file", str(ROOT / f"configs/datasets/{dataset}.yaml"),
            "--config-file", str(ROOT / config), "--output-dir", str(out)] + list(extra)
    code, log, err = run_cli(argv)
    assert code == 0, err
    rec = json.loads((out / "results.jsonl").read_text().splitlines()[-1])
    assert rec["split"] == "test"
    return rec


@pytest.fixture(scope="module")
def zeroshot(data_root, tmp_path_factory) -> float:
    rec = run(data_root, tmp_path_factory.mktemp("zs"), "ZeroshotCLIP", "configs/trainers/CoOp/miniclip.yaml",
              "--eval-only")
    RECORDED["ZeroshotCLIP"] = rec["metrics"]["accuracy"]
    return rec["metrics"]["accuracy"]


@pytest.mark.parametrize("trainer", list(MARGIN))
def test_prompt_learning_beats_zeroshot(trainer, zeroshot, data_root, tmp_path):
    rec = run(data_root, tmp_path / trainer, trainer, f"configs/trainers/{trainer}/miniclip.yaml",
              "DATASET.NUM_SHOTS", "16")
    acc = rec["metrics"]["accuracy"]
    RECORDED[trainer] = acc
    assert acc >= zeroshot + MARGIN[trainer], f"{trainer} {acc:.1f}% vs zero-shot {zeroshot:.1f}%"


def test_base_to_new_end_to_end(data_root, tmp_path):
    base = run(data_root, tmp_path / "base", "CoOp", "configs/trainers/CoOp/miniclip.yaml", "DATASET.NUM_SHOTS", "16",
               "DATASET.SUBSAMPLE_CLASSES", "base", "OPTIM.MAX_EPOCH", "20")
    new = run(data_root, tmp_path / "new", "CoOp", "configs/trainers/CoOp/miniclip.yaml", "--eval-only",
              "--model-dir", str(tmp_path / "base"), "--load-epoch", "20", "DATASET.NUM_SHOTS", "16",
              "DATASET.SUBSAMPLE_CLASSES", "new")
    assert base["num_classes"] == new["num_classes"] == 5
    assert base["subsample_classes"] == "base" and new["subsample_classes"] == "new"
    b, n = base["metrics"]["accuracy"], new["metrics"]["accuracy"]
    RECORDED["CoOp base"], RECORDED["CoOp new"] = b, n
    RECORDED["CoOp H"] = 2 * b * n / (b + n)
    assert b > 100 / 5 and n > 100 / 5


def test_maple_base_to_new_through_the_script(data_root, tmp_path):
    """scripts/base2new.sh end to end for MaPLe (seed 1, 10 epochs): train on the base classes, evaluate the saved
    prompts on the new classes, print the Base / New / H summary."""
    env = dict(os.environ, DATA=str(data_root), OUT=str(tmp_path), SEEDS="1", OMP_WAIT_POLICY="PASSIVE",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    r = subprocess.run(["bash", "scripts/base2new.sh", "MaPLe", "miniclip", "fashion_mnist_shift", "10",
                        "OPTIM.MAX_EPOCH", "10"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    tail = "fashion_mnist_shift/shots_16/MaPLe/miniclip/seed1/results.jsonl"
    base, new = (json.loads((tmp_path / "base2new" / d / tail).read_text().splitlines()[-1])
                 for d in ("train_base", "test_new"))
    assert base["num_classes"] == new["num_classes"] == 5 and new["model_dir"] and new["epoch"] == 10
    b, n = base["metrics"]["accuracy"], new["metrics"]["accuracy"]
    RECORDED["MaPLe base"], RECORDED["MaPLe new"] = b, n
    assert b > 100 / 5 and n > 100 / 5 and "MaPLe" in r.stdout


# Base-to-new (16 shots, train on the 5 base classes with the miniclip.yaml, evaluate its last epoch on the 5 new
# ones; zero-shot base 61.68, new 56.40), seeds 1 / 2 / 3, as (base - zero-shot base, new - zero-shot new):
#   KgCoOp  (+1.52, +0.08) (+0.48, -0.32) (+0.60, +0.24)
#   ProGrad (+1.36, -0.20) (+0.48, -0.04) (+0.28,  0.00)
#   CoPL    (+3.24, +0.20) (+0.24, -1.28) (+0.20, -3.16)
# The margins: (least base gain, largest new-class loss) allowed, below / beyond the measured extremes.
B2N_MARGIN = {"KgCoOp": (0.2, -0.6), "ProGrad": (0.1, -0.4), "CoPL": (0.1, -3.5)}


@pytest.fixture(scope="module")
def zeroshot_base_new(data_root, tmp_path_factory) -> dict:
    out = {}
    for sub in ("base", "new"):
        rec = run(data_root, tmp_path_factory.mktemp("zs_" + sub), "ZeroshotCLIP",
                  "configs/trainers/CoOp/miniclip.yaml", "--eval-only", "DATASET.SUBSAMPLE_CLASSES", sub)
        out[sub] = RECORDED[f"ZeroshotCLIP {sub}"] = rec["metrics"]["accuracy"]
    return out


@pytest.mark.parametrize("trainer", list(B2N_MARGIN))
def test_base_to_new_margins(trainer, zeroshot_base_new, data_root, tmp_path):
    config = f"configs/trainers/{trainer}/miniclip.yaml"
    base = run(data_root, tmp_path / "base", trainer, config, "DATASET.NUM_SHOTS", "16",
               "DATASET.SUBSAMPLE_CLASSES", "base")
    new = run(data_root, tmp_path / "new", trainer, config, "--eval-only", "--model-dir", str(tmp_path / "base"),
              "--load-epoch", str(base["epoch"]), "DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "new")
    b, n = base["metrics"]["accuracy"], new["metrics"]["accuracy"]
    RECORDED[f"{trainer} base"], RECORDED[f"{trainer} new"] = b, n
    min_base_gain, min_new_change = B2N_MARGIN[trainer]
    assert b >= zeroshot_base_new["base"] + min_base_gain, f"{trainer} base {b:.2f}% vs {zeroshot_base_new['base']}%"
    assert n >= zeroshot_base_new["new"] + min_new_change, f"{trainer} new {n:.2f}% vs {zeroshot_base_new['new']}%"


OTHERS = {
    "ZeroshotCLIP2": ("configs/trainers/CoOp/miniclip.yaml", ["--eval-only"]),
    "CoCoOp": ("configs/trainers/CoCoOp/miniclip.yaml", ["DATASET.NUM_SHOTS", "16", "OPTIM.MAX_EPOCH", "2"]),
    "PLOT": ("configs/trainers/PLOT/miniclip.yaml", ["DATASET.NUM_SHOTS", "16", "OPTIM.MAX_EPOCH", "10"]),
    "PLOTPP": ("configs/trainers/PLOTPP/miniclip.yaml", ["DATASET.NUM_SHOTS", "16", "OPTIM.MAX_EPOCH", "10"]),
}


@pytest.mark.parametrize("trainer", list(OTHERS))
def test_other_trainers_above_chance(trainer, data_root, tmp_path):
    config, extra = OTHERS[trainer]
    rec = run(data_root, tmp_path / trainer, trainer, config, *extra)
    RECORDED[trainer] = rec["metrics"]["accuracy"]
    assert rec["metrics"]["accuracy"] > CHANCE


def pytest_terminal_summary_lines() -> list:
    return [f"{k}: {v:.1f}%" for k, v in RECORDED.items()]
