"""DPT, VLP and DPT's VPT (``VPT`` with ``INSERT append``): the reference code's logits and training losses on the same
weights, official checkpoints through ``--model-dir``, the three optimizers and their LR traces, the warm-up switch,
the auxiliary class-aware loss, parameter counts at ViT-B/32 widths, transfer to other classes, precisions,
evaluation passes and the reference configs.

The one-step / gradient / checkpoint / reload checks of DPT, VLP and VPT's mini-CLIP configs are the registry tests
(``test_registry.py``); the appended-prompt insertion itself is checked in ``test_append_prompts.py``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import (ROOT, base_args, base_then_new, build_registered, check_one_training_step,
                      resolved_reference_config, run_cli, tiny_opts)
from promptot.class_prompts import AUX_KEY, ClassAwarePrompts, class_aware_loss, top_classes
from promptot.clip import PromptedCLIP, build_tiny_clip, save_openai_state_dict

GOLDEN = json.loads((ROOT / "tests/fixtures/dpt/reference_values.json").read_text())
NODES = {"DPT": "DPT", "VLP": "VLP", "VPT": "VPT"}
# DPT's VPT: the registry runs VPT with MaPLe's insertion; these options give DPT's (configs/trainers/VPT/*_dpt.yaml)
VPT_DPT = {"INSERT": "append", "TEMPLATE": "dataset"}


def opts(trainer: str, values: dict) -> list:
    return [x for k, v in values.items() for x in (f"TRAINER.{NODES[trainer]}.{k}", str(v))]


def build(trainer: str, toy_root, out, clip_path, values=None, extra=()):
    values = dict(VPT_DPT, **(values or {})) if trainer == "VPT" else (values or {})
    return build_registered(trainer, toy_root, out, clip_path, extra=opts(trainer, values) + list(extra))


def one_batch(tr) -> dict:
    return next(iter(tr.train_loader_x))


# ------------------------------------------------------------------ the reference code's numbers
@pytest.fixture(scope="module")
def b32_clip(tmp_path_factory) -> str:
    """The fixture's tiny CLIP: ViT-B/32 widths (embed 512, text 512, vision 768), 2 layers, weights rounded to
    fp16-representable values as in the golden run."""
    model = build_tiny_clip(**GOLDEN["tiny_clip"])
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())
    return save_openai_state_dict(model, str(tmp_path_factory.mktemp("clip") / "tiny_b32.pt"))


def official_values(case: dict) -> dict:
    """The seeded official prompt values of the golden run ('<folder>/<key>' -> tensor; see ``produced_by``)."""
    g = torch.Generator().manual_seed(case["param_seed"])
    out = {}
    for k in sorted(case["official_keys"]):
        v = torch.randn(case["official_keys"][k], generator=g) * GOLDEN["param_std"]
        if k.split("/")[-1].startswith("lns") and k.endswith(".weight"):
            v = v + 1.0
        out[k] = v.half().float()
    return out


def write_official_checkpoint(directory: Path, case: dict, epoch: int = 5) -> dict:
    """The reference's layout: one folder per registered model holding ``model.pth.tar-<epoch>`` with its whole
    state dict (the text learner also saves its class-dependent token buffers)."""
    values = official_values(case)
    folders = {}
    for k, v in values.items():
        folder, key = k.split("/")
        folders.setdefault(folder, {})[key] = v
    if "prompt_learner" in folders:
        folders["prompt_learner"].update(token_prefix=torch.randn(4, 1, 512), token_suffix=torch.randn(4, 72, 512))
    for folder, state in folders.items():
        (directory / folder).mkdir(parents=True)
        torch.save({"state_dict": state, "epoch": epoch, "optimizer": None, "scheduler": None, "val_result": None},
                   directory / folder / f"model.pth.tar-{epoch}")
    return values


def golden_images() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(GOLDEN["image_seed"]))


def golden_trainer(name: str, toy_root, tmp_path, clip_path):
    case = GOLDEN["methods"][name]
    values = dict(case["opts"], TEMPLATE=GOLDEN["dataset_template"], PREC="fp32")
    tr = build(case["trainer"], toy_root, tmp_path / "run", clip_path, values)
    assert tr.classnames == GOLDEN["classnames"]
    official = write_official_checkpoint(tmp_path / "official", case)
    tr.load_model(str(tmp_path / "official"), epoch=5)
    ours = [p for _, p in tr.learnable_parameters()]
    assert sum(p.numel() for p in ours) == sum(v.numel() for v in official.values())
    return tr


@pytest.mark.parametrize("name", sorted(GOLDEN["methods"]))
def test_official_checkpoint_gives_the_reference_logits(name, b32_clip, toy_root, tmp_path):
    """The reference code's logits (fp32) on the same CLIP, prompts and images, the prompts read from an
    official-layout checkpoint through ``load_model`` (``--model-dir``)."""
    case = GOLDEN["methods"][name]
    tr = golden_trainer(name, toy_root, tmp_path, b32_clip)
    tr.set_model_mode("eval")
    with torch.no_grad():
        logits = tr.model_inference(golden_images())
        if name == "DPT":
            out = tr.model.run(golden_images())
            assert out.aux["topk"].tolist() == case["topk"]
            # layer 0's auxiliary logits [B, K, C]: the official C-way classifier on the official prompts
            torch.testing.assert_close(out.aux[AUX_KEY][0], torch.tensor(case["aux_logits_layer0"]), rtol=1e-5,
                                       atol=1e-5)
    torch.testing.assert_close(logits, torch.tensor(case["logits"]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["DPT", "VLP"])
def test_training_loss_is_the_reference_loss_across_the_warm_up(name, b32_clip, toy_root, tmp_path):
    """The whole training loss of one batch, as the reference's forward_backward computes it, in the warm-up (epochs
    0 and PRETRAIN_C - 1) and after it (epoch PRETRAIN_C); for DPT also with every ground truth outside the top K
    (no auxiliary term)."""
    case = GOLDEN["methods"][name]
    tr = golden_trainer(name, toy_root, tmp_path, b32_clip)
    tr.set_model_mode("eval")  # as the golden run: no dropout anywhere, so train/eval give the same numbers
    runs = [("train_labels", "train_loss_by_epoch")] + ([("outside_labels", "outside_loss_by_epoch")]
                                                         if name == "DPT" else [])
    for labels, by_epoch in runs:
        for epoch, expected in case[by_epoch].items():
            tr.epoch = int(epoch)
            with torch.no_grad():
                loss, terms = tr.training_loss({"img": golden_images(), "label": torch.tensor(case[labels])})
            assert loss.item() == pytest.approx(expected, rel=1e-5), (labels, epoch)
            if name == "DPT":
                assert terms["aux_n"] == (0 if labels == "outside_labels" else 2)  # 2 images x 1 CAVPT layer


def test_official_checkpoint_with_another_bottomlimit_is_refused(b32_clip, toy_root, tmp_path):
    from promptot.trainer import CheckpointMismatchError

    case = GOLDEN["methods"]["DPT"]
    write_official_checkpoint(tmp_path / "official", case)
    tr = build("DPT", toy_root, tmp_path / "run", b32_clip, dict(case["opts"], BOTTOMLIMIT=1))
    with pytest.raises(CheckpointMismatchError, match="CAVPT layers|prompted layers"):
        tr.load_model(str(tmp_path / "official"), epoch=5)


# ------------------------------------------------------------------ parameter counts at ViT-B/32 widths
def test_learnable_parameter_counts_at_vit_b32_widths():
    """Spec §4.1 with the launch script's settings (N_CTX 16, VPT N_CTX 10, BOTTOMLIMIT 12 on a 12-layer ViT-B/32: 11
    deep-VPT layers and 1 CAVPT layer), at text width 512, vision width 768 and embedding 512 (a CLIP with those
    widths and 1 layer per tower: the prompt modules take their widths from the CLIP, the depths from the config)."""
    from trainers.vlp import appended_visual_prompts

    m = build_tiny_clip("vit", embed_dim=512, image_size=32, width=768, layers=1, patch_size=16, text_width=512,
                        text_layers=1)
    clip = PromptedCLIP(m.requires_grad_(False))

    class Stub:  # what appended_visual_prompts reads from a trainer
        classnames = ["cat", "dog", "bus"]
        param_dtype = torch.float32

    vpt = sum(p.numel() for p in appended_visual_prompts(Stub(), clip, n_ctx=10, depth=12 - 1).parameters())
    assert vpt == 11 * 10 * 768 == 84_480
    for n_cls in (10, 100):
        cavpt = ClassAwarePrompts(12 - 11, clip.embed_dim, clip.vision_width, n_cls)
        per_layer = (512 * 768 + 768  # meta-net Linear 512 -> 768 with bias: 393,984
                     + 2 * 768 * 32  # query and key maps 768 -> 32, bias-free: 24,576 each
                     + 768 * 768  # output map 768 -> 768, bias-free: 589,824
                     + 10 * 768  # learnable key/value tokens: 7,680
                     + 2 * 2 * 768  # two LayerNorms: 3,072
                     + 768 * n_cls)  # the class-specific classifier 768 -> C, bias-free
        assert sum(p.numel() for p in cavpt.parameters()) == per_layer == 1_043_712 + 768 * n_cls
        assert {k for k in cavpt.state_dict() if k.startswith(cavpt.class_specific_keys)} == \
            {"layers.0.classifier.weight"}


# ------------------------------------------------------------------ one step, three optimizers, LR traces
@pytest.mark.parametrize("trainer", ["DPT", "VLP", "VPT"])
def test_one_step_gradients_exactly_on_each_group(trainer, toy_root, tmp_path, tiny_vit_path):
    tr = build(trainer, toy_root, tmp_path, tiny_vit_path)
    groups = {"DPT": {"prompt_learner", "visual_prompts", "cavpt"}, "VLP": {"prompt_learner", "visual_prompts"},
              "VPT": {"prompt_learner"}}[trainer]
    assert set(tr.get_model_names()) == groups
    # each optimizer holds exactly its learner's parameters
    for n in groups:
        assert {id(p) for g in tr._optims[n].param_groups for p in g["params"]} == \
            {id(p) for p in tr._models[n].parameters()}, n
    before = {n: [p.detach().clone() for p in tr._models[n].parameters()] for n in groups}
    check_one_training_step(tr)  # finite loss, nonzero gradient on every learnable, none elsewhere, CLIP unchanged
    for n in groups:
        assert all(not torch.equal(a, b) for a, b in zip(before[n], tr._models[n].parameters())), n


def lr_traces(tr, epochs: int) -> dict:
    trace = {n: [] for n in tr.get_model_names()}
    batch = one_batch(tr)
    for tr.epoch in range(epochs):
        for n in trace:
            trace[n].append(tr._optims[n].param_groups[0]["lr"])
        tr.num_batches, tr.batch_idx = 1, 0
        tr.forward_backward(batch)
    return trace


def test_each_group_follows_its_own_lr_and_warm_up(toy_root, tmp_path, tiny_vit_path):
    """Text, visual prompts and CAVPT: three optimizers in one loop, each LR trace from its own config keys (-1 =
    OPTIM's value), cosine over MAX_EPOCH after a constant warm-up at OPTIM.WARMUP_CONS_LR (Dassl's recount)."""
    epochs = 5
    tr = build("DPT", toy_root, tmp_path, tiny_vit_path,
               {"TEXT_LR": 0.002, "TEXT_WARMUP_EPOCH": 1, "VPT_LR": -1.0, "VPT_WARMUP_EPOCH": -1, "CAVPT_LR": 0.03,
                "CAVPT_WARMUP_EPOCH": 0},
               extra=["OPTIM.NAME", "sgd", "OPTIM.LR", "0.01", "OPTIM.WARMUP_EPOCH", "2", "OPTIM.WARMUP_CONS_LR",
                      "1e-5", "OPTIM.MAX_EPOCH", str(epochs)])
    trace = lr_traces(tr, epochs)

    def cosine(lr, e):
        return lr * 0.5 * (1 + math.cos(math.pi * e / epochs))

    assert trace["prompt_learner"] == pytest.approx([1e-5] + [cosine(0.002, e) for e in range(epochs - 1)])
    assert trace["visual_prompts"] == pytest.approx([1e-5, 1e-5] + [cosine(0.01, e) for e in range(epochs - 2)])
    assert trace["cavpt"] == pytest.approx([cosine(0.03, e) for e in range(epochs)])


def test_lr_traces_go_to_tensorboard_per_group(toy_root, tmp_path, tiny_vit_path):
    tr = build("DPT", toy_root, tmp_path, tiny_vit_path)
    written = []
    tr.write_scalar = lambda tag, value, step=None: written.append((tag, step))
    tr.epoch, tr.batch_idx, tr.num_batches = 0, 0, 1
    tr.after_epoch()
    assert {t for t, _ in written} >= {"train/lr_prompt_learner", "train/lr_visual_prompts", "train/lr_cavpt"}


# ------------------------------------------------------------------ warm-up schedule
@pytest.mark.parametrize("trainer", ["DPT", "VLP"])
def test_warm_up_switches_at_pretrain_c(trainer, toy_root, tmp_path, tiny_vit_path):
    """Epochs < PRETRAIN_C: GK_TEXT_WEIGHT·gk_text + GK_IMAGE_WEIGHT·gk_image + GK_MAIN_WEIGHT·ce (+ ALPHA·aux);
    from PRETRAIN_C on: ce (+ ALPHA·aux). Checked on the logged terms of real training steps."""
    w = {"PRETRAIN_C": 2, "GK_TEXT_WEIGHT": 0.7, "GK_IMAGE_WEIGHT": 1.3, "GK_MAIN_WEIGHT": 0.1}
    if trainer == "DPT":
        w["ALPHA"] = 0.3
    tr = build(trainer, toy_root, tmp_path, tiny_vit_path, w, extra=["OPTIM.MAX_EPOCH", "4"])
    batch = one_batch(tr)
    tr.set_model_mode("train")
    logged = {}
    for tr.epoch in range(4):
        tr.num_batches, tr.batch_idx = 1, 0
        logged[tr.epoch] = tr.forward_backward(batch)
    alpha = w.get("ALPHA", 0.0)
    for e, s in logged.items():
        aux = s["aux"] if trainer == "DPT" else 0.0
        if e < 2:
            assert {"gk_text", "gk_image"} <= set(s), e
            expected = 0.7 * s["gk_text"] + 1.3 * s["gk_image"] + 0.1 * s["ce"] + alpha * aux
        else:
            assert not {"gk_text", "gk_image"} & set(s), e
            expected = s["ce"] + alpha * aux
        assert s["loss"] == pytest.approx(expected, rel=1e-5), e
        if trainer == "DPT":
            assert s["aux"] > 0 and s["aux_n"] == 4  # 4 images, K = C: every ground truth selected, 1 CAVPT layer


def test_vlp_runs_the_frozen_pass_only_in_the_warm_up(toy_root, tmp_path, tiny_vit_path, monkeypatch):
    tr = build("VLP", toy_root, tmp_path, tiny_vit_path, {"PRETRAIN_C": 1})
    calls = []
    frozen = tr.model.frozen_image
    monkeypatch.setattr(tr.model, "frozen_image", lambda x: calls.append(len(x)) or frozen(x))
    batch = one_batch(tr)
    for tr.epoch in (0, 1):
        tr.training_loss(batch)
    assert calls == [len(batch["img"])]


# ------------------------------------------------------------------ the auxiliary class-aware loss
def test_aux_loss_counts_only_ground_truth_prompts():
    """Per layer and image: CE of the prompt whose selected class is the ground truth; images whose ground truth is
    outside their top K contribute nothing, whatever their logits."""
    torch.manual_seed(0)
    b, k, c = 3, 2, 5
    layers = [torch.randn(b, k, c, requires_grad=True) for _ in range(2)]
    selected = torch.tensor([[1, 3], [0, 2], [4, 0]])
    labels = torch.tensor([3, 1, 4])  # image 0: slot 1; image 1: outside; image 2: slot 0
    loss, n = class_aware_loss(layers, selected, labels)
    rows = [(0, 1), (2, 0)]
    expected = torch.stack([torch.nn.functional.cross_entropy(lg[i, j][None], labels[i][None])
                            for lg in layers for i, j in rows]).mean()
    assert n == 4 and loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    for lg in layers:
        assert lg.grad[1].abs().sum() == 0  # the image whose ground truth is outside its top K
        assert lg.grad[0, 1].abs().sum() > 0 and lg.grad[0, 0].abs().sum() == 0
    none, n = class_aware_loss(layers, selected, torch.tensor([0, 3, 1]))
    assert n == 0 and none.item() == 0.0


def test_top_k_is_clamped_to_the_classes(toy_root, tmp_path, tiny_vit_path):
    tr = build("DPT", toy_root, tmp_path, tiny_vit_path, {"CPN": 10})
    assert len(tr.classnames) == 4 and tr.model.k == 4
    assert tr.effective["TRAINER.DPT.CPN"][0] == 4
    out = tr.model.run(one_batch(tr)["img"])
    assert out.aux["topk"].shape == (4, 4) and out.aux[AUX_KEY][0].shape == (4, 4, 4)
    assert top_classes(torch.randn(2, 8), torch.randn(3, 8), 7).shape == (2, 3)


def _dpt_grads(toy_root, tmp_path, clip_path, alpha: float, with_aux: bool, force: bool, monkeypatch):
    """Gradients of one DPT training loss with K = 1; ``force``: the top-1 class is each image's ground truth."""
    import trainers.dpt as dpt

    tr = build("DPT", toy_root, tmp_path, clip_path, {"ALPHA": alpha, "CPN": 1})
    batch = one_batch(tr)
    if force:
        monkeypatch.setattr(dpt, "top_classes", lambda img, txt, k: batch["label"][:, None])
    else:
        monkeypatch.setattr(dpt, "top_classes", lambda img, txt, k: (batch["label"][:, None] + 1) % 4)
    if not with_aux:
        monkeypatch.setattr(tr, "extra_loss", lambda out, label, terms: out.logits.new_zeros(()))
    tr.epoch = 0
    tr.model_zero_grad()
    loss, terms = tr.training_loss(batch)
    loss.backward()
    monkeypatch.undo()
    return {n: (p.grad.clone() if p.grad is not None else None) for n, p in tr.learnable_parameters()}, terms


def test_aux_path_gives_no_gradient_with_alpha_zero(toy_root, tmp_path, tiny_vit_path, monkeypatch):
    """Top K forced to the ground truth (every image has an aux prompt) and ALPHA 0: every gradient equals the one
    without the auxiliary term, and the classifier and its LayerNorm get zero; with ALPHA 0.3 they do not (so the
    check can fail)."""
    g0, terms = _dpt_grads(toy_root, tmp_path / "a", tiny_vit_path, 0.0, True, True, monkeypatch)
    assert terms["aux_n"] == 4 and terms["aux"] > 0
    ref, _ = _dpt_grads(toy_root, tmp_path / "b", tiny_vit_path, 0.0, False, True, monkeypatch)
    aux_only = {n for n in g0 if ref[n] is None}  # used by the auxiliary logits only
    assert aux_only == {"cavpt.layers.0.classifier.weight", "cavpt.layers.0.norm_aux.weight",
                        "cavpt.layers.0.norm_aux.bias"}
    for n in g0:
        if n in aux_only:
            assert g0[n] is not None and g0[n].abs().sum() == 0, n
        else:
            torch.testing.assert_close(g0[n], ref[n], rtol=0, atol=0, msg=n)
    g3, _ = _dpt_grads(toy_root, tmp_path / "c", tiny_vit_path, 0.3, True, True, monkeypatch)
    assert g3["cavpt.layers.0.classifier.weight"].abs().sum() > 0


def test_no_aux_loss_when_ground_truth_is_outside_the_top_k(toy_root, tmp_path, tiny_vit_path, monkeypatch):
    g, terms = _dpt_grads(toy_root, tmp_path, tiny_vit_path, 0.3, True, False, monkeypatch)
    assert terms["aux_n"] == 0 and terms["aux"].item() == 0.0
    assert g["cavpt.layers.0.classifier.weight"].abs().sum() == 0


# ------------------------------------------------------------------ evaluation
def test_evaluation_batches_two_vit_passes_and_caches_text(toy_root, tmp_path, tiny_vit_path, monkeypatch):
    """Per test batch: one frozen pass (top K) and one prompted pass, each over the whole batch; the learned class
    features are encoded once per evaluation and the template features never (computed when the model is built)."""
    tr = build("DPT", toy_root, tmp_path, tiny_vit_path)
    clip = tr.model.clip
    calls = {"image": [], "text": 0}
    enc_img, enc_txt = clip.encode_image, clip.encode_text

    def image(x, *a, **k):
        calls["image"].append((len(x), bool(k.get("hooks"))))
        return enc_img(x, *a, **k)

    def text(*a, **k):
        calls["text"] += 1
        return enc_txt(*a, **k)

    monkeypatch.setattr(clip, "encode_image", image)
    monkeypatch.setattr(clip, "encode_text", text)
    tr.test()
    sizes = [len(b["img"]) for b in tr.test_loader]
    assert calls["text"] == 1
    assert calls["image"] == [c for n in sizes for c in ((n, False), (n, True))]


# ------------------------------------------------------------------ transfer, precisions, errors, configs
@pytest.mark.parametrize("trainer", ["DPT", "VLP", "VPT"])
def test_prompts_load_into_another_class_set(trainer, toy_root, tmp_path, tiny_vit_path):
    """Base-to-new: everything but DPT's auxiliary classifiers loads into a run on other classes; they are dropped
    (the new run keeps its own, unused at inference)."""
    base, new = base_then_new(lambda out, extra: build(trainer, toy_root, out, tiny_vit_path, extra=extra), tmp_path)
    for name, p in base.learnable_parameters():
        q = dict(new.learnable_parameters())[name]
        assert torch.equal(p, q) != ("classifier" in name), name
    with torch.no_grad():
        assert torch.isfinite(new.model_inference(next(iter(new.test_loader))["img"])).all()


@pytest.mark.parametrize("prec", ["fp16", "fp32", "amp"])
@pytest.mark.parametrize("trainer", ["DPT", "VLP", "VPT"])
def test_precisions_train_one_step(trainer, prec, toy_root, tmp_path, tiny_vit_path):
    """CAVPT and the prompts follow PREC (the reference casts CAVPT to fp16 whatever PREC says). fp16 updates the half
    parameters directly, as the reference, with its SGD: Adam's eps (1e-8) is 0 in half precision, so Adam turns
    parameters whose squared gradients underflow into NaN (use amp with Adam)."""
    sgd = ["OPTIM.NAME", "sgd"] if prec == "fp16" else []
    tr = build(trainer, toy_root, tmp_path, tiny_vit_path, {"PREC": prec}, extra=sgd)
    want = torch.float16 if prec == "fp16" else torch.float32
    assert tr.model.clip.dtype == want
    for n, p in tr.learnable_parameters():
        assert p.dtype == (want if trainer != "VPT" else torch.float32), n  # VPT: MaPLe's fp32 deep prompts
    check_one_training_step(tr)
    with torch.no_grad():
        logits = tr.model_inference(next(iter(tr.test_loader))["img"])
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


@pytest.mark.parametrize("trainer,values,words", [
    ("DPT", {"BOTTOMLIMIT": 3}, ["TRAINER.DPT.BOTTOMLIMIT", "2 layers", "VLP"]),
    ("DPT", {"CPN": 0}, ["TRAINER.DPT.CPN", ">= 1"]),
    ("DPT", {"ALPHA": -1.0}, ["TRAINER.DPT.ALPHA", ">= 0"]),
    ("DPT", {"CAVPT_LR": 0.0}, ["TRAINER.DPT.CAVPT_LR", "-1"]),
    ("VLP", {"VPT_WARMUP_EPOCH": -2}, ["TRAINER.VLP.VPT_WARMUP_EPOCH", "OPTIM.WARMUP_EPOCH"]),
    ("VLP", {"GK_MAIN_WEIGHT": -0.1}, ["TRAINER.VLP.GK_MAIN_WEIGHT", "loss weight"]),
    ("VPT", {"INSERT": "prepend"}, ["TRAINER.VPT.INSERT", "append", "replace"]),
    ("VPT", {"TEMPLATE": "a photo"}, ["TRAINER.VPT.TEMPLATE", "dataset", "{}"]),
])
def test_bad_values_are_one_paragraph_errors(trainer, values, words, toy_root, tmp_path, tiny_vit_path):
    argv = base_args(toy_root, tmp_path / "o", trainer, f"configs/trainers/{trainer}/miniclip.yaml", tiny_vit_path) + \
        tiny_opts(tiny_vit_path) + opts(trainer, values)
    code, _, err = run_cli(argv)
    assert code == 2 and "Traceback" not in err and all(w in err for w in words), err


def test_bottomlimit_1_is_cavpt_in_every_layer(toy_root, tmp_path, tiny_vit_path):
    tr = build("DPT", toy_root, tmp_path, tiny_vit_path, {"BOTTOMLIMIT": 1})
    assert set(tr.get_model_names()) == {"prompt_learner", "cavpt"}
    assert len(tr.model.prompt_learner.cavpt.layers) == 2
    out = tr.model.run(one_batch(tr)["img"])
    assert len(out.aux[AUX_KEY]) == 2
    check_one_training_step(tr)


def test_vpt_dpt_classifier_uses_the_dataset_template(toy_root, tmp_path, tiny_vit_path):
    from promptot.model import template_features

    tr = build("VPT", toy_root, tmp_path, tiny_vit_path, {"TEMPLATE": "a {} thing."})
    expected = template_features(tr.model.clip, tr.classnames, ["a {} thing."], verbose=False)
    torch.testing.assert_close(tr.model.frozen_text, expected)
    default = build_registered("VPT", toy_root, tmp_path / "d", tiny_vit_path)
    assert not torch.allclose(default.model.frozen_text, expected)


SPEC = {  # config -> (OPTIM.LR, MAX_EPOCH, WARMUP_EPOCH, typed keys)
    "DPT/vit_b32_deep": (0.01, 60, 10, {"N_CTX": 16, "VPT_N_CTX": 10, "BOTTOMLIMIT": 12, "CPN": 10, "PRETRAIN_C": 30,
                                        "ALPHA": 0.3, "TEXT_LR": 0.002, "TEXT_WARMUP_EPOCH": 1, "CAVPT_LR": -1,
                                        "CAVPT_WARMUP_EPOCH": -1, "VPT_LR": -1, "VPT_WARMUP_EPOCH": -1}),
    "DPT/vit_b32_deep_train_py": (0.01, 100, 10, {"VPT_N_CTX": 5, "CPN": 5, "ALPHA": 1.0, "BOTTOMLIMIT": 12}),
    "DPT/vit_b32_deep_base2new": (0.01, 60, 10, {"VPT_N_CTX": 10, "CPN": 10, "ALPHA": 0.3}),
    "DPT/vit_b32_deep_cross_datasets": (0.01, 60, 10, {"VPT_WARMUP_EPOCH": 1, "CAVPT_WARMUP_EPOCH": 1,
                                                       "TEXT_WARMUP_EPOCH": 1}),
    "VLP/vit_b32_deep": (0.01, 60, 10, {"N_CTX": 16, "VPT_N_CTX": 10, "PRETRAIN_C": 30, "GK_MAIN_WEIGHT": 0.1}),
    "VLP/vit_b32_deep_train_py": (0.01, 100, 10, {"VPT_N_CTX": 5}),
    "VLP/vit_b32_deep_cross_datasets": (0.01, 60, 10, {"VPT_WARMUP_EPOCH": 1}),
    "VPT/vit_b32_deep_dpt": (0.01, 60, 10, {"N_CTX_VISION": 10, "PROMPT_DEPTH_VISION": 12, "INSERT": "append",
                                            "TEMPLATE": "dataset"}),
    "VPT/vit_b32_deep_dpt_train_py": (0.01, 100, 10, {"N_CTX_VISION": 5, "PROMPT_DEPTH_VISION": 12}),
}


@pytest.mark.parametrize("name", sorted(SPEC))
def test_reference_configs_resolve_to_the_spec(name, toy_root, tmp_path):
    cfg, c = resolved_reference_config(toy_root, tmp_path, name)
    lr, epochs, warm, keys = SPEC[name]
    assert (cfg.OPTIM.NAME, cfg.OPTIM.LR, cfg.OPTIM.MAX_EPOCH, cfg.OPTIM.WARMUP_EPOCH) == ("sgd", lr, epochs, warm)
    assert (cfg.DATALOADER.TRAIN_X.BATCH_SIZE, cfg.DATALOADER.TEST.BATCH_SIZE, cfg.OPTIM.WARMUP_CONS_LR) == (32, 50, 1e-5)
    assert cfg.MODEL.BACKBONE.NAME == "ViT-B/32" and c.PREC == "fp16"
    assert {k: getattr(c, k) for k in keys} == keys
