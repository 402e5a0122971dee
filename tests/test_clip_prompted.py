"""PromptedCLIP: zero prompts reproduce stock open_clip CLIP; prompts land where they should."""
import pytest
import torch
import torch.nn.functional as F

from promptot.clip import AppendTokensHook, BlockHook, DeepPromptHook, PromptedCLIP, build_tiny_clip, tokenize

ATOL = 1e-5
TEXTS = ["a photo of a cat.", "a photo of a large red double-decker bus.", "dog"]


@pytest.fixture(scope="module")
def vit() -> PromptedCLIP:
    m = build_tiny_clip("vit", embed_dim=32, image_size=32, width=64, layers=3, patch_size=8, text_layers=3)
    m.requires_grad_(False)
    return PromptedCLIP(m)


@pytest.fixture(scope="module")
def rn() -> PromptedCLIP:
    m = build_tiny_clip("rn", embed_dim=32, image_size=64, width=16)
    # Random init zeroes every bn3 weight (residual branches off); perturb so the test sees real paths.
    with torch.no_grad():
        for name, p in m.visual.named_parameters():
            if name.endswith("bn3.weight"):
                p.normal_(1.0, 0.1)
    m.requires_grad_(False)
    return PromptedCLIP(m)


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return tokenize(TEXTS)


class Capture(BlockHook):
    """Hook that records every block input (after deep-prompt replacement)."""

    def __init__(self, name=""):
        self.inputs, self.calls, self.name = {}, [], name

    def before_block(self, i, x, state):
        self.inputs[i] = x.detach().clone()
        self.calls.append(("before", i) if not self.name else (self.name, "before", i))
        return x

    def after_block(self, i, x, state):
        self.calls.append(("after", i) if not self.name else (self.name, "after", i))
        return x


# ---------------------------------------------------------------- stock equivalence
@pytest.mark.parametrize("truncate", [True, False])
def test_text_matches_stock(vit, ids, truncate):
    out = vit.encode_text(vit.embed_tokens(ids), ids, truncate=truncate)
    ref = vit.clip.encode_text(ids)
    assert out.features.shape == (len(TEXTS), vit.embed_dim)
    torch.testing.assert_close(out.features, ref, atol=ATOL, rtol=0)
    assert torch.equal(out.eot_index, ids.argmax(-1))
    torch.testing.assert_close(vit.encode_text_ids(ids), ref, atol=ATOL, rtol=0)


def test_text_tokens_truncation(vit, ids):
    full = vit.encode_text(vit.embed_tokens(ids), ids, truncate=False, return_tokens=True)
    cut = vit.encode_text(vit.embed_tokens(ids), ids, truncate=True, return_tokens=True)
    n_keep = int(ids.argmax(-1).max()) + 1
    assert full.tokens.shape == (3, 77, vit.embed_dim)
    assert cut.tokens.shape == (3, n_keep, vit.embed_dim)
    torch.testing.assert_close(cut.tokens, full.tokens[:, :n_keep], atol=ATOL, rtol=0)
    rows = torch.arange(3)
    torch.testing.assert_close(cut.tokens[rows, cut.eot_index], cut.features)


@pytest.mark.parametrize("model", ["vit", "rn"])
def test_image_matches_stock(request, model):
    m = request.getfixturevalue(model)
    x = torch.randn(2, 3, m.image_size, m.image_size, generator=torch.Generator().manual_seed(0))
    ref = m.clip.encode_image(x)
    out = m.encode_image(x)
    torch.testing.assert_close(out.features, ref, atol=ATOL, rtol=0)
    tok = m.encode_image(x, return_tokens=True)
    torch.testing.assert_close(tok.features, ref, atol=ATOL, rtol=0)
    n_pos = (m.image_size // 8) ** 2 if model == "vit" else (m.image_size // 32) ** 2
    assert tok.patch_tokens.shape == (2, n_pos, m.embed_dim)
    assert tok.prompt_tokens is None


# ---------------------------------------------------------------- deep text prompts
def test_deep_text_same_values_is_noop_and_changes_only_later_positions(vit, ids):
    emb = vit.embed_tokens(ids)
    cap = Capture()
    base = vit.encode_text(emb, ids, return_tokens=True, hooks=cap)
    assert cap.calls == [(w, i) for i in range(vit.text_layers) for w in ("before", "after")]
    n = 2
    # Block-1 and block-2 inputs at positions 1..n, fed back as deep prompts: nothing may change.
    same = [cap.inputs[1][:, 1:1 + n], cap.inputs[2][:, 1:1 + n]]
    out = vit.encode_text(emb, ids, deep_prompts=same, return_tokens=True)
    torch.testing.assert_close(out.tokens, base.tokens, atol=ATOL, rtol=0)
    # Different values at block 1 (broadcast [n, Dt]): position 0 (before the slots) is untouched
    # under the causal mask, every later position changes.
    new = vit.encode_text(emb, ids, deep_prompts=[torch.randn(n, vit.text_width)], return_tokens=True)
    torch.testing.assert_close(new.tokens[:, 0], base.tokens[:, 0], atol=ATOL, rtol=0)
    assert (new.tokens[:, 1:] - base.tokens[:, 1:]).abs().amax(dim=-1).min() > 1e-6
    # None entries mean "no replacement" for that block.
    skip = vit.encode_text(emb, ids, deep_prompts=[None, None])
    torch.testing.assert_close(skip.features, base.features, atol=ATOL, rtol=0)


def test_text_gradients_reach_prompts_only(vit, ids):
    n = 4
    ctx = torch.nn.Parameter(torch.randn(n, vit.text_width) * 0.02)
    deep = [torch.nn.Parameter(torch.randn(n, vit.text_width) * 0.02) for _ in range(vit.text_layers - 1)]
    emb = vit.embed_tokens(ids)
    prompts = torch.cat([emb[:, :1], ctx.expand(len(TEXTS), -1, -1), emb[:, 1 + n:]], dim=1)
    out = vit.encode_text(prompts, ids, deep_prompts=deep)
    out.features.pow(2).sum().backward()
    for p in [ctx, *deep]:
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is None for p in vit.clip.parameters())


def test_text_errors(vit, ids):
    emb = vit.embed_tokens(ids)
    with pytest.raises(ValueError, match="at most 2 entries"):
        vit.encode_text(emb, ids, deep_prompts=[None] * 3)
    with pytest.raises(ValueError, match="token_ids"):
        vit.encode_text(emb, ids[:2])
    with pytest.raises(ValueError, match=r"\[n, 64\]"):
        vit.encode_text(emb, ids, deep_prompts=[torch.randn(2, 5)])


# ---------------------------------------------------------------- vision prompts
def test_visual_prompts_shapes_and_deep_noop(vit):
    x = torch.randn(2, 3, 32, 32)
    n = 3
    shallow = torch.randn(n, vit.vision_width)
    cap = Capture()
    base = vit.encode_image(x, prompts=shallow, return_tokens=True, hooks=cap)
    assert base.patch_tokens.shape == (2, 16, vit.embed_dim)
    assert base.prompt_tokens.shape == (2, n, vit.embed_dim)
    assert cap.inputs[0].shape == (2, 1 + 16 + n, vit.vision_width)
    # Prompts are visible to the CLS token: features differ from the unprompted ones.
    assert not torch.allclose(base.features, vit.encode_image(x).features, atol=1e-4)
    # Deep prompts equal to what the slots already held: unchanged ([B, n, Dv] form).
    same = [cap.inputs[1][:, -n:], cap.inputs[2][:, -n:]]
    out = vit.encode_image(x, prompts=shallow, deep_prompts=same, return_tokens=True)
    torch.testing.assert_close(out.features, base.features, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.prompt_tokens, base.prompt_tokens, atol=ATOL, rtol=0)


def test_visual_prompt_gradients_and_errors(vit):
    x = torch.randn(2, 3, 32, 32)
    shallow = torch.nn.Parameter(torch.randn(2, vit.vision_width))
    deep = [torch.nn.Parameter(torch.randn(2, vit.vision_width)), None]
    vit.encode_image(x, prompts=shallow, deep_prompts=deep).features.sum().backward()
    assert shallow.grad.abs().sum() > 0 and deep[0].grad.abs().sum() > 0
    with pytest.raises(ValueError, match="pass prompts"):
        vit.encode_image(x, deep_prompts=[torch.randn(2, vit.vision_width)])
    with pytest.raises(ValueError, match="must match"):
        vit.encode_image(x, prompts=torch.randn(2, vit.vision_width), deep_prompts=[torch.randn(3, vit.vision_width)])
    with pytest.raises(ValueError, match="resize"):
        vit.encode_image(torch.randn(1, 3, 48, 48))


class AppendToken(BlockHook):
    """DPT-style hook: one extra token before each block, dropped after it; records the dropped outputs."""

    def __init__(self, width):
        self.tok = torch.nn.Parameter(torch.randn(width))

    def before_block(self, i, x, state):
        return torch.cat([x, state.fit(self.tok[None], "tok")], dim=1)

    def after_block(self, i, x, state):
        state.aux.setdefault("dropped", []).append(x[:, -1].detach())
        return x[:, :-1]


def test_hooks_can_add_and_drop_tokens_and_return_aux(vit, ids):
    x = torch.randn(2, 3, 32, 32)
    hook = AppendToken(vit.vision_width)
    out = vit.encode_image(x, hooks=hook)
    assert not torch.allclose(out.features, vit.encode_image(x).features, atol=1e-4)
    assert len(out.aux["dropped"]) == vit.vision_layers and out.aux["dropped"][0].shape == (2, vit.vision_width)
    out.features.sum().backward()
    assert hook.tok.grad.abs().sum() > 0
    # Text: a token appended at the end is invisible to earlier positions under the causal mask.
    text_hook = AppendToken(vit.text_width)
    t = vit.encode_text(vit.embed_tokens(ids), ids, hooks=text_hook)
    torch.testing.assert_close(t.features, vit.clip.encode_text(ids), atol=ATOL, rtol=0)
    assert len(t.aux["dropped"]) == vit.text_layers


def test_hooks_nest_in_order(vit):
    a, b = Capture("a"), Capture("b")
    vit.encode_image(torch.randn(1, 3, 32, 32), hooks=[a, b])
    assert len(a.calls) == len(b.calls) == 2 * vit.vision_layers
    # before in list order, after in reverse order (hooks nest): record the global order in a shared list
    order = []

    class Rec(BlockHook):
        def __init__(self, name):
            self.name = name

        def before_block(self, i, x, state):
            order.append((self.name, "before", i))
            return x

        def after_block(self, i, x, state):
            order.append((self.name, "after", i))
            return x

    vit.encode_image(torch.randn(1, 3, 32, 32), hooks=[Rec("a"), Rec("b")])
    assert order[:4] == [("a", "before", 0), ("b", "before", 0), ("b", "after", 0), ("a", "after", 0)]


def test_append_tokens_hook_equals_manual_concatenation(vit):
    """AppendTokensHook on block 0 only == appending the tokens to the block-0 input by hand and dropping them."""
    x = torch.randn(2, 3, 32, 32)
    tok = torch.randn(3, vit.vision_width)
    seen = {}
    out = vit.encode_image(x, hooks=AppendTokensHook({0: tok}, keep=lambda i, d, s: seen.setdefault(i, d)))
    v = vit.clip.visual
    cap = Capture()
    vit.encode_image(x, hooks=cap)
    h = torch.cat([cap.inputs[0], tok.expand(2, -1, -1)], dim=1)
    h = v.transformer.resblocks[0](h)
    torch.testing.assert_close(seen[0], h[:, -3:], atol=ATOL, rtol=0)
    h = h[:, :-3]
    for blk in v.transformer.resblocks[1:]:
        h = blk(h)
    torch.testing.assert_close(out.features, v.ln_post(h[:, 0]) @ v.proj, atol=ATOL, rtol=0)


def test_deep_prompt_hook_equals_deep_prompts_argument(vit, ids):
    emb = vit.embed_tokens(ids)
    deep = [torch.randn(2, vit.text_width)]
    a = vit.encode_text(emb, ids, deep_prompts=deep)
    b = vit.encode_text(emb, ids, hooks=DeepPromptHook(deep, start=1))
    torch.testing.assert_close(a.features, b.features, atol=0, rtol=0)
    x = torch.randn(2, 3, 32, 32)
    shallow, vdeep = torch.randn(2, vit.vision_width), [torch.randn(2, vit.vision_width)]
    a = vit.encode_image(x, prompts=shallow, deep_prompts=vdeep)
    b = vit.encode_image(x, prompts=shallow, hooks=DeepPromptHook(vdeep))
    torch.testing.assert_close(a.features, b.features, atol=0, rtol=0)


def test_text_pool_type_is_followed(ids):
    m = build_tiny_clip("vit", text_layers=2)
    m.requires_grad_(False)
    pc = PromptedCLIP(m)
    m.text_pool_type = "first"  # pool SOS instead of EOT: follows open_clip's own pooling
    torch.testing.assert_close(pc.encode_text_ids(ids), m.encode_text(ids), atol=ATOL, rtol=0)
    m.text_pool_type = "last"
    torch.testing.assert_close(pc.encode_text_ids(ids), m.encode_text(ids), atol=ATOL, rtol=0)
    m.text_pool_type = "mean"
    with pytest.raises(NotImplementedError, match="text_pool_type"):
        PromptedCLIP(m)
    del m.text_pool_type
    with pytest.raises(ImportError, match="open_clip_torch>="):
        PromptedCLIP(m)


# ---------------------------------------------------------------- ResNet local features
def test_rn_local_features_by_hand(rn):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    out = rn.encode_image(x, return_tokens=True)
    v = rn.clip.visual
    pool = v.attnpool
    fmap = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(x)))))  # [B, C, 2, 2]
    seq = fmap.flatten(2).permute(0, 2, 1)  # [B, HW, C]
    seq = torch.cat([seq.mean(1, keepdim=True), seq], dim=1) + pool.positional_embedding  # [B, 1+HW, C]
    p = 2  # spatial position 2 (query row 3)
    heads, c = pool.num_heads, seq.shape[-1]
    q = pool.q_proj(seq[:, 1 + p]).view(2, heads, c // heads)
    k = pool.k_proj(seq).view(2, -1, heads, c // heads)
    val = pool.v_proj(seq).view(2, -1, heads, c // heads)
    att = torch.einsum("bhd,bthd->bht", q, k).div((c // heads) ** 0.5).softmax(-1)
    by_hand = pool.c_proj(torch.einsum("bht,bthd->bhd", att, val).reshape(2, c))
    torch.testing.assert_close(out.patch_tokens[:, p], by_hand, atol=1e-4, rtol=1e-4)
    assert out.patch_tokens.shape == (2, 4, rn.embed_dim)
    with pytest.raises(ValueError, match="ViT"):
        rn.encode_image(x, prompts=torch.randn(2, rn.vision_width))


def test_properties(vit, rn):
    assert (vit.text_width, vit.vision_width, vit.embed_dim, vit.context_length, vit.image_size) == (64, 64, 32, 77, 32)
    assert vit.is_vit and not rn.is_vit and rn.image_size == 64 and rn.vision_width == 512
    assert vit.dtype == torch.float32 and vit.logit_scale is vit.clip.logit_scale
    rn.train()
    assert rn.training and not rn.clip.training and not rn.clip.visual.layer1[0].bn1.training
    rn.eval()
    assert list(dict(vit.named_parameters())) == ["clip." + n for n, _ in vit.clip.named_parameters()]


def test_fp16_runs_in_half(vit, ids):
    from open_clip.model import convert_weights_to_lp
    import copy

    half = copy.deepcopy(vit.clip)
    convert_weights_to_lp(half, torch.float16)
    m = PromptedCLIP(half)
    assert m.dtype == torch.float16
    t = m.encode_text(m.embed_tokens(ids), ids, deep_prompts=[torch.randn(2, 64)])
    v = m.encode_image(torch.randn(1, 3, 32, 32), prompts=torch.randn(2, 64), deep_prompts=[torch.randn(2, 64)])
    assert t.features.dtype == torch.float16 and v.features.dtype == torch.float16
    ref = vit.encode_text_ids(ids)
    assert F.cosine_similarity(m.encode_text_ids(ids).float(), ref).min() > 0.99


def test_vision_token_features_of_the_last_block_are_the_patch_tokens(vit, rn):
    """Tokens taken from a block's output get the transform encode_image gives the last block's (ln_post + proj)."""

    class Tap(BlockHook):
        def after_block(self, i, x, state):
            state.aux[i] = x
            return x

    x = torch.randn(2, 3, 32, 32)
    out = vit.encode_image(x, return_tokens=True, hooks=Tap())
    last = out.aux[vit.vision_layers - 1][:, 1:]
    torch.testing.assert_close(vit.vision_token_features(last), out.patch_tokens, rtol=0, atol=ATOL)
    v = vit.clip.visual
    torch.testing.assert_close(vit.vision_token_features(last, project=False), v.ln_post(last), rtol=0, atol=0)
    assert vit.vision_token_features(out.aux[0][:, 1:], project=False).shape == (2, 16, vit.vision_width)
    with pytest.raises(ValueError, match="ViT"):
        rn.vision_token_features(last)
