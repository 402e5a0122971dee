"""KgCoOp and ProGrad: the knowledge-guided term and the loss by value, ProGrad's KL and its projected update, the
template tables, and equality with the official code's numbers on the same weights and inputs (fixture:
``tests/fixtures/reference_kgcoop_prograd``)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import promptot.engine as engine
import train
from promptot.errors import ConfigError
from promptot.gradients import project_conflicting
from promptot.model import template_features
from promptot.templates import dataset_template
from trainers.kgcoop import knowledge_guided_distance
from trainers.prograd import ProGradConfig, init_words, prograd_kl

from conftest import ROOT, base_args, build_registered

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "reference_kgcoop_prograd" / "golden.pt"
TOL = dict(rtol=1e-5, atol=1e-5)


def grad_tol(ref: torch.Tensor) -> dict:
    """~1e-5 of the gradient's scale (the reference sums over all 77 positions, this code truncates after EOT)."""
    return dict(rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def one_step(tr, images, labels):
    """One training step on a given batch; returns the logged terms (the gradients stay in ``.grad``)."""
    tr.set_model_mode("train")
    tr.num_batches, tr.batch_idx, tr.epoch = 10, 0, 0
    return tr.forward_backward({"img": images, "label": labels})


# ----------------------------------------------------------------------------------------------------------- KgCoOp
def test_knowledge_guided_term_on_a_hand_made_case():
    hand = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    text = torch.tensor([[3.0, 0.0], [0.5, math.sqrt(3) / 2], [1.0, 0.0]])  # cos 1, cos 60° = 0.5, cos 90° = 0
    assert float(knowledge_guided_distance(text, hand)) == pytest.approx(1 - (1 + 0.5 + 0) / 3, abs=1e-7)
    assert float(knowledge_guided_distance(hand, hand)) == pytest.approx(0.0, abs=1e-7)
    # for unit vectors the term is half the mean squared distance (the paper's form)
    a, b = F.normalize(torch.randn(5, 8), dim=-1), F.normalize(torch.randn(5, 8), dim=-1)
    assert float(knowledge_guided_distance(a, b)) == pytest.approx(float((a - b).pow(2).sum(-1).mean() / 2), abs=1e-6)


def test_kgcoop_loss_is_ce_plus_w_times_the_term_and_w0_is_coop(toy_root, tmp_path, tiny_vit_path):
    coop = build_registered("CoOp", toy_root, tmp_path / "coop", tiny_vit_path)
    kg0 = build_registered("KgCoOp", toy_root, tmp_path / "kg0", tiny_vit_path, extra=["TRAINER.KGCOOP.W", "0.0"])
    kg8 = build_registered("KgCoOp", toy_root, tmp_path / "kg8", tiny_vit_path, extra=["TRAINER.KGCOOP.W", "8.0"])
    batch = next(iter(coop.train_loader_x))
    with torch.no_grad():
        noise = 0.05 * torch.randn(kg0.model.prompt_learner.ctx.shape, generator=torch.Generator().manual_seed(0))
        for tr in (coop, kg0, kg8):  # off the template words, where the term is 0
            tr.model.prompt_learner.ctx.add_(noise)
    loss_coop, _ = coop.training_loss(batch)
    loss0, terms0 = kg0.training_loss(batch)
    assert float(terms0["kg"].detach()) > 1e-3
    torch.testing.assert_close(loss0, loss_coop, rtol=0, atol=0)
    loss8, terms8 = kg8.training_loss(batch)
    with torch.no_grad():
        text = F.normalize(kg8.model.encode_text_prompts().features, dim=-1)
    hand = template_features(kg8.model.clip, kg8.classnames, ["a photo of a {}."], verbose=False)
    by_hand = 1 - sum(float(text[c] @ hand[c]) for c in range(len(hand))) / len(hand)
    assert float(terms8["kg"].detach()) == pytest.approx(by_hand, abs=1e-6)
    assert float(loss8.detach()) == pytest.approx(float(terms8["ce"].detach()) + 8.0 * by_hand, abs=1e-5)
    torch.testing.assert_close(terms8["ce"], loss_coop)


def test_template_tables_follow_the_reference_code():
    assert dataset_template("DescribableTextures", None, "kgcoop") == "a photo of a {}, a type of texture."
    assert dataset_template("DescribableTextures", None, "coop") == "{} texture."
    assert dataset_template("OxfordPets", None, "prograd") == "a type of pet, a photo of a {}."
    assert dataset_template("DescribableTextures", None, "prograd") == "a texture of {}."
    assert dataset_template("ImageFolder", None, "prograd") == "a photo of a {}."
    with pytest.raises(ConfigError, match="template table"):
        dataset_template("DTD", None, "nope")


def test_kgcoop_matches_the_reference_code(toy_root, tmp_path, tiny_vit_path):
    gold = torch.load(GOLDEN, weights_only=True)
    ref = gold["kgcoop"]
    weights_sum = sum(float(v.double().sum()) for v in torch.load(tiny_vit_path).values())
    assert weights_sum == pytest.approx(gold["weights_sum"]), "not the weights the golden values were computed with"
    tr = build_registered("KgCoOp", toy_root, tmp_path / "out", tiny_vit_path,
                          extra=["TRAINER.KGCOOP.W", str(ref["w"])])
    assert tr.classnames == gold["classnames"]
    with torch.no_grad():
        tr.model.prompt_learner.ctx.copy_(ref["ctx"])
    torch.testing.assert_close(tr.model.hand_text, ref["hand_text"], **TOL)
    tr.set_model_mode("train")
    with torch.no_grad():
        torch.testing.assert_close(tr.model(gold["images"]), ref["logits"], **TOL)
    terms = one_step(tr, gold["images"], ref["labels"])
    assert terms["kg"] == pytest.approx(float(ref["kg"]), abs=1e-6)
    assert terms["loss"] == pytest.approx(float(ref["loss"]), abs=1e-5)
    torch.testing.assert_close(tr.model.prompt_learner.ctx.grad, ref["grad"], **grad_tol(ref["grad"]))


def test_official_kgcoop_checkpoint_loads(toy_root, tmp_path, tiny_vit_path):
    """The reference prompt learner's state (ctx plus unused bias_vectors and meta_net, class-dependent buffers)."""
    tr = build_registered("KgCoOp", toy_root, tmp_path / "out", tiny_vit_path)
    ctx = torch.randn_like(tr.model.prompt_learner.ctx)
    state = {"ctx": ctx, "bias_vectors": torch.zeros(1, 512), "meta_net.linear1.weight": torch.zeros(512, 512),
             "meta_net.linear1.bias": torch.zeros(512), "token_prefix": torch.zeros(2, 1, 64),
             "token_suffix": torch.zeros(2, 72, 64)}
    engine.save_checkpoint({"state_dict": state, "epoch": 100, "optimizer": None, "scheduler": None},
                           str(tmp_path / "official" / "prompt_learner"), model_name="model.pth.tar-100")
    tr.load_model(str(tmp_path / "official"), epoch=100)
    assert torch.equal(tr.model.prompt_learner.ctx, ctx)


# ----------------------------------------------------------------------------------------------------------- ProGrad
def test_prograd_kl_is_soft_cross_entropy_with_the_kl_gradient():
    s, t = torch.randn(3, 5, requires_grad=True), torch.randn(3, 5)
    for temp in (1.0, 2.0):
        kl = prograd_kl(s, t, temp)
        p = F.softmax(t / temp, -1)
        by_hand = -(p * F.log_softmax(s / temp, -1)).sum(1).mean() * temp ** 2
        assert float(kl.detach()) == pytest.approx(float(by_hand.detach()), abs=1e-6)
        true_kl = F.kl_div(F.log_softmax(s / temp, -1), p, reduction="batchmean") * temp ** 2
        g1, = torch.autograd.grad(kl, s)
        g2, = torch.autograd.grad(true_kl, s)
        torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-7)  # same gradient as KL(p_teacher || p_student)


def test_ctx_init_template_takes_the_words_before_the_class():
    c = ProGradConfig(CTX_INIT="template", PREC="fp32")
    assert init_words(c, "a type of pet, a photo of a {}.") == "a type of pet, a photo of a"
    assert init_words(ProGradConfig(CTX_INIT="a photo of a", PREC="fp32"), "x {}.") == "a photo of a"
    with pytest.raises(ConfigError, match="CTX_INIT"):
        init_words(c, "a photo of a {}, a type of pet.")
    with pytest.raises(ConfigError, match="TRAINER.PROGRAD.T"):
        ProGradConfig(T=0.0)


@pytest.mark.parametrize("case", ["conflict", "agree", "conflict_half"])
def test_prograd_matches_the_reference_code(case, toy_root, tmp_path, tiny_vit_path):
    gold = torch.load(GOLDEN, weights_only=True)
    ref = gold["prograd_" + case]
    tr = build_registered("ProGrad", toy_root, tmp_path / "out", tiny_vit_path, extra=[
        "TRAINER.PROGRAD.N_CTX", "6", "TRAINER.PROGRAD.CTX_INIT", "template",
        "TRAINER.PROGRAD.LAMBDA", str(ref["lam"])])
    assert tr.classnames == gold["classnames"]
    torch.testing.assert_close(tr.model.prompt_learner.ctx, ref["ctx"], rtol=0, atol=0)  # right-aligned init
    tr.set_model_mode("train")
    with torch.no_grad():
        img = tr.model.image_side(gold["images"])
        torch.testing.assert_close(tr.model.logits(img, tr.model.text_side()), ref["logits"], **TOL)
        torch.testing.assert_close(tr.model.hand_logits(img), ref["teacher"], **TOL)
    terms = one_step(tr, gold["images"], ref["labels"])
    assert terms["loss"] == pytest.approx(float(ref["xe"]), abs=1e-5)
    assert terms["kl_loss"] == pytest.approx(float(ref["kl"]), abs=1e-5)
    assert terms["proj"] == (1.0 if ref["cos"] < 0 else 0.0)
    grad, tol = tr.model.prompt_learner.ctx.grad, grad_tol(ref["grad"])
    torch.testing.assert_close(grad, ref["grad"], **tol)
    # the same rule from the two raw reference gradients: obtuse -> projected, acute -> unchanged
    torch.testing.assert_close(grad, project_conflicting(ref["grad_ce"], ref["grad_kl"], ref["lam"]), **tol)
    if ref["cos"] >= 0:
        torch.testing.assert_close(grad, ref["grad_ce"], **tol)
    else:
        assert not torch.allclose(grad, ref["grad_ce"], atol=1e-4)


def test_prograd_update_is_the_rule_on_its_own_gradients(toy_root, tmp_path, tiny_vit_path):
    """Independently of the reference: g_d and g_g by two plain backward passes, then the rule; the trainer's step
    (one forward, g_g by autograd.grad) leaves exactly that gradient, with λ 0 the plain CE gradient."""
    for lam in ("1.0", "0.0"):
        tr = build_registered("ProGrad", toy_root, tmp_path / lam, tiny_vit_path, extra=["TRAINER.PROGRAD.LAMBDA", lam])
        batch = next(iter(tr.train_loader_x))
        ctx = tr.model.prompt_learner.ctx
        tr.set_model_mode("train")
        img = tr.model.image_side(batch["img"])
        logits = tr.model.logits(img, tr.model.text_side())
        g_d, = torch.autograd.grad(F.cross_entropy(logits, batch["label"]), ctx, retain_graph=True)
        g_g, = torch.autograd.grad(prograd_kl(logits, tr.model.hand_logits(img).detach()), ctx)
        one_step(tr, batch["img"], batch["label"])
        torch.testing.assert_close(ctx.grad, project_conflicting(g_d, g_g, float(lam)), **TOL)
        if lam == "0.0":
            torch.testing.assert_close(ctx.grad, g_d, **TOL)


REFERENCE_CONFIGS = sorted(str(p.relative_to(ROOT)) for d in ("KgCoOp", "ProGrad")
                           for p in (ROOT / "configs/trainers" / d).glob("*.yaml") if p.stem != "miniclip")


@pytest.mark.parametrize("cfg_file", REFERENCE_CONFIGS)
def test_reference_configs_resolve(cfg_file, toy_root, tmp_path):
    """The values of the reference configs and scripts (W 8.0; ProGrad's template init in 16 slots, T 1, λ 1)."""
    from promptot.config import resolve
    from trainers.kgcoop import KgCoOpConfig

    trainer = cfg_file.split("/")[2]
    cfg = train.setup_cfg(train.build_parser().parse_args(base_args(toy_root, tmp_path, trainer, cfg_file, "")))
    assert cfg.OPTIM.LR == 0.002 and cfg.OPTIM.WARMUP_CONS_LR == 1e-5 and cfg.OPTIM.LR_SCHEDULER == "cosine"
    if trainer == "KgCoOp":
        c = resolve(cfg, KgCoOpConfig)
        assert (c.W, c.CTX_INIT, c.N_CTX, c.TEMPLATES, c.PREC) == (8.0, "a photo of a", 4, "kgcoop", "fp16")
        assert cfg.OPTIM.MAX_EPOCH == 100 and cfg.DATALOADER.TRAIN_X.BATCH_SIZE == 128
    else:
        c = resolve(cfg, ProGradConfig)
        assert (c.T, c.LAMBDA, c.PREC) == (1.0, 1.0, "fp16") and cfg.DATALOADER.TRAIN_X.BATCH_SIZE == 32
        if cfg.MODEL.BACKBONE.NAME == "RN50":
            assert (c.CTX_INIT, c.N_CTX, c.TEMPLATES) == ("template", 16, "prograd")
            assert cfg.OPTIM.MAX_EPOCH == {"rn50": 200, "rn50_ep100": 100, "rn50_ep50": 50}[Path(cfg_file).stem]
        else:  # the base-to-new ViT-B/16 recipe of this project (see the yaml)
            assert (c.CTX_INIT, c.N_CTX, c.TEMPLATES, cfg.OPTIM.MAX_EPOCH) == ("a photo of a", 4, "kgcoop", 100)


@pytest.mark.parametrize("name,node", [("KgCoOp", "KGCOOP"), ("ProGrad", "PROGRAD")])
@pytest.mark.parametrize("prec", ["fp16", "amp"])
def test_half_and_mixed_precision_train_one_step(name, node, prec, toy_root, tmp_path, tiny_vit_path):
    """SGD as in the reference configs (the reference's fp16 prompts have no master copy, which Adam's eps does not
    survive: the mini-CLIP configs use fp32)."""
    tr = build_registered(name, toy_root, tmp_path / "o", tiny_vit_path,
                          extra=[f"TRAINER.{node}.PREC", prec, "OPTIM.NAME", "sgd", "OPTIM.LR", "0.002"])
    ctx = tr.model.prompt_learner.ctx
    assert ctx.dtype == (torch.float16 if prec == "fp16" else torch.float32)
    before = ctx.detach().clone()
    batch = next(iter(tr.train_loader_x))
    terms = one_step(tr, batch["img"], batch["label"])
    assert all(math.isfinite(v) for v in terms.values()) and not torch.equal(before, ctx.detach())
    with torch.no_grad():
        assert torch.isfinite(tr.model_inference(next(iter(tr.test_loader))["img"])).all()
