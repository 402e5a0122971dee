"""The protocol file and its expansion: ``--dry-run`` prints the reference scripts' commands (argument order and
output folders of CoOp's and CoCoOp's scripts, baselines.md §6), shot-dependent configs, stages, and clear errors."""
from __future__ import annotations

import shlex

import pytest

from conftest import ROOT
from promptot.sweep import ProtocolError, Selection, expand, load_protocols
from promptot.sweep.__main__ import main as sweep_main

DATA = "/path/to/datasets"


def dry_run(capsys, monkeypatch, *argv: str) -> list:
    monkeypatch.chdir(ROOT)
    assert sweep_main(list(argv) + ["--dry-run", "--data-root", DATA]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("#")
    return [shlex.split(ln) for ln in lines[1:]]


# The reference scripts' commands with their variables filled in (KaiyangZhou/CoOp @ff61507, scripts/).
def coop_main(dataset, cfg, ctp, nctx, shots, csc, seed):  # scripts/coop/main.sh
    d = f"output/{dataset}/CoOp/{cfg}_{shots}shots/nctx{nctx}_csc{csc}_ctp{ctp}/seed{seed}"
    return (f"python train.py --root {DATA} --seed {seed} --trainer CoOp --dataset-config-file "
            f"configs/datasets/{dataset}.yaml --config-file configs/trainers/CoOp/{cfg}.yaml --output-dir {d} "
            f"TRAINER.COOP.N_CTX {nctx} TRAINER.COOP.CSC {csc} TRAINER.COOP.CLASS_TOKEN_POSITION {ctp} "
            f"DATASET.NUM_SHOTS {shots}").split()


def coop_eval(dataset, cfg, seed):  # scripts/coop/eval.sh
    tail = f"{cfg}_16shots/nctx16_cscFalse_ctpend"
    return (f"python train.py --root {DATA} --seed {seed} --trainer CoOp --dataset-config-file "
            f"configs/datasets/{dataset}.yaml --config-file configs/trainers/CoOp/{cfg}.yaml --output-dir "
            f"output/evaluation/CoOp/{tail}/{dataset}/seed{seed} --model-dir output/imagenet/CoOp/{tail}/seed{seed} "
            f"--load-epoch 50 --eval-only TRAINER.COOP.N_CTX 16 TRAINER.COOP.CSC False "
            f"TRAINER.COOP.CLASS_TOKEN_POSITION end").split()


def zeroshot(dataset, cfg):  # scripts/coop/zeroshot.sh
    return (f"python train.py --root {DATA} --trainer ZeroshotCLIP --dataset-config-file "
            f"configs/datasets/{dataset}.yaml --config-file configs/trainers/CoOp/{cfg}.yaml --output-dir "
            f"output/ZeroshotCLIP/{cfg}/{dataset} --eval-only").split()


CCFG = "vit_b16_c4_ep10_batch1_ctxv1"


def cocoop_b2n(dataset, seed, sub):  # scripts/cocoop/base2new_{train,test}.sh
    tail = f"{dataset}/shots_16/CoCoOp/{CCFG}/seed{seed}"
    head = (f"python train.py --root {DATA} --seed {seed} --trainer CoCoOp --dataset-config-file "
            f"configs/datasets/{dataset}.yaml --config-file configs/trainers/CoCoOp/{CCFG}.yaml ")
    if sub == "base":
        return (head + f"--output-dir output/base2new/train_base/{tail} DATASET.NUM_SHOTS 16 "
                       "DATASET.SUBSAMPLE_CLASSES base").split()
    return (head + f"--output-dir output/base2new/test_new/{tail} --model-dir output/base2new/train_base/{tail} "
                   "--load-epoch 10 --eval-only DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES new").split()


def cocoop_xd(dataset, seed):  # scripts/cocoop/xd_{train,test}.sh
    head = f"python train.py --root {DATA} --seed {seed} --trainer CoCoOp --dataset-config-file configs/datasets/"
    cfg = f"--config-file configs/trainers/CoCoOp/{CCFG}.yaml"
    if dataset == "imagenet":
        return (head + f"imagenet.yaml {cfg} --output-dir output/imagenet/CoCoOp/{CCFG}_16shots/seed{seed} "
                       "DATASET.NUM_SHOTS 16").split()
    return (head + f"{dataset}.yaml {cfg} --output-dir output/evaluation/CoCoOp/{CCFG}_16shots/{dataset}/seed{seed} "
                   f"--model-dir output/imagenet/CoCoOp/{CCFG}_16shots/seed{seed} --load-epoch 10 --eval-only").split()


def test_coop_fewshot_matches_main_sh_with_shot_dependent_configs(capsys, monkeypatch):
    cmds = dry_run(capsys, monkeypatch, "fewshot", "--trainers", "CoOp", "--datasets", "caltech101", "imagenet")
    assert len(cmds) == 2 * 5 * 3
    # RN50: 50 epochs at 1 shot, 100 at 2 and 4, 200 at 8 and 16; ImageNet always rn50_ep50
    for shots, cfg in [(1, "rn50_ep50"), (2, "rn50_ep100"), (4, "rn50_ep100"), (8, "rn50"), (16, "rn50")]:
        for seed in (1, 2, 3):
            assert coop_main("caltech101", cfg, "end", 16, shots, "False", seed) in cmds
            assert coop_main("imagenet", "rn50_ep50", "end", 16, shots, "False", seed) in cmds
    # the reference's variants through --config and --param: main.sh caltech101 rn50 middle 16 16 True
    cmds = dry_run(capsys, monkeypatch, "fewshot", "--trainers", "CoOp", "--datasets", "caltech101", "--shots", "16",
                   "--config", "rn50", "--param", "ctp=middle", "--param", "csc=True")
    assert cmds == [coop_main("caltech101", "rn50", "middle", 16, 16, "True", s) for s in (1, 2, 3)]


def test_cocoop_base2new_matches_train_and_test_scripts(capsys, monkeypatch):
    cmds = dry_run(capsys, monkeypatch, "base2new", "--trainers", "CoCoOp", "--datasets", "dtd")
    expected = [cocoop_b2n("dtd", s, sub) for s in (1, 2, 3) for sub in ("base", "new")]
    assert sorted(map(tuple, cmds)) == sorted(map(tuple, expected))
    # each evaluation comes after the training it loads
    for s in (1, 2, 3):
        assert cmds.index(cocoop_b2n("dtd", s, "base")) < cmds.index(cocoop_b2n("dtd", s, "new"))


def test_cocoop_cross_dataset_and_coop_dg_match_their_scripts(capsys, monkeypatch):
    cmds = dry_run(capsys, monkeypatch, "xd", "--trainers", "CoCoOp", "--datasets", "dtd", "eurosat", "--seeds", "2")
    assert cmds == [cocoop_xd("imagenet", 2), cocoop_xd("dtd", 2), cocoop_xd("eurosat", 2)]
    cmds = dry_run(capsys, monkeypatch, "dg", "--trainers", "CoOp", "--seeds", "1")
    for target in ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"):
        assert coop_eval(target, "vit_b16_ep50", 1) in cmds
    assert coop_main("imagenet", "vit_b16_ep50", "end", 16, 16, "False", 1) in cmds  # trained by main.sh


def test_zero_shot_matches_zeroshot_sh(capsys, monkeypatch):
    cmds = dry_run(capsys, monkeypatch, "zeroshot", "--trainers", "ZeroshotCLIP", "--datasets", "eurosat", "dtd",
                   "--config", "vit_b16")
    assert cmds == [zeroshot("eurosat", "vit_b16"), zeroshot("dtd", "vit_b16")]


def test_plotpp_stage_two_starts_from_the_seed1_stage_one_checkpoint():
    pf = load_protocols()
    jobs = expand(pf, "fewshot", Selection(trainers=["PLOTPP"], datasets=["dtd"], shots=[2, 8]), repo=str(ROOT))
    vision = [j for j in jobs if j.stage == "visiononly"]
    joint = [j for j in jobs if j.stage == "joint"]
    assert len(vision) == 2 and {j.seed for j in vision} == {1}  # the reference trains stage 1 with seed 1 only
    assert len(joint) == 6
    for j in joint:
        (v,) = [x for x in vision if x.shots == j.shots]
        assert j.needs == [v.output_dir]
        epochs = {2: 100, 8: 200}[j.shots]
        opts = dict(zip(j.opts[0::2], j.opts[1::2]))
        assert opts["MODEL.INIT_WEIGHTS"] == f"{v.output_dir}/prompt_learner/model.pth.tar-{epochs}"
        assert opts["OPTIM.MAX_EPOCH"] == str(epochs) and j.max_epoch == epochs
        assert opts["TRAINER.PLOTPP.MODEL_UPD"] == "joint"
        assert jobs.index(v) < jobs.index(j)


def test_plot_and_align_epochs_and_per_dataset_batch():
    pf = load_protocols()
    jobs = expand(pf, "fewshot", Selection(trainers=["PLOT", "ALIGN"], datasets=["oxford_flowers", "imagenet"],
                                           seeds=[1]), repo=str(ROOT))
    epochs = {(j.method, j.dataset, j.shots): j.max_epoch for j in jobs}
    assert [epochs[("PLOT", "oxford_flowers", k)] for k in (1, 2, 4, 8, 16)] == [50, 100, 100, 200, 200]
    assert [epochs[("ALIGN", "oxford_flowers", k)] for k in (1, 2, 4, 8, 16)] == [30, 50, 50, 80, 80]
    assert {epochs[("PLOT", "imagenet", k)] for k in (1, 16)} == {50}
    assert {epochs[("ALIGN", "imagenet", k)] for k in (1, 16)} == {20}
    flowers = [j for j in jobs if j.method == "PLOT" and j.dataset == "oxford_flowers"][0]
    imagenet = [j for j in jobs if j.method == "PLOT" and j.dataset == "imagenet"][0]
    assert "DATALOADER.TRAIN_X.BATCH_SIZE" in flowers.opts and "DATALOADER.TRAIN_X.BATCH_SIZE" not in imagenet.opts


def test_user_options_come_last_and_set_the_load_epoch():
    pf = load_protocols()
    jobs = expand(pf, "base2new", Selection(trainers=["CoOp"], datasets=["dtd"], seeds=[1], config="miniclip",
                                            opts=["OPTIM.MAX_EPOCH", "3"]), repo=str(ROOT))
    train, test = jobs
    assert train.opts[-2:] == ["OPTIM.MAX_EPOCH", "3"] and train.max_epoch == 3
    assert test.load_epoch == 3 and test.model_dir == train.output_dir and test.needs == [train.output_dir]
    assert train.config == "configs/trainers/CoOp/miniclip.yaml"


def test_missing_config_file_is_named(tmp_path):
    pf = load_protocols()
    with pytest.raises(ProtocolError, match=r"configs/trainers/CoOp/nope\.yaml \(used by CoOp/fewshot\)"):
        expand(pf, "fewshot", Selection(trainers=["CoOp"], datasets=["dtd"], config="nope"), repo=str(ROOT))
    with pytest.raises(ProtocolError, match=r"configs/datasets/no_such_data\.yaml"):
        expand(pf, "fewshot", Selection(trainers=["CoOp"], datasets=["no_such_data"]), repo=str(ROOT))


def test_bad_requests_are_explained():
    pf = load_protocols()
    with pytest.raises(ProtocolError, match="Unknown protocol 'fewshots'"):
        expand(pf, "fewshots", Selection(), repo=str(ROOT))
    with pytest.raises(ProtocolError, match="No 'zeroshot' entry for \\['CoOp'\\]"):
        expand(pf, "zeroshot", Selection(trainers=["CoOp"]), repo=str(ROOT))
    with pytest.raises(ProtocolError, match="has a parameter .nctxx."):
        expand(pf, "fewshot", Selection(trainers=["CoOp"], params={"nctxx": "4"}), repo=str(ROOT))


def test_protocol_file_errors_name_the_entry(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("protocols:\n  fs:\n    kind: fewshot\n    datasets: [dtd]\n    shots: [1]\n    seeds: [1]\n"
                   "    output: '{dataset}/{trainer}/{nope}'\n    zeroshot_output: z\n"
                   "methods:\n  CoOp:\n    fs: {config: rn50, optz: {}}\n")
    with pytest.raises(ProtocolError, match=r"methods\.CoOp\.fs: unknown key\(s\) \['optz'\]"):
        load_protocols(str(bad))
    bad.write_text(bad.read_text().replace("optz", "opts"))
    with pytest.raises(ProtocolError, match=r"template variable \{nope\} is not defined"):
        expand(load_protocols(str(bad)), "fs", Selection(), repo=str(ROOT))


def test_adding_a_method_is_one_small_entry(tmp_path):
    # A method with one config per protocol inherits the protocol's output scheme (MaPLe-style entry).
    text = (ROOT / "configs/protocols.yaml").read_text() + "\n  CoOpLike:\n    trainer: CoOp\n    config_dir: CoOp\n" \
                                                          "    base2new: {config: vit_b16_ep50_ctxv1}\n"
    path = tmp_path / "protocols.yaml"
    path.write_text(text)
    jobs = expand(load_protocols(str(path)), "base2new", Selection(trainers=["CoOpLike"], datasets=["dtd"], seeds=[1]),
                  repo=str(ROOT))
    assert [j.id for j in jobs] == ["base2new/train_base/dtd/shots_16/CoOp/vit_b16_ep50_ctxv1/seed1",
                                    "base2new/test_new/dtd/shots_16/CoOp/vit_b16_ep50_ctxv1/seed1"]
    assert jobs[1].load_epoch == 50


def test_every_entry_of_the_protocol_file_expands():
    # every method x protocol of the shipped file has its config files (the runner validates the same)
    pf = load_protocols()
    for proto in pf.protocols:
        for method in pf.methods_for(proto):
            assert expand(pf, proto, Selection(trainers=[method]), repo=str(ROOT))
