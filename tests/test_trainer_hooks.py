"""The shared trainer base's hooks: several parameter groups with their own optimizer, LR and warm-up in one training
loop (each learner's LR trace follows its own config), extra loss terms through ``training_loss``, and a gradient
transform between backward and the optimizer steps. Built from shared parts in this file (not registered)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

import train
from promptot.config import PrecisionConfig, register_trainer_config
from promptot.model import CosineModel
from promptot.prompts import TextPrompts
from promptot.trainer import PromptTrainer

from conftest import base_args, tiny_opts


@register_trainer_config("TWOGROUPS")
@dataclass
class TwoGroupsConfig(PrecisionConfig):
    N_CTX: int = 2
    FREEZE_BIAS_GRAD: bool = False
    BIAS_LR: float = 0.5
    BIAS_WARMUP: int = 2


class Bias(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.zeros(n))


class BiasedCosine(CosineModel):
    def __init__(self, clip, learner, n_cls) -> None:
        super().__init__(clip, learner)
        self.bias = Bias(n_cls)

    def logits(self, image, text):
        return super().logits(image, text) + self.bias.b


class TwoGroups(PromptTrainer):
    config_class = TwoGroupsConfig

    def compose(self, clip, c):
        return BiasedCosine(clip, TextPrompts(clip, self.classnames, n_ctx=c.N_CTX, dtype=self.param_dtype),
                            len(self.classnames))

    def register_learners(self, c):
        self.register_learner("prompt_learner", self.model.prompt_learner)
        self.register_learner("bias", self.model.bias,
                              optim_cfg=self.optim_config(LR=c.BIAS_LR, WARMUP_EPOCH=c.BIAS_WARMUP, WARMUP_CONS_LR=0.123))

    def training_loss(self, batch):
        loss, terms = super().training_loss(batch)
        reg = 0.1 * self.model.bias.b.pow(2).sum() + 1.0  # +1: a term with a known, nonzero value
        terms["reg"] = reg
        return loss + reg, terms

    def transform_gradients(self):
        self.transformed = getattr(self, "transformed", 0) + 1
        if self.method_cfg.FREEZE_BIAS_GRAD:
            self.model.bias.b.grad.zero_()


def build(toy_root, tmp_path, tiny_vit_path, *opts, epochs=4):
    argv = base_args(toy_root, tmp_path / "out", "CoOp", "configs/trainers/CoOp/miniclip.yaml", tiny_vit_path) + \
        tiny_opts(tiny_vit_path, epochs=epochs) + ["OPTIM.NAME", "sgd", "OPTIM.LR", "0.01", "OPTIM.WARMUP_EPOCH", "0",
                                                   "TRAINER.TWOGROUPS.PREC", "fp32"] + list(opts)
    cfg = train.setup_cfg(train.build_parser().parse_args(argv))
    return TwoGroups(cfg)


def lr_trace(tr, epochs):
    trace = {n: [] for n in tr.get_model_names()}
    for tr.epoch in range(epochs):
        for n in trace:
            trace[n].append(tr._optims[n].param_groups[0]["lr"])
        tr.num_batches = 1
        tr.batch_idx = 0
        tr.forward_backward(next(iter(tr.train_loader_x)))
    return trace


def test_each_learner_follows_its_own_lr_schedule(toy_root, tmp_path, tiny_vit_path):
    tr = build(toy_root, tmp_path, tiny_vit_path)
    trace = lr_trace(tr, 4)
    cos = [0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]  # cosine, T_max = MAX_EPOCH = 4
    assert trace["prompt_learner"] == pytest.approx([0.01 * c for c in cos])
    # warm-up of 2 epochs at the constant 0.123, then the cosine restarts its count (Dassl's WARMUP_RECOUNT)
    assert trace["bias"] == pytest.approx([0.123, 0.123, 0.5 * cos[0], 0.5 * cos[1]])
    assert tr.transformed == 4


def test_loss_terms_and_gradient_transform(toy_root, tmp_path, tiny_vit_path):
    tr = build(toy_root, tmp_path, tiny_vit_path)
    ctx0, b0 = tr.model.prompt_learner.ctx.detach().clone(), tr.model.bias.b.detach().clone()
    tr.num_batches, tr.batch_idx, tr.epoch = 10, 0, 0
    summary = tr.forward_backward(next(iter(tr.train_loader_x)))
    assert set(summary) >= {"loss", "acc", "reg"} and summary["reg"] == pytest.approx(1.0)
    assert not torch.equal(tr.model.prompt_learner.ctx, ctx0) and not torch.equal(tr.model.bias.b, b0)
    frozen = build(toy_root, tmp_path, tiny_vit_path, "TRAINER.TWOGROUPS.FREEZE_BIAS_GRAD", "True")
    b0 = frozen.model.bias.b.detach().clone()
    frozen.num_batches, frozen.batch_idx, frozen.epoch = 10, 0, 0
    frozen.forward_backward(next(iter(frozen.train_loader_x)))
    assert torch.equal(frozen.model.bias.b, b0), "the transform ran between backward and the optimizer step"


def test_learners_checkpoint_and_resume_separately(toy_root, tmp_path, tiny_vit_path):
    tr = build(toy_root, tmp_path, tiny_vit_path, epochs=4)
    tr.max_epoch = 2  # stop after 2 of 4 epochs, as a killed run would (its checkpoints are those of epoch 2)
    tr.train()
    out = tmp_path / "out"
    for name in ("prompt_learner", "bias"):
        ck = torch.load(out / name / "model.pth.tar-2", weights_only=False)
        assert set(ck["state_dict"]) == ({"ctx"} if name == "prompt_learner" else {"b"})
    resumed = build(toy_root, tmp_path, tiny_vit_path, epochs=4)
    assert resumed.resume_model_if_exist(str(out)) == 2
    assert resumed._optims["bias"].param_groups[0]["lr"] == pytest.approx(0.5)  # first epoch after the warm-up
    assert resumed._optims["prompt_learner"].param_groups[0]["lr"] == pytest.approx(0.01 * 0.5)
    torch.testing.assert_close(resumed.model.bias.b, tr.model.bias.b, rtol=0, atol=0)


def test_a_parameter_belongs_to_one_learner(toy_root, tmp_path, tiny_vit_path):
    tr = build(toy_root, tmp_path, tiny_vit_path)
    with pytest.raises(ValueError, match="shares parameters"):
        tr.register_learner("again", tr.model.bias)
