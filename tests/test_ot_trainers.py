"""PLOT, PLOT++ and ALIGN on the tiny CLIPs: one step with gradients only on the learnables, checkpoint
round-trips holding only learnables, stage-1 -> stage-2 weight loading, ALIGN's compat modes and an end-to-end run."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import promptot.engine as engine
import train
import trainers  # noqa: F401
from promptot.ot import TokenPieces
from conftest import ROOT, base_args, check_one_training_step, run_cli, tiny_opts

FP32 = {"PLOT": ["TRAINER.PLOT.PREC", "fp32", "TRAINER.PLOT.N_CTX", "4"],
        "PLOTPP": ["TRAINER.PLOTPP.PREC", "fp32"],
        "ALIGN": ["TRAINER.ALIGN.PREC", "fp32", "TRAINER.ALIGN.PROMPT_DEPTH", "2"]}
A = "configs/trainers/ALIGN/"
# name -> (method config, backbone, extra opts)
CASES = {
    "PLOT": ("configs/trainers/PLOT/rn50_ep50.yaml", "rn", []),
    "PLOT-vit-global": ("configs/trainers/PLOT/rn50_imagenet.yaml", "vit", ["TRAINER.PLOT.STOP", "marginal"]),
    "PLOTPP-vision": ("configs/trainers/PLOTPP/vit_b16_visiononly.yaml", "vit", []),
    "PLOTPP-joint": ("configs/trainers/PLOTPP/vit_b16_joint.yaml", "vit", ["TRAINER.PLOTPP.CTX_INIT", "a photo of a"]),
    "ALIGN": (A + "vit_b16_c2_ep5_batch4_2ctx.yaml", "vit", []),
    "ALIGN-reference": (A + "vit_b16_c2_ep5_batch4_2ctx_reference.yaml", "vit", []),
    "ALIGN-independent": (A + "vit_b16_c2_ep5_batch4_2ctx.yaml", "vit",
                          ["TRAINER.ALIGN.COUPLED", "False", "TRAINER.ALIGN.TEXT_PROMPT_NUMBER", "2",
                           "TRAINER.ALIGN.VISION_PROMPT_NUMBER", "3"]),
}


@pytest.fixture(scope="module")
def clip_paths(tiny_vit_path, tiny_rn_path):
    return {"vit": tiny_vit_path, "rn": tiny_rn_path}


def build(toy_root, tmp_path, name, clip_paths, extra=()):
    cfg_file, kind, opts = CASES[name]
    trainer = name.split("-")[0]
    argv = base_args(toy_root, tmp_path / "out", trainer, cfg_file, clip_paths[kind]) + \
        tiny_opts(clip_paths[kind], size=32 if kind == "vit" else 64) + FP32[trainer] + opts + list(extra)
    cfg = train.setup_cfg(train.build_parser().parse_args(argv))
    engine.set_random_seed(cfg.SEED)
    return engine.build_trainer(cfg)


@pytest.mark.parametrize("name", list(CASES))
def test_one_step_and_checkpoint(name, toy_root, tmp_path, clip_paths):
    tr = build(toy_root, tmp_path, name, clip_paths)
    assert tr.get_model_names() == ["prompt_learner"]
    learner = tr._models["prompt_learner"]
    changed = check_one_training_step(tr)
    if name == "PLOTPP-vision":
        assert changed == {"visual_ctx"}, changed

    tr.save_model(0, str(tmp_path / "ck"))
    ck = engine.load_checkpoint(str(tmp_path / "ck" / "prompt_learner" / "model.pth.tar-1"))
    assert set(ck["state_dict"]) == {k for k, _ in learner.named_parameters()}
    with torch.no_grad():
        for p in learner.parameters():
            p.add_(1.0)
    tr.load_model(str(tmp_path / "ck"), epoch=1)
    for k, v in learner.state_dict().items():
        assert torch.equal(v, ck["state_dict"][k])


def test_plotpp_stage1_weights_load_into_stage2(toy_root, tmp_path, clip_paths):
    s1 = build(toy_root, tmp_path, "PLOTPP-vision", clip_paths)
    assert [p for g in s1._optims["prompt_learner"].param_groups for p in g["params"]] == \
        [s1.model.prompt_learner.visual_ctx]
    txt = s1.model.text_side()
    assert s1.model.text_side() is txt, "frozen text features are cached"
    with torch.no_grad():
        s1.model.prompt_learner.visual_ctx.add_(0.5)
        s1.model.prompt_learner.text[0].ctx.add_(0.5)
    assert s1.model.text_side() is not txt, "the cache follows in-place changes of the text prompts"
    s1.save_model(0, str(tmp_path / "s1"))
    ck = tmp_path / "s1" / "prompt_learner" / "model.pth.tar-1"
    s2 = build(toy_root, tmp_path, "PLOTPP-joint", clip_paths,
               extra=["MODEL.INIT_WEIGHTS", str(ck), "TRAINER.PLOTPP.CTX_INIT",
                      "a photo of a|this is a photo|this is picture of|one picture of a"])
    for k, v in s1.model.prompt_learner.state_dict().items():
        assert torch.equal(s2.model.prompt_learner.state_dict()[k], v), k
    assert all(p.requires_grad for p in s2.model.prompt_learner.parameters())
    single = build(toy_root, tmp_path, "PLOTPP-joint", clip_paths).model.prompt_learner.text
    assert not torch.equal(single[0].ctx, single[1].ctx), "one template: the sets must still start distinct"


def test_align_coupled_needs_equal_prompt_numbers(toy_root, tmp_path, clip_paths):
    with pytest.raises(ValueError, match="COUPLED"):
        build(toy_root, tmp_path, "ALIGN", clip_paths, extra=["TRAINER.ALIGN.VISION_PROMPT_NUMBER", "3"])


def test_align_token_sets_are_prompt_and_name_tokens(toy_root, tmp_path, clip_paths):
    from promptot.clip import tokenize

    tr = build(toy_root, tmp_path, "ALIGN", clip_paths)
    text = tr.model.prompt_learner.text
    mask = text.token_mask(20)
    for c, name in enumerate(text.classnames):
        pos = mask[c].nonzero().flatten().tolist()
        name_ids = tokenize(name)[0]
        n = int(name_ids.argmax()) - 1  # tokens between SOS and EOT
        # 2 learnable context slots right after SOS, then (after the frozen "of a") exactly the class name
        assert pos[:2] == [1, 2] and pos[2:] == list(range(5, 5 + n))
        assert torch.equal(text.token_ids[c, 5:5 + n], name_ids[1:1 + n])


def _token_grads(tr):
    """Run one loss through the model, returning (grad of the image tokens, grads of the text-token pieces (None
    when no piece has one), logits); the token inputs are caught where they enter the head's token level."""
    seen = {"img": [], "txt": []}
    head = tr.model.head
    token_term = head.token_term

    def spy(img_tokens, txt_tokens, *a, **k):
        for key, ts in (("img", [img_tokens]), ("txt", txt_tokens.pieces if isinstance(txt_tokens, TokenPieces)
                                                 else [txt_tokens])):
            for t in ts:
                if t.requires_grad:
                    t.retain_grad()
                seen[key].append(t)
        return token_term(img_tokens, txt_tokens, *a, **k)

    head.token_term = spy
    try:
        logits = tr.model(_images())
        F.cross_entropy(logits, torch.tensor([0, 1])).backward()
    finally:
        del head.token_term
    assert seen["img"] and seen["txt"], "the token level did not run"
    gi = [t.grad for t in seen["img"] if t.grad is not None]
    gt = [t.grad for t in seen["txt"] if t.grad is not None]
    return (gi[0] if gi else None), (torch.cat([g.flatten() for g in gt]) if gt else None), logits.detach()


def test_align_reference_token_level_has_no_gradient(toy_root, tmp_path, clip_paths):
    ref = build(toy_root, tmp_path, "ALIGN-reference", clip_paths)
    gi, gt, logits = _token_grads(ref)
    assert gi is None and gt is None, "reference mode (D3): no gradient may reach the token features"
    ref.model.train()
    with torch.no_grad():
        out = ref.model.run(_images())
    assert out.diagnostics["plan_ent"] > 0  # training runs log the plan entropy ...
    seen_iters = {}
    h = ref.model.head.register_forward_hook(
        lambda m, a, kw, o: seen_iters.update(o[1]) if isinstance(o, tuple) else None, with_kwargs=True)
    try:
        with torch.no_grad():
            ref.model.run(_images())
    finally:
        h.remove()
    assert seen_iters["token_iters_mean"] >= 1  # ... and the token level ran
    off = build(toy_root, tmp_path, "ALIGN-reference", clip_paths, extra=["TRAINER.ALIGN.TOKEN_LEVEL", "False"])
    with torch.no_grad():
        assert not torch.allclose(off.model(_images()), ref.model(_images()), rtol=0, atol=1e-7), \
            "the token term must change the reference plan (D1)"
    paper = build(toy_root, tmp_path, "ALIGN", clip_paths)
    gi, gt, _ = _token_grads(paper)
    assert gi is not None and gi.abs().sum() > 0 and gt is not None and gt.abs().sum() > 0


def _images():
    torch.manual_seed(0)
    return torch.randn(2, 3, 32, 32)


def test_align_cli_train_then_eval_only(toy_root, tmp_path, tiny_vit_path):
    cfg = A + "vit_b16_c2_ep5_batch4_2ctx.yaml"
    opts = tiny_opts(tiny_vit_path) + FP32["ALIGN"] + ["DATASET.NUM_SHOTS", "2"]
    out = tmp_path / "run"
    code, log, err = run_cli(base_args(toy_root, out, "ALIGN", cfg, tiny_vit_path) + opts)
    assert code == 0, err
    rec = json.loads((out / "results.jsonl").read_text().splitlines()[-1])
    assert rec["split"] == "test" and rec["epoch"] == 1 and rec["method"] == "ALIGN"
    ev = tmp_path / "eval"
    code, _, err = run_cli(base_args(toy_root, ev, "ALIGN", cfg, tiny_vit_path) +
                           ["--eval-only", "--model-dir", str(out), "--load-epoch", "1"] + opts)
    assert code == 0, err
    erec = json.loads((ev / "results.jsonl").read_text().splitlines()[-1])
    assert erec["metrics"]["accuracy"] == rec["metrics"]["accuracy"] and erec["epoch"] == 1


@pytest.mark.parametrize("cfg_file", sorted(str(p.relative_to(ROOT)) for d in ("PLOT", "PLOTPP", "ALIGN")
                                            for p in (ROOT / "configs/trainers" / d).glob("*.yaml")
                                            if p.stem != "miniclip"))  # mini CLIP configs: regression tests
def test_configs_resolve(cfg_file, toy_root, tmp_path):
    from promptot.config import resolve
    from trainers.align import ALIGNConfig
    from trainers.plot import PLOTConfig
    from trainers.plotpp import PLOTPPConfig

    node = cfg_file.split("/")[2]
    cls = {"PLOT": PLOTConfig, "PLOTPP": PLOTPPConfig, "ALIGN": ALIGNConfig}[node]
    cfg = train.setup_cfg(train.build_parser().parse_args(base_args(toy_root, tmp_path, node, cfg_file, "")))
    c = resolve(cfg, cls)
    assert cfg.OPTIM.LR in (0.002, 0.0025) and cfg.OPTIM.WARMUP_CONS_LR == 1e-5 and c.PREC == "fp16"
    if node == "PLOT":
        assert c.GLOBAL_LOGIT == ("imagenet" in cfg_file) and cfg.DATALOADER.TRAIN_X.BATCH_SIZE == 128


def test_plot_global_logit_adds_the_reference_pooled_logit(toy_root, tmp_path, clip_paths):
    """GLOBAL_LOGIT True adds scale·s(global image feature, normalised mean of the *unnormalised* prompt features),
    as the reference code computes it; the flag must change the logits by exactly that amount."""
    on = build(toy_root, tmp_path, "PLOT-vit-global", clip_paths, extra=["TRAINER.PLOT.GLOBAL_LOGIT", "True"])
    off = build(toy_root, tmp_path, "PLOT-vit-global", clip_paths, extra=["TRAINER.PLOT.GLOBAL_LOGIT", "False"])
    off.model.prompt_learner.load_state_dict(on.model.prompt_learner.state_dict())
    x = _images()
    with torch.no_grad():
        txt = on.model.text_side()  # [C, N, D] raw
        glob = on.model.clip.encode_image(x).features
        pooled = F.normalize(txt.mean(1), dim=-1)
        expect = on.model.scale * F.normalize(glob, dim=-1) @ pooled.t()
        torch.testing.assert_close(on.model(x) - off.model(x), expect, rtol=1e-4, atol=1e-4)
        # normalising each prompt first (the old behaviour) gives another logit once the prompt norms differ
        txt_scaled = txt * torch.linspace(0.8, 1.2, txt.shape[1])[None, :, None]
        each = F.normalize(F.normalize(txt_scaled, dim=-1).mean(1), dim=-1)
        ref = F.normalize(txt_scaled.mean(1), dim=-1)
        assert (each - ref).abs().max() > 1e-3


def test_unconverged_sinkhorn_warns_once_and_logs_its_error(toy_root, tmp_path, clip_paths, capsys):
    tr = build(toy_root, tmp_path, "ALIGN", clip_paths,
               extra=["TRAINER.ALIGN.STOP", "fixed", "TRAINER.ALIGN.MAX_ITER", "1", "TRAINER.ALIGN.EPS_PROMPT", "0.01"])
    tr.set_model_mode("train")
    tr.num_batches, tr.epoch = 10, 0
    batch = next(iter(tr.train_loader_x))
    logs = []
    for tr.batch_idx in range(2):
        logs.append(tr.forward_backward(batch))
    out = capsys.readouterr().out
    assert out.count("WARNING: Sinkhorn stopped before convergence") == 1
    assert "TRAINER.ALIGN.MAX_ITER" in out and "TRAINER.ALIGN.DOMAIN log" in out
    assert all(d["ot_err"] > 1e-3 for d in logs)
    ok = build(toy_root, tmp_path, "ALIGN", clip_paths)  # defaults converge: logged, no warning
    ok.set_model_mode("train")
    ok.num_batches, ok.epoch, ok.batch_idx = 10, 0, 0
    assert ok.forward_backward(batch)["ot_err"] < 1e-3
    assert "Sinkhorn stopped before convergence" not in capsys.readouterr().out
