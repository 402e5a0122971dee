"""The shared prompt modules (``promptot/prompts.py``) and model encoders (``promptot/model.py``), by value."""
from __future__ import annotations

import pytest
import torch

from promptot.clip import PromptedCLIP, build_tiny_clip, token_length, tokenize
from promptot.errors import ConfigError
from promptot.model import CosineModel, PromptModel
from promptot.prompts import DeepPrompts, MetaNet, MultiModalPrompts, TextPrompts

NAMES = ["golden retriever", "cat", "double decker bus"]


@pytest.fixture(scope="module")
def clip() -> PromptedCLIP:
    m = build_tiny_clip("vit", embed_dim=32, image_size=32, width=64, layers=3, patch_size=8, text_layers=3)
    m.requires_grad_(False)
    return PromptedCLIP(m)


def emb(clip, text: str) -> torch.Tensor:
    return clip.embed_tokens(tokenize(text))[0]


@pytest.mark.parametrize("position,template", [("end", "a photo of a {}."), ("middle", "a photo {} of a."),
                                               ("front", "{} a photo of a.")])
def test_class_token_positions_build_the_right_sentence(clip, position, template):
    """With the context initialised from words, each prompt equals the embedding of the sentence it spells."""
    tp = TextPrompts(clip, NAMES, ctx_init="a photo of a", init_mode="coop", position=position)
    built = tp.build()
    assert built.shape == (len(NAMES), 77, clip.text_width)
    for c, name in enumerate(NAMES):
        torch.testing.assert_close(built[c], emb(clip, template.format(name)), rtol=0, atol=0)
    assert torch.equal(tp.prompt_token_ids()[:, :1], tokenize("x")[:, :1].expand(len(NAMES), 1))


def test_first_words_learnable_rest_fixed_and_sets_are_set_major(clip):
    """MaPLe/ALIGN init: the first n_ctx words are the context, the rest of the init stays as fixed tokens; with
    N sets the prompts are set-major (row k*C + c) and only set 0 starts from the words."""
    tp = TextPrompts(clip, NAMES, n_ctx=2, ctx_init="a photo of a", init_mode="first", n_sets=3, init_sets="first")
    assert tp.ctx.shape == (3, 2, clip.text_width)
    torch.testing.assert_close(tp.ctx[0], emb(clip, "a photo")[1:3], rtol=0, atol=0)
    assert not torch.allclose(tp.ctx[1], tp.ctx[0])
    built = tp.build()
    assert built.shape[0] == 3 * len(NAMES)
    for k in range(3):
        for c, name in enumerate(NAMES):
            row = built[k * len(NAMES) + c]
            torch.testing.assert_close(row[1:3], tp.ctx[k], rtol=0, atol=0)
            torch.testing.assert_close(row[3:], emb(clip, f"a photo of a {name}.")[3:], rtol=0, atol=0)
    with pytest.raises(ConfigError, match="exceeds"):
        TextPrompts(clip, NAMES, n_ctx=5, ctx_init="a photo of a", init_mode="first")


def test_token_mask_marks_context_and_class_name(clip):
    tp = TextPrompts(clip, NAMES, n_ctx=2, ctx_init="a photo of a", init_mode="first")
    mask = tp.token_mask(20)
    for c, name in enumerate(NAMES):
        expect = torch.zeros(20, dtype=torch.bool)
        expect[1:3] = True  # the two learnable tokens; "of a" (positions 3, 4) are fixed words
        expect[5:5 + token_length(name)] = True
        assert torch.equal(mask[c], expect), name


def test_csc_context_is_per_class(clip):
    tp = TextPrompts(clip, NAMES, n_ctx=3, csc=True)
    assert tp.ctx.shape == (len(NAMES), 3, clip.text_width)
    built = tp.build()
    for c in range(len(NAMES)):
        torch.testing.assert_close(built[c, 1:4], tp.ctx[c], rtol=0, atol=0)


def test_deep_prompts_coupled_are_projections_of_the_text_prompts(clip):
    mm = MultiModalPrompts(clip, NAMES, n_ctx=2, text_depth=3, text_sets=2, coupled=True)
    ti, vi = mm.text_inputs(), mm.vision_inputs()
    assert ti.embeds.shape[0] == 2 * len(NAMES) and ti.n_sets == 2 and len(ti.deep) == 2
    for k, d in enumerate(ti.deep_for(slice(None))):  # [N, n, Dt] per set -> per prompt, set-major
        assert d.shape == (2 * len(NAMES), 2, clip.text_width)
        torch.testing.assert_close(d[len(NAMES)], mm.deep.text[k][1], rtol=0, atol=0)
        torch.testing.assert_close(d[len(NAMES) - 1], mm.deep.text[k][0], rtol=0, atol=0)
    rows = torch.tensor([len(NAMES) + 1, 0, 2 * len(NAMES) - 1])  # any rows, any order: built alone, same values
    torch.testing.assert_close(ti.select(rows), ti.embeds[rows], rtol=0, atol=0)
    torch.testing.assert_close(ti.ids_for(rows), ti.token_ids[rows], rtol=0, atol=0)
    assert ti.token_ids.shape[0] == 2 * len(NAMES)
    for full, part in zip(ti.deep_for(slice(None)), ti.deep_for(rows)):
        torch.testing.assert_close(part, full[rows], rtol=0, atol=0)
    torch.testing.assert_close(vi.shallow, mm.deep.shallow_proj(mm.text.ctx), rtol=0, atol=0)
    for k, d in enumerate(vi.deep):
        torch.testing.assert_close(d, mm.deep.proj[k](mm.deep.text[k]), rtol=0, atol=0)
    assert vi.n_views == 2
    with pytest.raises(ConfigError, match="must equal"):
        MultiModalPrompts(clip, NAMES, text_depth=2, text_sets=2, vision_sets=3, coupled=True)


def test_independent_vision_and_frozen_text(clip):
    mm = MultiModalPrompts(clip, NAMES, n_ctx=2, text_depth=2, coupled=False, n_ctx_vision=3, vision_depth=3,
                           vision_sets=1)
    vi = mm.vision_inputs()
    assert vi.shallow.shape == (1, 3, clip.vision_width) and len(vi.deep) == 2
    lang = MultiModalPrompts(clip, NAMES, n_ctx=4, text_depth=3, coupled=False, vision_depth=0)
    assert lang.vision_inputs() is None and len(lang.text_inputs().deep) == 2
    vpt = MultiModalPrompts(clip, NAMES, learn_text=False, coupled=False, n_ctx_vision=4, vision_depth=2)
    assert vpt.text_inputs() is None and vpt.text is None and vpt.vision_inputs().shallow.shape[1] == 4
    assert not [n for n, _ in vpt.named_parameters() if n.startswith("deep.text")]


def test_deep_prompt_parameter_counts_follow_the_shapes():
    d = DeepPrompts(n_ctx=2, depth=9, text_width=512, vision_width=768, coupled=True)
    # 8 deep text prompts (2 x 512), the shallow coupling and 8 deep couplings (512 x 768 + 768 each)
    assert sum(p.numel() for p in d.parameters()) == 8 * 2 * 512 + 9 * (512 * 768 + 768)
    d = DeepPrompts(n_ctx=2, depth=12, text_width=512, vision_width=768, coupled=False, n_ctx_vision=8,
                    vision_depth=12, n_vis_sets=3)
    assert sum(p.numel() for p in d.parameters()) == 11 * 2 * 512 + 12 * 3 * 8 * 768


def test_meta_net_is_cocoop_bottleneck():
    m = MetaNet(512, 512)
    assert [tuple(p.shape) for p in m.parameters()] == [(32, 512), (32,), (512, 32), (512,)]
    x = torch.randn(4, 512)
    torch.testing.assert_close(m(x), m.linear2(torch.relu(m.linear1(x))), rtol=0, atol=0)


def test_multi_view_encoding_rows_are_image_major(clip):
    """With M visual sets each image is encoded once per set, row b*M + m = (image b, set m)."""
    mm = MultiModalPrompts(clip, NAMES, n_ctx=2, text_depth=2, coupled=False, n_ctx_vision=2, vision_depth=2,
                           vision_sets=2)
    model = PromptModel(clip, mm)
    x = torch.randn(3, 3, 32, 32)
    out = model.encode_images(x).features
    vi = mm.vision_inputs()
    for m in range(2):
        alone = clip.encode_image(x, prompts=vi.shallow[m], deep_prompts=[d[m] for d in vi.deep]).features
        torch.testing.assert_close(out[m::2], alone, rtol=1e-5, atol=1e-5)


def test_cosine_model_with_frozen_text_is_zero_shot_clip(clip):
    from promptot.model import template_features

    feats = template_features(clip, NAMES, ["a photo of a {}."], verbose=False)
    model = CosineModel(clip, frozen_text=feats)
    x = torch.randn(2, 3, 32, 32)
    img = torch.nn.functional.normalize(clip.clip.encode_image(x), dim=-1)
    txt = torch.nn.functional.normalize(clip.clip.encode_text(tokenize([f"a photo of a {n}." for n in NAMES])), dim=-1)
    torch.testing.assert_close(model(x), clip.logit_scale.exp() * img @ txt.t(), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="frozen_text"):
        CosineModel(clip)


@pytest.mark.parametrize("return_tokens", [False, True])
def test_chunked_text_encoding_equals_one_pass(clip, return_tokens):
    """MODEL.TEXT_CHUNK: prompts encoded a chunk at a time (recomputed in backward) give the same features, tokens
    and gradients as one pass, deep prompts included."""
    mm = MultiModalPrompts(clip, NAMES + ["x", "a rather long class name here"], n_ctx=2, text_depth=3, text_sets=2,
                           coupled=True)
    model = PromptModel(clip, mm)
    ref = model.encode_text_prompts(return_tokens=return_tokens)
    def real(o):  # the tokens up to each prompt's EOT
        keep = torch.arange(o.tokens.shape[1])[None, :] <= o.eot_index[:, None]
        return (o.tokens * keep[..., None]).sum()

    (ref.features.sum() + (real(ref) if return_tokens else 0)).backward()
    params = [p for p in mm.parameters() if p.grad is not None]  # the text side's (couplings act on vision)
    assert len(params) == 3
    grads = [p.grad.clone() for p in params]
    mm.zero_grad()
    model.text_chunk = 3
    out = model.encode_text_prompts(return_tokens=return_tokens)
    torch.testing.assert_close(out.features, ref.features, rtol=1e-5, atol=1e-5)
    if return_tokens:  # real positions (up to each prompt's EOT) are equal; later ones are padding either way
        assert torch.equal(out.eot_index, ref.eot_index)
        for row, eot in enumerate(ref.eot_index.tolist()):
            torch.testing.assert_close(out.tokens[row, :eot + 1], ref.tokens[row, :eot + 1], rtol=1e-5, atol=1e-5)
    (out.features.sum() + (real(out) if return_tokens else 0)).backward()
    for g, p in zip(grads, params):
        torch.testing.assert_close(p.grad, g, rtol=1e-3, atol=1e-4)  # fp32 sums in another order


def test_right_aligned_init_is_prograds(clip):
    """ProGrad's init: N_CTX slots, the init's tokens in the last ones, zeros before; the prompt reads
    "X X ... <init> <class>." with the context over the X's and the init."""
    init = "a type of pet, a photo of a"
    assert token_length(init) == 9  # 8 words: "pet," is two tokens
    with pytest.raises(ConfigError, match="N_CTX=8 is smaller than the 9 tokens"):
        TextPrompts(clip, NAMES, n_ctx=8, ctx_init=init, init_mode="right")
    tp = TextPrompts(clip, NAMES, n_ctx=10, ctx_init=init, init_mode="right")  # counted in tokens: all words kept
    torch.testing.assert_close(tp.ctx[1:], emb(clip, init)[1:10], rtol=0, atol=0)
    torch.testing.assert_close(tp.build()[0, 11:], emb(clip, f"X {init} {NAMES[0]}.")[11:], rtol=0, atol=0)
    tp = TextPrompts(clip, NAMES, n_ctx=12, ctx_init="a photo of a", init_mode="right")
    assert tp.ctx.shape == (12, clip.text_width)
    assert torch.equal(tp.ctx[:8], torch.zeros(8, clip.text_width))
    torch.testing.assert_close(tp.ctx[8:], emb(clip, "a photo of a")[1:5], rtol=0, atol=0)
    built = tp.build()
    for c, name in enumerate(NAMES):
        sentence = emb(clip, " ".join(["X"] * 8) + f" a photo of a {name}.")
        torch.testing.assert_close(built[c, 1:9], torch.zeros(8, clip.text_width), rtol=0, atol=0)
        torch.testing.assert_close(built[c, 9:], sentence[9:], rtol=0, atol=0)
    with pytest.raises(ConfigError, match="smaller than the 4 tokens"):
        TextPrompts(clip, NAMES, n_ctx=3, ctx_init="a photo of a", init_mode="right")


def test_extra_slots_are_filled_by_the_caller(clip):
    """With extra slots the context of build() is n_ctx + extra tokens, followed by the class name."""
    tp = TextPrompts(clip, NAMES, ctx_init="a photo of a", init_mode="coop", extra_slots=2)
    with pytest.raises(ValueError, match="extra slots"):
        tp.build()
    fill = emb(clip, "big red")[1:3]
    built = tp.build(torch.cat([tp.ctx, fill]))
    for c, name in enumerate(NAMES):
        torch.testing.assert_close(built[c], emb(clip, f"a photo of a big red {name}."), rtol=0, atol=0)
    assert torch.equal(tp.prompt_token_ids()[0], tokenize(f"a photo of a X X {NAMES[0]}.")[0])
    with pytest.raises(ConfigError, match="extra context slots"):
        TextPrompts(clip, NAMES, n_ctx=2, ctx_init="a photo of a", init_mode="first", extra_slots=1)


def test_per_image_prompts_equal_one_build_per_image(clip):
    """build_per_image is image-major and equals build() with each image's context; the batched encoder gives the
    features of a per-image loop whatever the chunk size."""
    tp = TextPrompts(clip, NAMES, ctx_init="a photo of a", init_mode="coop")
    model = PromptModel(clip, tp)
    ctx = tp.ctx.detach().unsqueeze(0) + 0.1 * torch.randn(5, 1, clip.text_width)
    built = tp.build_per_image(ctx)
    assert built.shape[0] == 5 * len(NAMES)
    loop = []
    for b in range(5):
        torch.testing.assert_close(built[b * len(NAMES):(b + 1) * len(NAMES)], tp.build(ctx[b]), rtol=0, atol=0)
        loop.append(clip.encode_text(tp.build(ctx[b]), tp.prompt_token_ids()).features)
    loop = torch.stack(loop)
    for max_prompts in (1, 4, 7, 2048):  # one image per call, one per call (3 < 4 < 6), two, all five
        out = model.encode_per_image_prompts(tp, ctx, max_prompts=max_prompts)
        assert out.shape == (5, len(NAMES), clip.embed_dim)
        torch.testing.assert_close(out, loop, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="generic prompt set"):
        TextPrompts(clip, NAMES, n_ctx=2, csc=True).build_per_image(ctx[:, :2])


def test_cosine_model_keeps_hand_features_beside_the_learned_classifier(clip):
    """hand_text does not change the logits; hand_logits are zero-shot CLIP's (KgCoOp's guidance, ProGrad's teacher)."""
    from promptot.model import template_features

    tp = TextPrompts(clip, NAMES, ctx_init="a photo of a", init_mode="coop")
    hand = template_features(clip, NAMES, ["a {} in a video game."], verbose=False)
    x = torch.randn(2, 3, 32, 32)
    with_hand, plain = CosineModel(clip, tp, hand_text=hand), CosineModel(clip, tp)
    torch.testing.assert_close(with_hand(x), plain(x), rtol=0, atol=0)
    zero_shot = CosineModel(clip, frozen_text=hand)
    torch.testing.assert_close(with_hand.hand_logits(with_hand.image_side(x)), zero_shot(x), rtol=1e-5, atol=1e-5)
    assert "hand_text" not in with_hand.state_dict()
    with pytest.raises(ValueError, match="hand_text"):
        plain.hand_logits(plain.image_side(x))


def test_stacked_text_inputs_build_any_row_range_like_the_eager_concatenation(clip):
    """TextInputs.stack (PLOT++'s sets, one template each): every row range, including ranges across set boundaries,
    equals the same rows of the concatenated eager embeddings, and gradients reach each set's context."""
    from promptot.prompts import TextInputs

    sets = [TextPrompts(clip, NAMES, n_ctx=2, ctx_init=init, init_mode="first")
            for init in ("a photo of", "a sketch of", "a tattoo of")]
    stacked = TextInputs.stack([t.text_inputs() for t in sets])
    eager = torch.cat([t.build() for t in sets])
    assert stacked.n_sets == 3 and stacked.n_prompts == 3 * len(NAMES)
    assert torch.equal(stacked.token_ids, torch.cat([t.prompt_token_ids() for t in sets]))
    C = len(NAMES)
    for start, stop in [(0, 3 * C), (1, C + 1), (C - 1, 2 * C + 1), (2 * C, 3 * C), (C, C + 1)]:
        assert torch.equal(stacked.rows(start, stop), eager[start:stop]), (start, stop)
    stacked.rows(C - 1, 2 * C + 1).sum().backward()
    assert all(t.ctx.grad is not None and t.ctx.grad.abs().sum() > 0 for t in sets)


def test_per_image_prompts_checkpointed_in_class_chunks_equal_the_batched_pass(clip):
    """CoCoOp's / CoPL's image-conditioned prompts with MODEL.TEXT_CHUNK: chunks of classes per image, recomputed in
    backward; features and the context's gradient equal the batched pass."""
    tp = TextPrompts(clip, NAMES, n_ctx=2, ctx_init="a photo of", init_mode="first")
    model = CosineModel(clip, tp)
    base = torch.randn(3, 2, tp.ctx.shape[-1], generator=torch.Generator().manual_seed(0))
    outs = []
    for chunk in (0, 2):
        model.text_chunk = chunk
        ctx = (base * 0.1).requires_grad_(True)
        feats = model.encode_per_image_prompts(tp, ctx)
        (feats * torch.arange(feats.numel()).reshape(feats.shape).cos()).sum().backward()
        outs.append((feats.detach(), ctx.grad))
    assert outs[0][0].shape == (3, len(NAMES), clip.embed_dim)
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[1][1], outs[0][1], atol=1e-5, rtol=1e-5)
    assert outs[0][1].abs().sum() > 0


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_build_index_equals_rows_of_build(clip, position):
    """Any prompt rows, in any order, built alone (the class-chunked text pass of token-level OT) equal those rows of
    the full build, for every class token position; per-set token ids are shared, not repeated."""
    tp = TextPrompts(clip, NAMES, n_ctx=4, n_sets=2, position=position)
    rows = torch.tensor([4, 0, 5, 2])  # set 1 class 1, set 0 class 0, set 1 class 2, set 0 class 2
    torch.testing.assert_close(tp.build_index(rows), tp.build()[rows], rtol=0, atol=0)
    ti = tp.text_inputs()
    assert ti.n_prompts == 6 and ti.n_cls == 3
    torch.testing.assert_close(ti.select(rows), tp.build()[rows], rtol=0, atol=0)
    assert torch.equal(ti.ids_for(rows), tp.prompt_token_ids()[rows])
    assert torch.equal(ti.ids_for(slice(2, 5)), tp.prompt_token_ids()[2:5])
