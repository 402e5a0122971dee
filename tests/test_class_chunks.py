"""The text side of token-level OT class chunk by class chunk (promptot.model.encode_text_by_class, ALIGN): the
same logits and gradients as one padded text pass, whatever the chunking, lazy (text pass and token level in one
checkpoint per chunk) or not."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import trainers  # noqa: F401  (registers the trainer configs)
from promptot.clip import PromptedCLIP, build_tiny_clip
from promptot.model import ClassText
from promptot.prompts import MultiModalPrompts
from trainers.align import ALIGNConfig, ALIGNModel

# names of different token lengths, so the length sort reorders them and chunks differ in length
NAMES = ["a rather long class name for a dog", "cat", "double decker bus", "x", "golden retriever", "tree frog"]


@pytest.fixture(scope="module")
def clip() -> PromptedCLIP:
    m = build_tiny_clip("vit", embed_dim=32, image_size=32, width=64, layers=3, patch_size=8, text_layers=3)
    m.requires_grad_(False)
    return PromptedCLIP(m)


def _model(clip, compat: str) -> ALIGNModel:
    torch.manual_seed(0)
    cfg = ALIGNConfig(PROMPT_DEPTH=3, TEXT_PROMPT_NUMBER=3, VISION_PROMPT_NUMBER=3, COMPAT=compat, STOP="fixed",
                      MAX_ITER=20, PREC="fp32")
    learner = MultiModalPrompts(clip, NAMES, n_ctx=2, ctx_init="a photo of a", text_depth=3, text_sets=3,
                                init_sets="first", coupled=True)
    with torch.no_grad():  # deep prompts start at zero: make them matter
        for p in learner.deep.text:
            p.normal_(std=0.5)
    return ALIGNModel(clip, learner, cfg)


def _padded_logits(model: ALIGNModel, images: torch.Tensor) -> torch.Tensor:
    """The logits as before chunking: one unchunked text pass, tokens padded to the longest class, one head call."""
    out = model.encode_text_prompts(return_tokens=True)
    n = model.prompt_learner.text.n_sets
    mask = model.prompt_learner.text.token_mask(out.tokens.shape[1])[:, None]
    img_global, img_tokens = model.image_side(images)
    return model.ot(img_global, model.per_class(out.features, n), img_tokens=img_tokens,
                    txt_tokens=model.per_class(out.tokens, n), txt_mask=mask).logits


@pytest.mark.parametrize("compat", ["paper", "reference"])
def test_class_chunks_equal_one_padded_pass(clip, compat: str) -> None:
    model = _model(clip, compat)
    model.train()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    params = [p for p in model.prompt_learner.parameters() if p.requires_grad]

    def step(fn):
        model.zero_grad()
        logits = fn()
        F.cross_entropy(logits, torch.tensor([0, 4])).backward()
        return logits.detach(), [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]

    ref, gref = step(lambda: _padded_logits(model, images))
    assert sum(g.abs().sum() for g in gref) > 0
    for chunk in (0, 3, 6, 9, 100):  # prompts per chunk: whole classes, 1, 2, 3 classes, or all
        model.text_chunk = chunk
        text = model.text_side()
        assert isinstance(text, ClassText)
        sizes = [len(c.classes) for c in text.chunks]
        assert sizes == ([len(NAMES)] if chunk in (0, 100) else [chunk // 3] * (len(NAMES) // (chunk // 3)))
        assert all(c.value is None for c in text.chunks) == (chunk > 0), "lazy exactly when chunked in training"
        lengths = [c.mask.shape[-1] for c in text.chunks]
        assert lengths == sorted(lengths), "chunks come length-sorted, each cut at its own length"
        out, grads = step(lambda: model(images))
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5, msg=f"TEXT_CHUNK {chunk}")
        for g, gr in zip(grads, gref):
            # fp32 sums in another order: errors relative to the gradient's scale
            torch.testing.assert_close(g, gr, rtol=1e-4, atol=1e-5 * float(gr.abs().max()), msg=f"TEXT_CHUNK {chunk}")
    model.eval()
    with torch.no_grad():
        for chunk in (0, 6):
            model.text_chunk = chunk
            text = model.text_side()  # evaluation: encoded at once, then cached by the trainer
            assert all(c.value is not None for c in text.chunks)
            torch.testing.assert_close(model.run(images, text).logits, ref, rtol=1e-5, atol=1e-5)


def test_token_mask_beyond_the_kept_positions_is_refused(clip) -> None:
    model = _model(clip, "paper")
    bad = lambda L: torch.ones(len(NAMES), L, dtype=torch.bool)  # noqa: E731  (SOS..EOT and beyond)
    with pytest.raises(ValueError, match="keeps only its first"):
        model.encode_text_by_class(bad)
    with pytest.raises(ValueError, match=r"must be \[C, L\]"):
        model.encode_text_by_class(lambda L: torch.ones(2, L, dtype=torch.bool))
