"""MaPLe, IVLP (and language-only), VPT and PromptSRC: the reference code's logits on the same weights, official
checkpoints through ``--model-dir``, parameter counts at ViT-B/16 widths, zero prompts = zero-shot CLIP, the reference
configs, transfer to other classes, and PromptSRC's Gaussian prompt aggregation across a resume.

The one-step / gradient / checkpoint / reload checks of these trainers are the registry tests (``test_registry.py``).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import (ROOT, base_args, base_then_new, build_registered, check_one_training_step,
                      resolved_reference_config, run_cli, tiny_opts)
from promptot.averaging import ParameterAverage, gaussian_epoch_weights
from promptot.clip import PromptedCLIP, build_tiny_clip, save_openai_state_dict
from promptot.errors import ConfigError, UserError
from promptot.prompts import MultiModalPrompts
from promptot.trainer import CheckpointMismatchError

GOLDEN = json.loads((ROOT / "tests/fixtures/maple_family/reference_logits.json").read_text())
NODES = {"MaPLe": "MAPLE", "IVLP": "IVLP", "VPT": "VPT", "PromptSRC": "PROMPTSRC"}


def opts(trainer: str, values: dict) -> list:
    return [x for k, v in values.items() for x in (f"TRAINER.{NODES[trainer]}.{k}", str(v))]


# ------------------------------------------------------------------ the reference code's numbers
@pytest.fixture(scope="module")
def vitb_width_clip(tmp_path_factory) -> str:
    """The fixture's tiny CLIP: ViT-B/16 widths (text 512, vision 768; MaPLe's reference hard-codes them), 2 layers,
    weights rounded to fp16-representable values as in the golden run."""
    model = build_tiny_clip(**GOLDEN["tiny_clip"])
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())
    path = tmp_path_factory.mktemp("clip") / "tiny_512_768.pt"
    return save_openai_state_dict(model, str(path))


def official_state(case: dict) -> dict:
    """The seeded official prompt values the golden run used (see the fixture's ``produced_by``)."""
    g = torch.Generator().manual_seed(case["param_seed"])
    return {k: (torch.randn(case["official_keys"][k], generator=g) * GOLDEN["param_std"]).half().float()
            for k in sorted(case["official_keys"])}


def write_official_checkpoint(directory: Path, case: dict, epoch: int = 5) -> dict:
    """An official-layout checkpoint: ``<folder>/model.pth.tar-<epoch>`` holding the whole model as the reference
    saves it (here the prompt values plus a few frozen entries standing in for the full CLIP)."""
    state = official_state(case)
    frozen = {"prompt_learner.token_prefix": torch.randn(4, 1, 512), "image_encoder.conv1.weight": torch.randn(3),
              "text_encoder.positional_embedding": torch.randn(77, 512), "logit_scale": torch.tensor(4.6),
              "prompt_learner.ZS_image_encoder.conv1.weight": torch.randn(3)}
    folder = directory / case["official_folder"]
    folder.mkdir(parents=True)
    torch.save({"state_dict": {**state, **frozen}, "epoch": epoch, "optimizer": None, "scheduler": None,
                "val_result": None}, folder / f"model.pth.tar-{epoch}")
    return state


def golden_images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(GOLDEN["image_seed"]))


@pytest.mark.parametrize("case_name", sorted(GOLDEN["methods"]))
def test_official_checkpoint_gives_the_reference_logits(case_name, vitb_width_clip, toy_root, tmp_path):
    """The reference code's logits (fp32) on the same CLIP, prompts and images, loading the prompts from an
    official-layout checkpoint through ``load_model`` (``--model-dir``)."""
    case = GOLDEN["methods"][case_name]
    tr = build_registered(case["trainer"], toy_root, tmp_path / "run", vitb_width_clip,
                          extra=opts(case["trainer"], case["opts"]))
    assert tr.classnames == GOLDEN["classnames"]
    official = write_official_checkpoint(tmp_path / "official", case)
    tr.load_model(str(tmp_path / "official"), epoch=5)
    # every official prompt tensor landed in exactly one of our parameters
    ours = dict(tr.model.prompt_learner.named_parameters())
    assert sum(p.numel() for p in ours.values()) == sum(v.numel() for v in official.values())
    matched = sum(any(p.numel() == v.numel() and torch.equal(p.detach().flatten(), v.flatten()) for p in ours.values())
                  for v in official.values())
    assert matched == len(official)
    tr.set_model_mode("eval")
    with torch.no_grad():
        logits = tr.model_inference(golden_images())
    torch.testing.assert_close(logits, torch.tensor(case["logits"]), rtol=1e-5, atol=1e-5)
    if "train_loss" in case:  # PromptSRC: the whole training loss of one batch, its self-regulating terms included
        tr.set_model_mode("train")
        loss, terms = tr.training_loss({"img": golden_images(), "label": torch.tensor(case["train_labels"])})
        assert loss.item() == pytest.approx(case["train_loss"], rel=1e-5)
        assert terms["scl_text"] > 0 and terms["scl_image"] > 0 and terms["scl_logits"] > 0


def test_official_checkpoint_with_deeper_prompts_is_refused(vitb_width_clip, toy_root, tmp_path):
    case = GOLDEN["methods"]["MaPLe_depth2"]
    write_official_checkpoint(tmp_path / "official", case)
    tr = build_registered("MaPLe", toy_root, tmp_path / "run", vitb_width_clip, extra=opts("MaPLe", {"PROMPT_DEPTH": 1}))
    with pytest.raises(CheckpointMismatchError, match="more prompt layers"):
        tr.load_model(str(tmp_path / "official"), epoch=5)


# ------------------------------------------------------------------ parameter counts at ViT-B/16 widths
def reference_config(path: str, node: str) -> dict:
    return yaml.safe_load((ROOT / "configs/trainers" / path).read_text())["TRAINER"][node]


def test_learnable_parameter_counts_at_vit_b16_widths():
    """Learner sizes from the committed reference configs, at text width 512 and vision width 768 (a CLIP with those
    widths and 1 layer per tower: the prompt modules do not check the depth against the CLIP)."""
    m = build_tiny_clip("vit", embed_dim=512, image_size=32, width=768, layers=1, patch_size=16, text_width=512,
                        text_layers=1)
    clip = PromptedCLIP(m.requires_grad_(False))
    names = ["cat", "dog", "double decker bus"]

    def count(**kw) -> int:
        return sum(p.numel() for p in MultiModalPrompts(clip, names, **kw).parameters())

    c = reference_config("MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml", "MAPLE")
    assert (c["N_CTX"], c["PROMPT_DEPTH"]) == (2, 9)
    maple = count(n_ctx=2, ctx_init=c["CTX_INIT"], text_depth=9, coupled=True)
    # ctx 2x512 + 8 deep text prompts 2x512 + 9 couplings Linear(512 -> 768) (the shallow one included)
    assert maple == 2 * 512 + 8 * 2 * 512 + 9 * (512 * 768 + 768) == 3_555_072

    c = reference_config("IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml", "IVLP")
    ivlp = count(n_ctx=c["N_CTX_TEXT"], ctx_init=c["CTX_INIT"], text_depth=c["PROMPT_DEPTH_TEXT"], coupled=False,
                 n_ctx_vision=c["N_CTX_VISION"], vision_depth=c["PROMPT_DEPTH_VISION"], vision_sets=1)
    # text: 12 layers x 2 x 512 (input context + 11 deep); vision: 12 layers x 2 x 768 (input prompt + 11 deep)
    assert ivlp == 12 * 2 * 512 + 12 * 2 * 768 == 30_720

    c = reference_config("IVLP/vit_b16_c2_ep5_batch4_4ctx_language_only.yaml", "IVLP")
    lang = count(n_ctx=c["N_CTX_TEXT"], ctx_init=c["CTX_INIT"], text_depth=c["PROMPT_DEPTH_TEXT"], coupled=False,
                 n_ctx_vision=c["N_CTX_VISION"], vision_depth=c["PROMPT_DEPTH_VISION"])
    assert lang == 12 * 4 * 512 == 24_576

    c = reference_config("VPT/vit_b16_c2_ep5_batch4_4.yaml", "VPT")
    vpt = count(learn_text=False, coupled=False, n_ctx_vision=c["N_CTX_VISION"], vision_depth=c["PROMPT_DEPTH_VISION"],
                vision_sets=1)
    assert vpt == 12 * 8 * 768 == 73_728

    c = reference_config("PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml", "PROMPTSRC")
    src = count(n_ctx=c["N_CTX_TEXT"], ctx_init=c["CTX_INIT"], text_depth=c["PROMPT_DEPTH_TEXT"], coupled=False,
                n_ctx_vision=c["N_CTX_VISION"], vision_depth=c["PROMPT_DEPTH_VISION"], vision_sets=1)
    assert src == 9 * 4 * 512 + 9 * 4 * 768 == 46_080


# ------------------------------------------------------------------ no prompts = zero-shot CLIP
NO_PROMPTS = {
    "MaPLe": [{"N_CTX": 0, "PROMPT_DEPTH": 1}, {"N_CTX": 0, "PROMPT_DEPTH": 2}],
    "IVLP": [{"N_CTX_TEXT": 0, "N_CTX_VISION": 0, "PROMPT_DEPTH_TEXT": 0, "PROMPT_DEPTH_VISION": 0}],
    "VPT": [{"N_CTX_VISION": 0, "PROMPT_DEPTH_VISION": 0}],
    "PromptSRC": [{"N_CTX_TEXT": 0, "N_CTX_VISION": 0, "PROMPT_DEPTH_TEXT": 0, "PROMPT_DEPTH_VISION": 0}],
}


@pytest.mark.parametrize("trainer", list(NO_PROMPTS))
def test_no_context_and_no_depth_is_zero_shot_clip(trainer, toy_root, tmp_path, tiny_vit_path):
    """With no context tokens (the whole CTX_INIT "a photo of a" fixed) and no deep prompts each method's logits are
    zero-shot CLIP's with the template "a photo of a {}."; with its mini-CLIP config they are not."""
    zs = build_registered("ZeroshotCLIP", toy_root, tmp_path / "zs", tiny_vit_path,
                          extra=["TRAINER.ZSCLIP.TEMPLATE", "a photo of a {}."])
    tr = build_registered(trainer, toy_root, tmp_path / "tr", tiny_vit_path)
    images = next(iter(tr.test_loader))["img"]
    with torch.no_grad():
        expected = zs.model(images)
        assert not torch.allclose(tr.model(images), expected, atol=1e-3)
        for values in NO_PROMPTS[trainer]:
            model = tr.compose(tr.model.clip, dataclasses.replace(tr.method_cfg, **values))
            torch.testing.assert_close(model(images), expected, rtol=1e-5, atol=1e-5)


def test_visual_prompts_on_a_resnet_are_a_config_error(toy_root, tmp_path, tiny_rn_path):
    argv = base_args(toy_root, tmp_path / "o", "VPT", "configs/trainers/VPT/miniclip.yaml", tiny_rn_path) + \
        tiny_opts(tiny_rn_path, size=64)
    code, _, err = run_cli(argv)
    assert code == 2 and "TRAINER.VPT.PROMPT_DEPTH_VISION" in err and "ViT" in err and "Traceback" not in err, err


def test_nothing_to_learn_is_a_config_error(toy_root, tmp_path, tiny_vit_path):
    with pytest.raises(ConfigError, match="nothing to learn"):
        build_registered("VPT", toy_root, tmp_path, tiny_vit_path, extra=opts("VPT", NO_PROMPTS["VPT"][0]))


# ------------------------------------------------------------------ configs and errors
SPEC = {  # baselines.md §5 (and the PromptSRC repository's configs): LR, epochs, method keys
    "MaPLe/vit_b16_c2_ep5_batch4_2ctx": (0.0035, 5, {"N_CTX": 2, "PROMPT_DEPTH": 9}),
    "MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets": (0.0026, 2, {"N_CTX": 2, "PROMPT_DEPTH": 3}),
    "IVLP/vit_b16_c2_ep5_batch4_2+2ctx": (0.0035, 5, {"N_CTX_VISION": 2, "N_CTX_TEXT": 2, "PROMPT_DEPTH_VISION": 12,
                                                       "PROMPT_DEPTH_TEXT": 12}),
    "IVLP/vit_b16_c2_ep5_batch4_4ctx_language_only": (0.0025, 5, {"N_CTX_VISION": 0, "N_CTX_TEXT": 4,
                                                                   "PROMPT_DEPTH_VISION": 0, "PROMPT_DEPTH_TEXT": 12}),
    "IVLP/vit_b16_c2_ep20_batch4_4+4ctx": (0.0025, 20, {"N_CTX_VISION": 4, "N_CTX_TEXT": 4, "PROMPT_DEPTH_VISION": 9,
                                                         "PROMPT_DEPTH_TEXT": 9}),
    "VPT/vit_b16_c2_ep5_batch4_4": (0.0025, 5, {"N_CTX_VISION": 8, "PROMPT_DEPTH_VISION": 12}),
    "PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx": (0.0025, 20, {"PROMPT_DEPTH_TEXT": 9, "GPA_MEAN": 15, "GPA_STD": 1,
                                                              "TEXT_LOSS_WEIGHT": 25, "IMAGE_LOSS_WEIGHT": 10}),
    "PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets": (0.0025, 20, {"PROMPT_DEPTH_TEXT": 3, "GPA_MEAN": 6,
                                                                             "GPA_STD": 10}),
    "PromptSRC/vit_b16_c2_ep50_batch4_4+4ctx_few_shot": (0.0025, 50, {"PROMPT_DEPTH_VISION": 9, "GPA_MEAN": 30,
                                                                       "GPA_STD": 30}),
}


@pytest.mark.parametrize("name", sorted(SPEC))
def test_reference_configs_resolve_to_the_spec(name, toy_root, tmp_path):
    cfg, c = resolved_reference_config(toy_root, tmp_path, name)
    lr, epochs, keys = SPEC[name]
    assert (cfg.OPTIM.LR, cfg.OPTIM.MAX_EPOCH, cfg.DATALOADER.TRAIN_X.BATCH_SIZE) == (lr, epochs, 4)
    assert cfg.MODEL.BACKBONE.NAME == "ViT-B/16" and c.PREC == "fp16" and c.CTX_INIT == "a photo of a"
    assert {k: getattr(c, k) for k in keys} == keys


@pytest.mark.parametrize("trainer,values,words", [
    ("MaPLe", {"N_CTX": 5}, ["TRAINER.MAPLE.N_CTX", "CTX_INIT"]),
    ("MaPLe", {"PROMPT_DEPTH": 9}, ["TRAINER.MAPLE.PROMPT_DEPTH", "2 layers"]),
    ("IVLP", {"N_CTX_VISION": 0}, ["TRAINER.IVLP.N_CTX_VISION", "language-only"]),
    ("VPT", {"PROMPT_DEPTH_VISION": 3}, ["TRAINER.VPT.PROMPT_DEPTH_VISION", "2 layers"]),
    ("PromptSRC", {"GPA_STD": 0}, ["TRAINER.PROMPTSRC.GPA_STD", "Gaussian"]),
])
def test_bad_values_are_one_paragraph_errors(trainer, values, words, toy_root, tmp_path, tiny_vit_path):
    argv = base_args(toy_root, tmp_path / "o", trainer, f"configs/trainers/{trainer}/miniclip.yaml", tiny_vit_path) + \
        tiny_opts(tiny_vit_path) + opts(trainer, values)
    code, _, err = run_cli(argv)
    assert code == 2 and "Traceback" not in err and all(w in err for w in words), err


# ------------------------------------------------------------------ transfer to other classes
@pytest.mark.parametrize("trainer", list(NODES))
def test_prompts_load_into_another_class_set(trainer, toy_root, tmp_path, tiny_vit_path):
    """Base-to-new: prompts trained on the base classes load unchanged into a run on the new classes."""
    base, new = base_then_new(
        lambda out, extra: build_registered(trainer, toy_root, out, tiny_vit_path, extra=extra), tmp_path)
    for (n, p), (_, q) in zip(base.model.prompt_learner.named_parameters(), new.model.prompt_learner.named_parameters()):
        assert torch.equal(p, q), n


# ------------------------------------------------------------------ PromptSRC: Gaussian prompt aggregation
def test_gaussian_epoch_weights_are_the_normalised_density():
    import math

    w = gaussian_epoch_weights(20, 15, 1)
    dens = [math.exp(-0.5 * (e - 15) ** 2) / math.sqrt(2 * math.pi) for e in range(1, 21)]
    assert w == pytest.approx([d / sum(dens) for d in dens], rel=1e-12)
    assert max(range(20), key=w.__getitem__) == 14 and sum(w) == pytest.approx(1.0)
    far = gaussian_epoch_weights(3, 100, 1)  # the density underflows to 0 everywhere; the softmax does not
    assert far == pytest.approx([0.0, 0.0, 1.0], abs=1e-12)
    with pytest.raises(ConfigError):
        gaussian_epoch_weights(3, 1, 0)


def test_parameter_average_sums_and_restores():
    a = ParameterAverage()
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    a.add([("p", p)], 0.25, epoch=1)
    with torch.no_grad():
        p.mul_(3)
    a.add([("p", p)], 0.75, epoch=2)
    b = ParameterAverage()
    b.load_state_dict(a.state_dict())
    b.copy_to([("p", p)])
    assert torch.equal(p.detach(), torch.tensor([0.25 + 2.25, 0.5 + 4.5])) and b.epochs == [1, 2]
    with pytest.raises(ValueError, match="already"):
        a.add([("p", p)], 0.1, epoch=2)


def _promptsrc(toy_root, out, clip_path):
    return build_registered("PromptSRC", toy_root, out, clip_path, epochs=3,
                            extra=opts("PromptSRC", {"GPA_MEAN": 2, "GPA_STD": 1}) + ["TRAIN.CHECKPOINT_FREQ", "1"])


def _record_epochs(tr) -> dict:
    """Wrap the aggregate's ``add`` to keep each epoch's prompts ``θ_e``."""
    seen, add = {}, tr.gpa.add

    def recording(params, weight, epoch):
        params = list(params)
        seen[epoch] = {n: p.detach().clone() for n, p in params}
        add(params, weight, epoch)

    tr.gpa.add = recording
    return seen


def test_gpa_final_prompts_are_the_weighted_mean_and_survive_a_resume(toy_root, tmp_path, tiny_vit_path):
    out = tmp_path / "run"
    tr = _promptsrc(toy_root, out, tiny_vit_path)
    w = tr.gpa_weights
    assert w == pytest.approx(gaussian_epoch_weights(3, 2, 1))
    seen = _record_epochs(tr)
    tr.max_epoch = 2  # stop after 2 of 3 epochs, as a killed run would
    tr.train()
    ck2 = torch.load(out / "prompt_learner" / "model.pth.tar-2", weights_only=False)
    for n, p in tr.model.prompt_learner.named_parameters():  # not aggregated before the last epoch
        assert torch.equal(ck2["state_dict"][n], seen[2][n]) and torch.equal(p.detach(), seen[2][n])
    assert ck2["learner_state"]["gpa"]["epochs"] == [1, 2]

    resumed = _promptsrc(toy_root, out, tiny_vit_path)
    seen_after = _record_epochs(resumed)
    resumed.train()  # resumes at epoch 3, the last one
    assert resumed.start_epoch == 2 and list(seen_after) == [3]
    final = torch.load(out / "prompt_learner" / "model.pth.tar-3", weights_only=False)
    for n, p in resumed.model.prompt_learner.named_parameters():
        expected = w[0] * seen[1][n] + w[1] * seen[2][n] + w[2] * seen_after[3][n]
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-7)
        assert torch.equal(final["state_dict"][n], p.detach())  # model.pth.tar-N holds the aggregate
        assert not torch.allclose(expected, seen_after[3][n])


def test_gpa_resume_without_the_aggregate_is_refused(toy_root, tmp_path, tiny_vit_path):
    out = tmp_path / "run"
    tr = _promptsrc(toy_root, out, tiny_vit_path)
    tr.max_epoch = 1
    tr.train()
    path = out / "prompt_learner" / "model.pth.tar-1"
    ck = torch.load(path, weights_only=False)
    del ck["learner_state"]
    torch.save(ck, path)
    with pytest.raises(UserError, match="no prompt aggregate"):
        _promptsrc(toy_root, out, tiny_vit_path).train()


# ------------------------------------------------------------------ precisions
@pytest.mark.parametrize("prec", ["fp16", "amp"])
@pytest.mark.parametrize("trainer", list(NODES))
def test_precisions_train_one_step(trainer, prec, toy_root, tmp_path, tiny_vit_path):
    tr = build_registered(trainer, toy_root, tmp_path, tiny_vit_path, extra=opts(trainer, {"PREC": prec}))
    assert tr.model.clip.dtype == (torch.float16 if prec == "fp16" else torch.float32)
    check_one_training_step(tr)
    with torch.no_grad():
        logits = tr.model_inference(next(iter(tr.test_loader))["img"])
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
