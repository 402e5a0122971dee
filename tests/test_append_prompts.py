"""Visual prompts inserted DPT-style (``VisionInputs.insert == "append"``): layer k's prompts are appended after
``ln_pre`` to the input of block k and dropped from its output. Checked against a plain loop over the unmodified
open_clip blocks, for prompts in every layer and in the first layer only, with M prompt sets, and against MaPLe-style
insertion (they differ exactly by the layer-0 prompts passing through ``ln_pre``)."""
from __future__ import annotations

import pytest
import torch

from promptot.clip import PromptedCLIP, build_tiny_clip
from promptot.errors import ConfigError
from promptot.model import CosineModel
from promptot.prompts import MultiModalPrompts


def manual_append(clip: PromptedCLIP, images: torch.Tensor, prompts) -> torch.Tensor:
    """Image features ``[B*M, E]`` with ``prompts[k]`` ``[M, n, D]`` appended to block k's input (rows b*M + m)."""
    v = clip.clip.visual
    m = prompts[0].shape[0]
    x = images.repeat_interleave(m, 0)
    x = v.conv1(x).flatten(2).permute(0, 2, 1)
    x = torch.cat([v.class_embedding.view(1, 1, -1).expand(len(x), -1, -1), x], 1) + v.positional_embedding
    x = v.ln_pre(x)
    n_img = x.shape[1]
    batch_first = getattr(v.transformer, "batch_first", True)
    for k, blk in enumerate(v.transformer.resblocks):
        if k < len(prompts):
            x = torch.cat([x, prompts[k].repeat(images.shape[0], 1, 1)], 1)
        x = blk(x) if batch_first else blk(x.transpose(0, 1)).transpose(0, 1)
        x = x[:, :n_img]
    return v.ln_post(x[:, 0]) @ v.proj


@pytest.fixture(scope="module")
def clip() -> PromptedCLIP:
    return PromptedCLIP(build_tiny_clip("vit", layers=3, seed=3).requires_grad_(False))


@pytest.mark.parametrize("depth,sets", [(3, 1), (1, 1), (2, 3)])
def test_append_insertion_is_the_plain_loop(clip, depth, sets):
    torch.manual_seed(0)
    learner = MultiModalPrompts(clip, ["a", "b"], learn_text=False, coupled=False, n_ctx_vision=4,
                                vision_depth=depth, vision_sets=sets, vision_insert="append")
    for p in learner.parameters():
        p.data.normal_(std=0.5)
    model = CosineModel(clip, learner, frozen_text=torch.randn(2, clip.embed_dim))
    images = torch.randn(2, 3, 32, 32)
    vi = learner.vision_inputs()
    assert vi.insert == "append" and vi.n_views == sets
    with torch.no_grad():
        ours = model.encode_images(images).features
        expected = manual_append(clip, images, [vi.shallow] + list(vi.deep))
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_append_and_replace_differ_only_by_ln_pre_on_layer_0():
    """At full depth, MaPLe-style insertion equals appending ``ln_pre``-normalised layer-0 prompts. Block 0
    layer-normalises its input again, so the two differ only through ``ln_pre``'s affine parameters: they are made
    non-trivial here (a random-init ``ln_pre`` is the identity affine map and the two would agree)."""
    torch.manual_seed(1)
    clip = PromptedCLIP(build_tiny_clip("vit", layers=3, seed=3).requires_grad_(False))
    with torch.no_grad():
        clip.clip.visual.ln_pre.weight.normal_(1.0, 0.5)
        clip.clip.visual.ln_pre.bias.normal_(0.0, 0.5)
    kw = dict(learn_text=False, coupled=False, n_ctx_vision=3, vision_depth=3, vision_sets=1)
    replace = MultiModalPrompts(clip, ["a"], **kw)
    append = MultiModalPrompts(clip, ["a"], vision_insert="append", **kw)
    for p in replace.parameters():
        p.data.normal_(std=0.5)
    append.load_state_dict(replace.state_dict())
    images = torch.randn(2, 3, 32, 32)
    text = torch.randn(1, clip.embed_dim)
    with torch.no_grad():
        a = CosineModel(clip, append, frozen_text=text).encode_images(images).features
        r = CosineModel(clip, replace, frozen_text=text).encode_images(images).features
        assert not torch.allclose(a, r, atol=1e-3)
        append.deep.vision_shallow.copy_(clip.clip.visual.ln_pre(replace.deep.vision_shallow))
        a = CosineModel(clip, append, frozen_text=text).encode_images(images).features
    torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)


def test_unknown_insertion_is_a_config_error(clip):
    with pytest.raises(ConfigError, match="vision_insert"):
        MultiModalPrompts(clip, ["a"], learn_text=False, coupled=False, n_ctx_vision=2, vision_depth=1,
                          vision_insert="prepend")
