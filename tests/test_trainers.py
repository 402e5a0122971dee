"""Every trainer trains one step with finite loss and gradients only on its learnable parameters,
round-trips its checkpoint, and the CLI gives eval-only, resume and error behaviour."""
from __future__ import annotations

import json


import pytest
import torch

import promptot.engine as engine
import trainers  # noqa: F401
import train
from conftest import base_args, check_one_training_step, run_cli, tiny_opts

# (trainer, method config, extra opts, backbone fixture)
CASES = {
    "CoOp": ("configs/trainers/CoOp/vit_b16_ep50.yaml", ["TRAINER.COOP.N_CTX", "4", "TRAINER.COOP.PREC", "fp32"], "vit"),
    "CoOp-csc-middle": ("configs/trainers/CoOp/vit_b16_ep50.yaml",
                        ["TRAINER.COOP.N_CTX", "4", "TRAINER.COOP.PREC", "fp32", "TRAINER.COOP.CSC", "True",
                         "TRAINER.COOP.CLASS_TOKEN_POSITION", "middle"], "vit"),
    "CoOp-rn-front-init": ("configs/trainers/CoOp/rn50_ctxv1.yaml",
                           ["TRAINER.COOP.PREC", "fp32", "TRAINER.COOP.CLASS_TOKEN_POSITION", "front"], "rn"),
    "CoCoOp": ("configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml", ["TRAINER.COCOOP.PREC", "fp32"], "vit"),
}


def build(toy_root, tmp_path, name, clip_paths, extra=(), epochs=1, batch=4):
    cfg_file, opts, kind = CASES[name]
    trainer_name = name.split("-")[0]
    size = 32 if kind == "vit" else 64
    argv = base_args(toy_root, tmp_path / "out", trainer_name, cfg_file, clip_paths[kind]) + \
        tiny_opts(clip_paths[kind], size=size, epochs=epochs, batch=batch) + opts + list(extra)
    cfg = train.setup_cfg(train.build_parser().parse_args(argv))
    engine.set_random_seed(cfg.SEED)
    return engine.build_trainer(cfg)


@pytest.fixture(scope="module")
def clip_paths(tiny_vit_path, tiny_rn_path):
    return {"vit": tiny_vit_path, "rn": tiny_rn_path}


@pytest.mark.parametrize("name", list(CASES))
def test_one_step_gradients_only_on_prompts(name, toy_root, tmp_path, clip_paths):
    check_one_training_step(build(toy_root, tmp_path, name, clip_paths))


@pytest.mark.parametrize("name", list(CASES))
def test_checkpoint_roundtrip_holds_only_learnables(name, toy_root, tmp_path, clip_paths):
    tr = build(toy_root, tmp_path, name, clip_paths)
    tr.save_model(0, str(tmp_path / "ck"))
    reg = tr.get_model_names()[0]
    ck = engine.load_checkpoint(str(tmp_path / "ck" / reg / "model.pth.tar-1"))
    learn = {k for k, _ in tr._models[reg].named_parameters()}
    assert set(ck["state_dict"]) == learn, "checkpoint must hold exactly the learnable parameters"
    assert ck["meta"]["method"] == tr.cfg.TRAINER.NAME and ck["meta"]["classnames"] == tr.classnames
    with torch.no_grad():
        for p in tr._models[reg].parameters():
            p.add_(1.0)
    tr.load_model(str(tmp_path / "ck"), epoch=1)
    for k, v in tr._models[reg].state_dict().items():
        assert torch.equal(v.cpu(), ck["state_dict"][k].cpu())


def test_train_then_eval_only_reproduces_accuracy(toy_root, tmp_path, tiny_vit_path):
    out = tmp_path / "run"
    args = base_args(toy_root, out, "CoOp", "configs/trainers/CoOp/vit_b16_ep50.yaml", tiny_vit_path) + \
        tiny_opts(tiny_vit_path, epochs=2) + ["TRAINER.COOP.N_CTX", "4", "TRAINER.COOP.PREC", "fp32",
                                              "DATASET.NUM_SHOTS", "4"]
    code, log, err = run_cli(args)
    assert code == 0, err
    assert "Finish training" in log and "Deploy the last-epoch model" in log and "* accuracy:" in log
    assert (out / "prompt_learner" / "model.pth.tar-2").exists()
    assert (out / "prompt_learner" / "checkpoint").read_text().strip() == "model.pth.tar-2"
    assert (out / "log.txt").exists() and list((out / "tensorboard").iterdir())
    rec = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert rec[-1]["split"] == "test" and rec[-1]["epoch"] == 2 and rec[-1]["method"] == "CoOp"

    ev = tmp_path / "eval"
    eargs = base_args(toy_root, ev, "CoOp", "configs/trainers/CoOp/vit_b16_ep50.yaml", tiny_vit_path) + \
        ["--eval-only", "--model-dir", str(out), "--load-epoch", "2"] + \
        tiny_opts(tiny_vit_path) + ["TRAINER.COOP.N_CTX", "4", "TRAINER.COOP.PREC", "fp32", "DATASET.NUM_SHOTS", "4"]
    code, elog, err = run_cli(eargs)
    assert code == 0, err
    erec = json.loads((ev / "results.jsonl").read_text().splitlines()[-1])
    assert erec["metrics"]["accuracy"] == rec[-1]["metrics"]["accuracy"]
    assert erec["epoch"] == 2 and erec["model_dir"] == str(out)
    assert "tensorboard" not in {p.name for p in ev.iterdir()}

    # Re-running into the finished directory does not silently retrain: it says so and only tests.
    code, rlog, _ = run_cli(args)
    assert code == 0 and "Training already finished" in rlog and "epoch [1/2]" not in rlog
    assert (out / "log.txt").exists() and any(p.name.startswith("log.txt-") for p in out.iterdir())


def test_resume_after_interruption(toy_root, tmp_path, tiny_vit_path, monkeypatch):
    from trainers.coop import CoOp

    out = tmp_path / "run"
    args = base_args(toy_root, out, "CoOp", "configs/trainers/CoOp/vit_b16_ep50.yaml", tiny_vit_path) + \
        tiny_opts(tiny_vit_path, epochs=3) + ["TRAINER.COOP.N_CTX", "4", "TRAINER.COOP.PREC", "fp32",
                                              "TRAIN.CHECKPOINT_FREQ", "1", "TRAIN.PRINT_FREQ", "1"]
    orig = CoOp.after_epoch

    def crash_after_second(self):
        orig(self)
        if self.epoch == 1:
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(CoOp, "after_epoch", crash_after_second)
    with pytest.raises(KeyboardInterrupt):
        run_cli(args)
    monkeypatch.setattr(CoOp, "after_epoch", orig)
    assert (out / "prompt_learner" / "checkpoint").read_text().strip() == "model.pth.tar-2"
    first_log = (out / "log.txt").read_text()
    lr_epoch2 = [l for l in first_log.splitlines() if l.startswith("epoch [2/3]")][-1].split("lr ")[1].split()[0]
    code, log, err = run_cli(args)
    assert code == 0, err
    assert "Resuming training at epoch 3/3" in log
    assert "epoch [1/3]" not in log and "epoch [2/3]" not in log and "epoch [3/3]" in log
    # The LR schedule continues where it stopped: epoch 3 runs at the lr the last batch of epoch 2 printed
    # (the scheduler steps inside the last batch), i.e. the uninterrupted cosine value 0.002 * 0.75.
    first3 = [l for l in log.splitlines() if l.startswith("epoch [3/3]")][0]
    assert first3.split("lr ")[1].split()[0] == lr_epoch2 == "1.5000e-03"
    assert (out / "prompt_learner" / "model.pth.tar-3").exists()


def test_unknown_trainer_lists_registered(toy_root, tmp_path, tiny_vit_path):
    args = base_args(toy_root, tmp_path / "o", "NoSuch", "configs/trainers/CoOp/vit_b16_ep50.yaml", tiny_vit_path)
    code, _, err = run_cli(args)
    assert code == 2 and "NoSuch" in err and "CoOp" in err and "CoCoOp" in err and "ZeroshotCLIP" in err
    assert "Traceback" not in err


def test_missing_weights_file_is_one_paragraph(toy_root, tmp_path):
    args = base_args(toy_root, tmp_path / "o", "CoOp", "configs/trainers/CoOp/vit_b16_ep50.yaml", "") + \
        tiny_opts(str(tmp_path / "nowhere" / "ViT-B-16.pt"))
    code, _, err = run_cli(args)
    assert code == 2 and "nowhere" in err and "Traceback" not in err


def test_missing_dataset_folder_points_to_doctor(tmp_path, tiny_vit_path):
    args = base_args(tmp_path / "empty", tmp_path / "o", "CoOp", "configs/trainers/CoOp/vit_b16_ep50.yaml",
                     tiny_vit_path) + tiny_opts(tiny_vit_path)
    code, _, err = run_cli(args)
    assert code == 2 and "python -m promptot.datasets check" in err


def test_csc_checkpoint_refuses_other_class_set(toy_root, tmp_path, clip_paths):
    tr = build(toy_root, tmp_path, "CoOp-csc-middle", clip_paths)
    tr.save_model(0, str(tmp_path / "ck"))
    tr2 = build(toy_root, tmp_path, "CoOp-csc-middle", clip_paths, extra=["DATASET.SUBSAMPLE_CLASSES", "new"])
    from promptot.trainer import CheckpointMismatchError

    with pytest.raises(CheckpointMismatchError, match="class-specific"):
        tr2.load_model(str(tmp_path / "ck"), epoch=1)
    # Generic prompts transfer to another class set.
    tr3 = build(toy_root, tmp_path, "CoOp", clip_paths)
    tr3.save_model(0, str(tmp_path / "ck3"))
    tr4 = build(toy_root, tmp_path, "CoOp", clip_paths, extra=["DATASET.SUBSAMPLE_CLASSES", "new"])
    tr4.load_model(str(tmp_path / "ck3"), epoch=1)
    assert tr4.num_classes == 2


def test_zeroshot_eval_only(toy_root, tmp_path, tiny_vit_path):
    args = base_args(toy_root, tmp_path / "zs", "ZeroshotCLIP", "configs/trainers/CoOp/vit_b16_ep50.yaml",
                     tiny_vit_path) + ["--eval-only"] + tiny_opts(tiny_vit_path) + ["TRAINER.ZSCLIP.PREC", "fp32"]
    code, log, err = run_cli(args)
    assert code == 0, err
    assert "Prompt template: 'a photo of a {}.'" in log and "* accuracy:" in log


def test_seed_zero_is_a_real_seed(toy_root, tmp_path, tiny_vit_path):
    argv = base_args(toy_root, tmp_path / "o", "CoOp", "configs/trainers/CoOp/vit_b16_ep50.yaml", tiny_vit_path,
                     seed=0)
    cfg = train.setup_cfg(train.build_parser().parse_args(argv))
    assert cfg.SEED == 0


@pytest.mark.parametrize("prec,ctx_dtype", [("fp16", torch.float16), ("amp", torch.float32), ("fp32", torch.float32)])
def test_precision_modes_train_one_step(prec, ctx_dtype, toy_root, tmp_path, clip_paths):
    tr = build(toy_root, tmp_path, "CoOp", clip_paths, extra=["TRAINER.COOP.PREC", prec])
    ctx = tr.model.prompt_learner.ctx
    assert ctx.dtype == ctx_dtype  # amp keeps an fp32 master copy of the prompts
    assert tr.model.clip.dtype == (torch.float16 if prec == "fp16" else torch.float32)
    before = ctx.detach().clone()
    tr.set_model_mode("train")
    tr.num_batches, tr.batch_idx, tr.epoch = 10, 0, 0
    summary = tr.forward_backward(next(iter(tr.train_loader_x)))
    assert torch.isfinite(torch.tensor(summary["loss"])) and not torch.equal(before, ctx.detach())
    logits = tr.model_inference(next(iter(tr.test_loader))["img"])
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_bad_config_values_are_one_paragraph_errors(toy_root, tmp_path, tiny_vit_path):
    base = base_args(toy_root, tmp_path / "o", "CoOp", "configs/trainers/CoOp/vit_b16_ep50.yaml", tiny_vit_path) + \
        tiny_opts(tiny_vit_path)
    code, _, err = run_cli(base + ["TRAINER.COOP.CLASS_TOKEN_POSITION", "left"])
    assert code == 2 and "CLASS_TOKEN_POSITION" in err and "left" in err and "Traceback" not in err
    code, _, err = run_cli(base + ["DATASET.NAME", "NoSuchData"])
    assert code == 2 and "NoSuchData" in err and "ImageFolder" in err
    code, _, err = run_cli(base + ["TRAINER.COOP.NO_SUCH_KEY", "1"])
    assert code == 2 and "NO_SUCH_KEY" in err


def test_corrupt_image_stops_or_is_skipped(toy_root, tmp_path, tiny_vit_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(toy_root, data, ignore=shutil.ignore_patterns("split_fewshot", "split.json"))
    bad = data / "toy" / "test" / "red" / "red_0.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    args = base_args(data, tmp_path / "o", "ZeroshotCLIP", "configs/trainers/CoOp/vit_b16_ep50.yaml", tiny_vit_path) + \
        ["--eval-only"] + tiny_opts(tiny_vit_path) + ["TRAINER.ZSCLIP.PREC", "fp32"]
    code, _, err = run_cli(args)
    assert code == 2 and str(bad) in err and "python -m promptot.datasets check" in err and "SKIP_CORRUPT" in err
    code, log, err = run_cli(args[:args.index("--output-dir") + 1] + [str(tmp_path / "o2")] +
                             args[args.index("--output-dir") + 2:] + ["DATASET.SKIP_CORRUPT", "True"])
    assert code == 0, err
    assert "* total: 12" in log  # the unreadable image was replaced by the next readable one, and counted
    from promptot.datasets.common import skipped_images

    assert str(bad) in skipped_images()
