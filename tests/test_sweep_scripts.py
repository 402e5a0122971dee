"""The shell scripts are thin wrappers over the protocol file and the runner: each one dry-runs, and those with a
reference interface print the reference scripts' commands."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT
from test_sweep_protocols import DATA, cocoop_b2n, cocoop_xd, coop_eval, coop_main, zeroshot

# minimal arguments of each script (the generic <protocol>.sh ones take optional datasets)
ARGS = {
    "coop/main.sh": ["caltech101", "rn50", "end", "16", "16", "False"], "coop/eval.sh": ["imagenetv2", "vit_b16_ep50"],
    "coop/zeroshot.sh": ["eurosat", "vit_b16"], "cocoop/base2new_train.sh": ["dtd", "1"],
    "cocoop/base2new_test.sh": ["dtd", "1"], "cocoop/xd_train.sh": ["1"], "cocoop/xd_test.sh": ["dtd", "1"],
    "plot/main.sh": ["dtd", "4"], "plot/fewshot.sh": ["dtd"], "plotpp/main_visiononly.sh": ["dtd", "4"],
    "plotpp/main_joint.sh": ["dtd", "4"], "align/fewshot.sh": ["dtd"],
    "base2new.sh": ["CoCoOp", "vit_b16_c4_ep10_batch1_ctxv1", "dtd", "10"],
    "maple/base2new_train_maple.sh": ["dtd", "1"], "maple/base2new_test_maple.sh": ["dtd", "1"],
    "maple/xd_train_maple.sh": ["imagenet", "1"], "maple/xd_test_maple.sh": ["dtd", "1"],
    "copl/xd_caltech101.sh": [],
}
SCRIPTS = sorted(str(p.relative_to(ROOT / "scripts")) for p in (ROOT / "scripts").rglob("*.sh")
                 if p.name not in ("install.sh", "_sweep.sh", "finished.sh"))


def dry(script: str, *args: str, cwd=ROOT, **env_extra: str) -> list:
    env = dict(os.environ, DATA=DATA, SWEEP_ARGS="--dry-run", PYTHON=sys.executable, **env_extra)
    if "OUT" not in env_extra:
        env.pop("OUT", None)
    r = subprocess.run(["bash", str(ROOT / "scripts" / script), *args], capture_output=True, text=True, env=env,
                       cwd=str(cwd))
    assert r.returncode == 0, r.stderr
    return [shlex.split(ln) for ln in r.stdout.splitlines() if ln.startswith("python ")]


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_expands_its_protocol(script):
    assert dry(script, *ARGS.get(script, ["dtd"]))


def test_reference_interfaces_print_the_reference_commands():
    assert dry("coop/main.sh", "caltech101", "rn50", "middle", "16", "4", "True") == \
        [coop_main("caltech101", "rn50", "middle", 16, 4, "True", s) for s in (1, 2, 3)]
    assert dry("cocoop/base2new_train.sh", "dtd", "2") == [cocoop_b2n("dtd", 2, "base")]
    assert dry("cocoop/base2new_test.sh", "dtd", "2") == [cocoop_b2n("dtd", 2, "new")]
    assert dry("cocoop/xd_train.sh", "3") == [cocoop_xd("imagenet", 3)]
    assert dry("cocoop/xd_test.sh", "eurosat", "3") == [cocoop_xd("eurosat", 3)]
    assert dry("coop/zeroshot.sh", "dtd", "rn50") == [zeroshot("dtd", "rn50")]
    cmds = dry("coop/eval.sh", "imagenet_sketch", "vit_b16_ep50")
    assert [coop_eval("imagenet_sketch", "vit_b16_ep50", s) for s in (1, 2, 3)] == [c for c in cmds if "--eval-only" in c]


def test_maple_scripts_use_its_configs_and_load_epochs():
    cfg, xcfg = "vit_b16_c2_ep5_batch4_2ctx", "vit_b16_c2_ep5_batch4_2ctx_cross_datasets"
    (test,) = dry("maple/base2new_test_maple.sh", "eurosat", "2")
    tail = f"eurosat/shots_16/MaPLe/{cfg}/seed2"
    assert test[test.index("--model-dir") + 1] == f"output/base2new/train_base/{tail}"
    assert test[test.index("--output-dir") + 1] == f"output/base2new/test_new/{tail}"
    assert test[test.index("--load-epoch") + 1] == "5"  # baselines.md §6: LOADEP=5
    (train,) = dry("maple/xd_train_maple.sh", "imagenet", "1")
    assert train[train.index("--output-dir") + 1] == f"output/imagenet/MaPLe/{xcfg}_16shots/seed1"
    (xd,) = dry("maple/xd_test_maple.sh", "imagenet_r", "1")
    assert xd[xd.index("--load-epoch") + 1] == "2"  # the cross-dataset config trains 2 epochs


def test_dpt_family_uses_the_imagenet_warmup_config_on_imagenet_only():
    def config_of(cmd):
        return cmd[cmd.index("--config-file") + 1]
    cmds = dry("dpt/fewshot.sh", "imagenet", "dtd")
    assert {config_of(c) for c in cmds if "configs/datasets/imagenet.yaml" in c} == \
        {"configs/trainers/DPT/vit_b32_deep_cross_datasets.yaml"}
    assert {config_of(c) for c in cmds if "configs/datasets/dtd.yaml" in c} == {"configs/trainers/DPT/vit_b32_deep.yaml"}
    assert len(cmds) == 2 * 5 * 3
    vpt = dry("vpt/base2new_dpt.sh", "dtd")
    assert vpt[0][vpt[0].index("--trainer") + 1] == "VPT"
    assert config_of(vpt[0]) == "configs/trainers/VPT/vit_b32_deep_dpt.yaml"
    assert vpt[1][vpt[1].index("--load-epoch") + 1] == "60"  # the launch script's MAX_EPOCH


def test_a_trainer_without_an_entry_runs_with_config():
    env = dict(SEEDS="1")
    cmds = dry("base2new.sh", "MaPLe", "miniclip", "fashion_mnist_shift", "10", "OPTIM.MAX_EPOCH", "10", **env)
    assert len(cmds) == 2 and cmds[1][cmds[1].index("--load-epoch") + 1] == "10"
    assert "configs/trainers/MaPLe/miniclip.yaml" in cmds[0]


def test_extra_options_are_passed_last(tmp_path):
    cmds = dry("plot/fewshot.sh", "dtd", "2", "TRAINER.PLOT.EPS", "0.05")
    assert all(c[-2:] == ["TRAINER.PLOT.EPS", "0.05"] and "OP_N2/" in c[c.index("--output-dir") + 1] for c in cmds)
    cmds = dry("coop/xd.sh", "dtd", "--", "OPTIM.MAX_EPOCH", "1")
    assert all(c[-2:] == ["OPTIM.MAX_EPOCH", "1"] for c in cmds) and len(cmds) == 6


def test_relative_folders_are_those_of_the_caller(tmp_path):
    (cmd,) = dry("cocoop/xd_train.sh", "1", cwd=tmp_path, OUT="runs")
    out = cmd[cmd.index("--output-dir") + 1]
    assert out == str(tmp_path / "runs/imagenet/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1_16shots/seed1")


def test_finished_sh(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.jsonl").write_text(json.dumps({"split": "test", "epoch": 0}) + "\n")
    check = f"source {ROOT}/scripts/finished.sh; finished {run}"
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(ROOT))
    assert subprocess.run(["bash", "-c", check], env=env).returncode == 1  # a test without training
    (run / "results.jsonl").write_text(json.dumps({"split": "test", "epoch": 5}) + "\n")
    assert subprocess.run(["bash", "-c", check], env=env).returncode == 0
