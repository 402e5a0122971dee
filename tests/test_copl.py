"""CoPL (``trainers/copl.py``), by value: with the meta-net output zeroed it is CoOp with the same context; the
attention weights are distributions over the normalised axis and the conditional tokens are their weighted values;
every reading option trains one step; batching images does not mix them; bad options are one-paragraph errors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import train
from promptot.clip import PromptedCLIP, build_tiny_clip
from promptot.errors import ConfigError
from promptot.model import CosineModel
from trainers.copl import CoPLConfig, CoPLModel, CoPLPromptLearner, normalised_entropy, prompt_attention

from conftest import base_args, build_registered, check_one_training_step, tiny_opts

NAMES = ["t-shirt", "trouser", "ankle boot"]


@pytest.fixture(scope="module")
def clip() -> PromptedCLIP:
    m = build_tiny_clip("vit", embed_dim=64, image_size=32, width=64, layers=2, patch_size=8, text_layers=2)
    m.requires_grad_(False)
    return PromptedCLIP(m)


def model_for(clip, **keys) -> CoPLModel:
    c = CoPLConfig(PREC="fp32", **keys)
    return CoPLModel(clip, CoPLPromptLearner(clip, NAMES, c, torch.float32), c)


@pytest.mark.parametrize("keys", [{}, {"ATTN_NORM": "context"}, {"ATTN_SCORE": "scaled_dot", "ATTN_KEYS": "local"},
                                  {"LOCAL_FEATURES": "unprojected", "LOCAL_LAYER": 0}])
def test_zero_meta_net_output_is_coop_with_the_same_context(clip, keys):
    model = model_for(clip, **keys)
    with torch.no_grad():
        model.prompt_learner.text.ctx.add_(0.1 * torch.randn_like(model.prompt_learner.text.ctx))
        model.prompt_learner.meta_net.linear2.weight.zero_()
        model.prompt_learner.meta_net.linear2.bias.zero_()
    images = torch.randn(3, 3, 32, 32)
    coop = CosineModel(clip, model.prompt_learner.text)
    with torch.no_grad():
        torch.testing.assert_close(model(images), coop(images), rtol=1e-5, atol=1e-5)
        # and a nonzero meta-net changes them (the check above depends on the conditioning)
        model.prompt_learner.meta_net.linear2.bias.normal_(0, 0.1)
        assert not torch.allclose(model(images), coop(images), atol=1e-3)


def test_attention_over_patches_by_hand():
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(4, 8, generator=g), torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 6, generator=g)
    w, c = prompt_attention(q, k, v, "patches", "cosine", 0.07)
    assert w.shape == (2, 4, 5)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4), rtol=0, atol=1e-6)
    for b in range(2):
        for m in range(4):
            s = torch.stack([F.cosine_similarity(q[m], k[b, p], dim=0) / 0.07 for p in range(5)])
            torch.testing.assert_close(w[b, m], s.softmax(0), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(c[b, m], (w[b, m, :, None] * v[b]).sum(0), rtol=1e-5, atol=1e-6)
    w, _ = prompt_attention(q, k, v, "patches", "scaled_dot")
    torch.testing.assert_close(w[1, 2], (k[1] @ q[2] / math.sqrt(8)).softmax(0), rtol=1e-5, atol=1e-6)


def test_attention_over_context_tokens_by_hand():
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(4, 8, generator=g), torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 6, generator=g)
    w, c = prompt_attention(q, k, v, "context", "cosine", 0.5)
    assert w.shape == (2, 4)
    torch.testing.assert_close(w.sum(-1), torch.ones(2), rtol=0, atol=1e-6)
    for b in range(2):
        s = F.cosine_similarity(q, k[b].mean(0, keepdim=True), dim=-1) / 0.5
        torch.testing.assert_close(w[b], s.softmax(0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(c[b], 4 * w[b, :, None] * v[b].mean(0), rtol=1e-5, atol=1e-6)
    # uniform weights give every slot the pooled conditional token (CoCoOp's shift)
    _, c = prompt_attention(torch.zeros(4, 8), k, v, "context", "scaled_dot")
    torch.testing.assert_close(c, v.mean(1, keepdim=True).expand(-1, 4, -1), rtol=1e-5, atol=1e-6)


def test_model_attention_is_normalised_and_logged(clip):
    images = torch.randn(2, 3, 32, 32)
    for norm, shape in (("patches", (2, 4, 16)), ("context", (2, 4))):
        out = model_for(clip, ATTN_NORM=norm).train().run(images)
        w = out.aux["attention"]
        assert w.shape == shape
        torch.testing.assert_close(w.sum(-1), torch.ones(shape[:-1]), rtol=0, atol=1e-5)
        assert 0.0 < float(out.diagnostics["attn_ent"]) <= 1.0
        torch.testing.assert_close(out.diagnostics["attn_ent"], normalised_entropy(w.detach()))
    assert float(normalised_entropy(torch.full((3, 8), 1 / 8))) == pytest.approx(1.0)
    assert float(normalised_entropy(F.one_hot(torch.tensor([2, 5]), 8).float())) == pytest.approx(0.0, abs=1e-6)


def test_appended_conditional_tokens_follow_the_context(clip):
    model = model_for(clip, CONDITION="append")
    text = model.prompt_learner.text
    assert text.extra_slots == text.n_ctx == 4
    images = torch.randn(2, 3, 32, 32)
    seen = {}
    real = text.build_per_image

    def spy(ctx):
        seen["ctx"] = ctx
        return real(ctx)

    text.build_per_image = spy
    with torch.no_grad():
        glob, local = model.image_side(images)
        model.logits((glob, local), None)
        cond = model.prompt_learner.meta_net(local)
        _, tokens = prompt_attention(text.ctx, cond, cond)
    assert seen["ctx"].shape == (2, 8, clip.text_width)
    torch.testing.assert_close(seen["ctx"][:, :4], text.ctx.expand(2, -1, -1), rtol=0, atol=0)
    torch.testing.assert_close(seen["ctx"][:, 4:], tokens, rtol=1e-5, atol=1e-6)


def test_a_batch_scores_each_image_on_its_own(clip):
    model = model_for(clip, PATCH_SCORE=0.3, PROMPT_CHUNK=4)  # chunks of one image (3 classes per image)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        together = model(images)
        alone = torch.cat([model(images[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_patch_score_mixes_the_attention_weighted_patch_similarity(clip):
    model = model_for(clip, PATCH_SCORE=1.0)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model.run(images)
        glob, local = model.image_side(images)
        pl = model.prompt_learner
        cond = pl.meta_net(local)
        w, tokens = prompt_attention(pl.text.ctx, cond, cond)
        txt = F.normalize(model.encode_per_image_prompts(pl.text, pl.text.ctx + tokens), dim=-1)
        patch = torch.einsum("bp,bpe,bce->bc", w.mean(1), local, txt)
    torch.testing.assert_close(out.logits, model.scale * patch, rtol=1e-5, atol=1e-4)


OPTIONS = {
    "unprojected": ["TRAINER.COPL.LOCAL_FEATURES", "unprojected"],
    "layer0": ["TRAINER.COPL.LOCAL_LAYER", "0"],
    "context-norm": ["TRAINER.COPL.ATTN_NORM", "context"],
    "scaled-dot": ["TRAINER.COPL.ATTN_SCORE", "scaled_dot"],
    "temp": ["TRAINER.COPL.ATTN_TEMP", "0.5"],
    # the tiny CLIP's text and vision widths are 64, its joint size 32: raw keys need the unprojected tokens
    "local-keys": ["TRAINER.COPL.ATTN_KEYS", "local", "TRAINER.COPL.LOCAL_FEATURES", "unprojected"],
    "qk-proj": ["TRAINER.COPL.ATTN_PROJ", "16", "TRAINER.COPL.ATTN_KEYS", "local"],
    "append": ["TRAINER.COPL.CONDITION", "append"],
    "patch-score": ["TRAINER.COPL.PATCH_SCORE", "0.5"],
    "random-init": ["TRAINER.COPL.CTX_INIT", "", "TRAINER.COPL.N_CTX", "3"],
}


@pytest.mark.parametrize("option", list(OPTIONS))
def test_every_reading_option_trains_one_step(option, toy_root, tmp_path, tiny_vit_path):
    tr = build_registered("CoPL", toy_root, tmp_path / "out", tiny_vit_path, extra=OPTIONS[option])
    changed = check_one_training_step(tr)
    assert any(k.startswith("text.ctx") for k in changed) and any(k.startswith("meta_net.") for k in changed)
    if option == "qk-proj":
        assert {"query.weight", "key.weight"} <= changed


@pytest.mark.parametrize("opts,match", [
    (["TRAINER.COPL.ATTN_NORM", "slots"], "ATTN_NORM"),
    (["TRAINER.COPL.PATCH_SCORE", "0.5", "TRAINER.COPL.ATTN_NORM", "context"], "PATCH_SCORE"),
    (["TRAINER.COPL.PATCH_SCORE", "1.5"], "PATCH_SCORE"),
    (["TRAINER.COPL.ATTN_TEMP", "0.0"], "ATTN_TEMP"),
    (["TRAINER.COPL.LOCAL_LAYER", "7"], "LOCAL_LAYER"),
])
def test_bad_options_are_one_paragraph_errors(opts, match, toy_root, tmp_path, tiny_vit_path):
    from conftest import run_cli

    argv = base_args(toy_root, tmp_path / "o", "CoPL", "configs/trainers/CoPL/miniclip.yaml", tiny_vit_path) + \
        tiny_opts(tiny_vit_path) + opts
    code, _, err = run_cli(argv)
    assert code == 2 and match in err and "Traceback" not in err, err


def test_local_keys_need_matching_widths(clip):
    wide = PromptedCLIP(build_tiny_clip("vit", embed_dim=32, image_size=32, width=128, layers=1, text_layers=1))
    with pytest.raises(ConfigError, match="ATTN_KEYS"):
        model_for(wide, ATTN_KEYS="local", LOCAL_FEATURES="unprojected")
    model_for(wide, ATTN_KEYS="local", LOCAL_FEATURES="unprojected", ATTN_PROJ=8)  # the maps reconcile the widths


def test_rn_backbone_takes_attention_pool_positions_only(tiny_rn_path, toy_root, tmp_path):
    argv = base_args(toy_root, tmp_path / "o", "CoPL", "configs/trainers/CoPL/miniclip.yaml", tiny_rn_path) + \
        tiny_opts(tiny_rn_path, size=64) + ["TRAINER.COPL.PREC", "fp32"]
    cfg = train.setup_cfg(train.build_parser().parse_args(argv))
    import promptot.engine as engine

    check_one_training_step(engine.build_trainer(cfg))
    cfg = train.setup_cfg(train.build_parser().parse_args(argv + ["TRAINER.COPL.LOCAL_FEATURES", "unprojected"]))
    with pytest.raises(ConfigError, match="ViT"):
        engine.build_trainer(cfg)


@pytest.mark.parametrize("cfg_file", ["configs/trainers/CoPL/vit_b16_c4_ep10_batch1_ctxv1.yaml",
                                      "configs/trainers/CoPL/vit_b16_c4_ep10_batch4_ctxv1.yaml"])
def test_vit_configs_are_cocoops_recipe_with_the_default_reading(cfg_file, toy_root, tmp_path):
    from promptot.config import resolve

    cfg = train.setup_cfg(train.build_parser().parse_args(base_args(toy_root, tmp_path, "CoPL", cfg_file, "")))
    c = resolve(cfg, CoPLConfig)
    assert c == CoPLConfig()  # every key at its default: the default reading, 4 tokens from "a photo of a", fp16
    batch = cfg.DATALOADER.TRAIN_X.BATCH_SIZE
    assert (cfg.OPTIM.MAX_EPOCH, cfg.OPTIM.LR, cfg.MODEL.BACKBONE.NAME) == (10, 0.002 * batch, "ViT-B/16")


@pytest.mark.parametrize("prec", ["fp16", "amp"])
def test_half_and_mixed_precision_train_one_step(prec, toy_root, tmp_path, tiny_vit_path):
    """SGD as in the ViT-B/16 configs (fp16 prompts have no master copy, which Adam's eps does not survive)."""
    tr = build_registered("CoPL", toy_root, tmp_path / "o", tiny_vit_path,
                          extra=["TRAINER.COPL.PREC", prec, "OPTIM.NAME", "sgd", "OPTIM.LR", "0.002"])
    pl = tr.model.prompt_learner
    assert pl.text.ctx.dtype == pl.meta_net.linear1.weight.dtype == (torch.float16 if prec == "fp16" else torch.float32)
    tr.set_model_mode("train")
    tr.num_batches, tr.batch_idx, tr.epoch = 10, 0, 0
    before = pl.text.ctx.detach().clone()
    terms = tr.forward_backward(next(iter(tr.train_loader_x)))
    assert all(math.isfinite(v) for v in terms.values()) and not torch.equal(before, pl.text.ctx.detach())
    with torch.no_grad():
        assert torch.isfinite(tr.model_inference(next(iter(tr.test_loader))["img"])).all()
