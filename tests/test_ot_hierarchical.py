"""Tests of promptot.ot.hierarchical (batched hierarchical OT head) against the per-(image, class) loop baseline."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import List, Tuple

import pytest
import torch

from promptot.ot import HierarchicalOTHead, OTHeadConfig, TokenPieces, TokenTerm

_spec = importlib.util.spec_from_file_location(
    "_reference_loop", Path(__file__).resolve().parents[1] / "bench" / "_reference_loop.py")
_rl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_rl)  # type: ignore[union-attr]


def _inputs(dtype=torch.float64, B=2, M=3, N=2, P=10, D=8, C=7, seed=0, offset=0.5):
    """Random features with a shared offset so cosines are spread around ≈ 0.2-0.5 (CLIP-like)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(D, generator=g, dtype=dtype)
    ig = torch.randn(B, M, D, generator=g, dtype=dtype) + offset * base
    tg = torch.randn(C, N, D, generator=g, dtype=dtype) + offset * base
    it = torch.randn(B, M, P, D, generator=g, dtype=dtype) + offset * base
    Ls = [int(x) for x in torch.randint(2, 7, (C,), generator=g)]
    tl = [torch.randn(N, L, D, generator=g, dtype=dtype) + offset * base for L in Ls]
    return ig, tg, it, tl


def _pad(tl: List[torch.Tensor], extra: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    C = len(tl)
    N, _, D = tl[0].shape
    Lm = max(t.shape[1] for t in tl) + extra
    tt = torch.full((C, N, Lm, D), 7.0, dtype=tl[0].dtype)  # padding garbage on purpose
    tm = torch.zeros(C, N, Lm, dtype=torch.bool)
    for c, t in enumerate(tl):
        tt[c, :, : t.shape[1]] = t
        tm[c, :, : t.shape[1]] = True
    return tt, tm


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 1e-6)])
@pytest.mark.parametrize("compat", ["reference", "paper"])
def test_equals_loop(compat: str, dtype: torch.dtype, atol: float) -> None:
    ig, tg, it, tl = _inputs(dtype)
    tt, tm = _pad(tl)
    stop = "reference" if compat == "reference" else "fixed"
    ref, _ = _rl.loop_head_logits(ig, tg, 100.0, it, tl, compat=compat, stop=stop, max_iter=100 if stop ==
                                  "reference" else 40, beta=0.7)
    for domain in ("kernel", "log"):
        head = HierarchicalOTHead(OTHeadConfig(compat=compat, stop=stop, max_iter=100 if stop == "reference" else 40,
                                               beta=0.7, class_chunk=3, domain=domain))
        out = head(ig, tg, 100.0, it, None, tt, tm)
        assert out.dtype == dtype and out.shape == (2, 7)
        assert (out - ref).abs().max().item() / 100.0 < atol


def test_chunk_size_invariance_and_padding() -> None:
    ig, tg, it, tl = _inputs(torch.float64, C=9, seed=1)
    tt, tm = _pad(tl)
    tt2, tm2 = _pad(tl, extra=3)
    outs = []
    for chunk in (1, 4, 100):
        for t_, m_ in ((tt, tm), (tt2, tm2)):
            head = HierarchicalOTHead(OTHeadConfig(class_chunk=chunk, compat="reference"))
            outs.append(head(ig, tg, 100.0, it, None, t_, m_))
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], atol=1e-12, rtol=0)


def test_image_token_mask_equals_unpadded() -> None:
    ig, tg, it, tl = _inputs(torch.float64, seed=2)
    tt, tm = _pad(tl)
    it_pad = torch.cat([it, torch.full_like(it[:, :, :3], float("nan"))], dim=2)
    im = torch.ones(it_pad.shape[:3], dtype=torch.bool)
    im[:, :, -3:] = False
    cfg = OTHeadConfig(compat="paper", stop="marginal", beta=1.0)
    a = HierarchicalOTHead(cfg)(ig, tg, 100.0, it, None, tt, tm)
    b = HierarchicalOTHead(cfg)(ig, tg, 100.0, it_pad, im, tt, tm)
    torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_reference_gradients() -> None:
    ig, tg, it, tl = _inputs(torch.float64, seed=3)
    tt, tm = _pad(tl)
    for x in (ig, tg, it, tt):
        x.requires_grad_(True)
    head = HierarchicalOTHead(OTHeadConfig(compat="reference"))
    head(ig, tg, 100.0, it, None, tt, tm).logsumexp(-1).sum().backward()
    assert it.grad is None and tt.grad is None  # D3: no gradient reaches the token path at all
    assert ig.grad.abs().sum() > 0 and tg.grad.abs().sum() > 0


@pytest.mark.parametrize("grad", ["detach", "envelope", "autodiff"])
def test_paper_gradients_reach_tokens(grad: str) -> None:
    ig, tg, it, tl = _inputs(torch.float64, seed=4, B=1, C=3)
    tt, tm = _pad(tl)
    it.requires_grad_(True)
    tt.requires_grad_(True)
    head = HierarchicalOTHead(OTHeadConfig(compat="paper", beta=0.5, grad=grad, class_chunk=2, stop="fixed",
                                           max_iter=20))
    out = head(ig, tg, 100.0, it, None, tt, tm)
    out.logsumexp(-1).sum().backward()
    assert it.grad.abs().sum() > 0 and tt.grad.abs().sum() > 0
    assert torch.isfinite(tt.grad).all() and tt.grad[~tm].abs().sum() == 0  # padding gets no gradient
    if grad == "detach":
        # with detached plans d logit / d token = -scale·beta·T·T_tok·(d(1 - S_tok)); check vs a finite difference
        it2 = it.detach().clone()
        h = 1e-6
        idx = (0, 1, 2, 3)
        with torch.no_grad():
            it2[idx] += h
            up = head(ig, tg, 100.0, it2, None, tt.detach(), tm).logsumexp(-1).sum()
            it2[idx] -= 2 * h
            dn = head(ig, tg, 100.0, it2, None, tt.detach(), tm).logsumexp(-1).sum()
        fd = (up - dn) / (2 * h)
        # plans move with the input in the finite difference but not in the detached gradient: only compare sign/scale
        assert torch.sign(fd) == torch.sign(it.grad[idx]) or abs(float(fd)) < 1e-6


def test_beta_zero_equals_prompt_level_only() -> None:
    ig, tg, it, tl = _inputs(torch.float64, seed=5)
    tt, tm = _pad(tl)
    a = HierarchicalOTHead(OTHeadConfig(compat="paper", beta=0.0))(ig, tg, 100.0, it, None, tt, tm)
    b = HierarchicalOTHead(OTHeadConfig(compat="paper", token_level=False))(ig, tg, 100.0)
    c = HierarchicalOTHead(OTHeadConfig(compat="paper"))(ig, tg, 100.0)  # no tokens given
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(a, c, atol=0, rtol=0)
    # PLOT (token_level False): paper and reference forms coincide up to the stopping rule
    d = HierarchicalOTHead(OTHeadConfig(compat="reference", token_level=False, tol=1e-12, max_iter=2000))(ig, tg,
                                                                                                           100.0)
    torch.testing.assert_close(a / 100.0, d / 100.0, atol=1e-6, rtol=0)  # paper side stops at marginal err 1e-6


@pytest.mark.parametrize("compat", ["paper", "reference"])
def test_single_view_single_prompt_is_cosine(compat: str) -> None:
    ig, tg, _, _ = _inputs(torch.float64, M=1, N=1, seed=6)
    out = HierarchicalOTHead(OTHeadConfig(compat=compat, token_level=False))(ig, tg, torch.tensor(100.0))
    cos = torch.nn.functional.normalize(ig[:, 0], dim=-1) @ torch.nn.functional.normalize(tg[:, 0], dim=-1).T
    torch.testing.assert_close(out, 100.0 * cos, atol=1e-10, rtol=0)


def test_nan_input_raises_with_context() -> None:
    ig, tg, it, tl = _inputs(torch.float32, seed=7)
    tt, tm = _pad(tl)
    ig[0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"img_global of shape \(2, 3, 8\)"):
        HierarchicalOTHead(OTHeadConfig())(ig, tg, 100.0, it, None, tt, tm)
    ig[0, 0, 0] = 0.0
    tt[0, 0, 0, 0] = float("nan")
    tm[0, 0, 0] = True
    with pytest.raises(FloatingPointError, match="txt_tokens"):
        HierarchicalOTHead(OTHeadConfig())(ig, tg, 100.0, it, None, tt, tm)


def test_half_inputs_give_fp32_logits_and_diagnostics() -> None:
    ig, tg, it, tl = _inputs(torch.float32, seed=8)
    tt, tm = _pad(tl)
    head = HierarchicalOTHead(OTHeadConfig(compat="reference"))
    out16 = head(ig.half(), tg.half(), 100.0, it.half(), None, tt.half(), tm)
    assert out16.dtype == torch.float32
    out32 = head(ig.half().float(), tg.half().float(), 100.0, it.half().float(), None, tt.half().float(), tm)
    torch.testing.assert_close(out16, out32)
    logged, d = head(ig.half(), tg.half(), 100.0, it.half(), None, tt.half(), tm, log=True)
    torch.testing.assert_close(logged, out16, rtol=0, atol=0)
    assert not hasattr(head, "last_diagnostics"), "diagnostics are returned, not kept as module state"
    for k in ("plan_entropy", "plan_max_min_ratio", "prompt_iters", "token_iters_mean", "token_iters_max"):
        assert k in d and torch.isfinite(d[k])
    assert 0.0 < float(d["plan_entropy"]) <= 1.0 + 1e-6


def test_nan_image_padding_gives_finite_gradients() -> None:
    """Image tokens are masked before they are normalised: NaN padding changes neither the logits nor the gradients
    of the real tokens, and no NaN reaches any gradient (paper mode, gradients through the token term)."""
    ig, tg, it, tl = _inputs(torch.float64, seed=21)
    tt, tm = _pad(tl)
    cfg = OTHeadConfig(compat="paper", stop="marginal", beta=1.0)
    it_pad = torch.cat([it, torch.full_like(it[:, :, :3], float("nan"))], dim=2).requires_grad_(True)
    im = torch.ones(it_pad.shape[:3], dtype=torch.bool)
    im[:, :, -3:] = False
    out = HierarchicalOTHead(cfg)(ig, tg, 100.0, it_pad, im, tt, tm)
    out.sum().backward()
    assert torch.isfinite(it_pad.grad).all() and it_pad.grad[:, :, -3:].abs().max() == 0
    it_real = it.clone().requires_grad_(True)
    HierarchicalOTHead(cfg)(ig, tg, 100.0, it_real, None, tt, tm).sum().backward()
    torch.testing.assert_close(it_pad.grad[:, :, :-3], it_real.grad, atol=1e-10, rtol=1e-8)


# ----------------------------------------------------------------------------------------------- token-level tiling
# "batched" is the untiled path (all images × class chunks through sinkhorn); the cache tilings below split images
# and classes in several ways, including one (image, class) per tile and tiles that do not divide B or C.
_TILINGS = [dict(tile="cache", tile_images=1, tile_classes=1), dict(tile="cache", tile_images=2, tile_classes=3),
            dict(tile="cache", tile_images=3, tile_classes=4, class_chunk=2), dict(tile="cache")]


def _ragged_inputs(seed: int, B: int = 3, C: int = 7):
    """float64 inputs with masked (NaN) image tokens, ragged text lengths and a non-left-aligned text mask."""
    ig, tg, it, tl = _inputs(torch.float64, B=B, C=C, seed=seed)
    tt, tm = _pad(tl, extra=2)
    tm[1, :, 0] = False  # a hole at the front of class 1
    tm[4, 1, :] = False
    tm[4, 1, 2] = True  # prompt 1 of class 4: a single token
    it = torch.cat([it, torch.full_like(it[:, :, :4], float("nan"))], dim=2)
    im = torch.ones(it.shape[:3], dtype=torch.bool)
    im[:, :, -4:] = False
    im[0, 1, :6] = False  # views with different numbers of real tokens
    im[-1, 0, 3] = False
    return ig, tg, it, im, tt, tm


def _head(tiling: dict, **kw) -> HierarchicalOTHead:
    return HierarchicalOTHead(OTHeadConfig(**{**kw, **tiling}))


@pytest.mark.parametrize("domain", ["kernel", "log"])
@pytest.mark.parametrize("compat,stop", [("reference", "reference"), ("paper", "marginal"), ("paper", "fixed"),
                                         ("paper", "reference")])
def test_tiling_invariance(compat: str, stop: str, domain: str) -> None:
    """Without a graph: logits and token diagnostics do not depend on the tiling and equal the untiled path (masks,
    ragged lengths, every stopping rule — the reference rule pools each (image, class) group inside one tile)."""
    ig, tg, it, im, tt, tm = _ragged_inputs(seed=30)
    kw = dict(compat=compat, stop=stop, domain=domain, beta=0.7, max_iter=30 if stop == "fixed" else 100,
              tol=1e-9 if stop == "marginal" else None)
    ref, dref = _head(dict(tile="batched"), **kw)(ig, tg, 100.0, it, im, tt, tm, log=True)
    for tiling in _TILINGS:
        out, d = _head(tiling, **kw)(ig, tg, 100.0, it, im, tt, tm, log=True)
        torch.testing.assert_close(out, ref, atol=1e-12, rtol=0, msg=str(tiling))
        for k in ("token_iters_mean", "token_iters_max", "token_iters_min", "prompt_iters"):
            assert float(d[k]) == float(dref[k]), (tiling, k)
        torch.testing.assert_close(d["token_marginal_err"], dref["token_marginal_err"], atol=1e-13, rtol=0)


@pytest.mark.parametrize("grad", ["detach", "envelope", "autodiff"])
def test_tiling_invariance_with_graph(grad: str) -> None:
    """Paper mode with gradients to the tokens (each tile checkpointed, or unrolled for autodiff): logits and the
    gradients of all four inputs equal the untiled path."""
    ig, tg, it, im, tt, tm = _ragged_inputs(seed=31, B=2, C=5)
    kw = dict(compat="paper", beta=0.5, grad=grad, stop="fixed", max_iter=15)
    results = []
    for tiling in [dict(tile="batched")] + _TILINGS:
        xs = [x.detach().clone().requires_grad_(True) for x in (ig, tg, it, tt)]
        out = _head(tiling, **kw)(xs[0], xs[1], 100.0, xs[2], im, xs[3], tm)
        out.logsumexp(-1).sum().backward()
        results.append((out.detach(), [x.grad for x in xs]))
    (ref, gref) = results[0]
    assert all(torch.isfinite(g).all() for g in gref) and gref[2].abs().sum() > 0 and gref[3].abs().sum() > 0
    for out, grads in results[1:]:
        torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
        for g, gr in zip(grads, gref):
            torch.testing.assert_close(g, gr, atol=1e-10, rtol=1e-9)


def _total_bytes_probe():
    """A CPU memory probe that also sums every byte allocated (``.total``), freed or not (bench/memory.py)."""
    from bench.memory import LiveTensorBytes

    class TotalBytes(LiveTensorBytes):
        def __init__(self) -> None:
            super().__init__()
            self.total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
            before = self.cur
            out = super().__torch_dispatch__(func, types, args, kwargs)
            self.total += max(0, self.cur - before)
            return out

    return TotalBytes()


def test_backward_memory_does_not_grow_with_the_number_of_tiles() -> None:
    """Training through many cache tiles: the gradient of the text tokens is gathered once, not scattered into a
    full-size zero tensor per tile (which made a 1,000-class step hold several copies of the token set and do
    C/Ct full-size passes). Total bytes allocated in forward + backward with one class per tile stay within 2x those
    of a single tile."""
    ig, tg, it, im, tt, tm = _ragged_inputs(seed=33, B=2, C=48)
    tt = torch.cat([tt, torch.zeros(*tt.shape[:2], 40, tt.shape[-1], dtype=tt.dtype)], dim=2)  # long padded tail
    tm = torch.cat([tm, torch.zeros(*tm.shape[:2], 40, dtype=torch.bool)], dim=2)
    totals = []
    for tiling in (dict(tile="cache", tile_images=2, tile_classes=48), dict(tile="cache", tile_images=1,
                                                                          tile_classes=1)):
        xs = [x.detach().clone().requires_grad_(True) for x in (ig, tg, it, tt)]
        probe = _total_bytes_probe()
        with probe:
            out = _head(tiling, compat="paper", grad="envelope", stop="fixed", max_iter=5)(
                xs[0], xs[1], 100.0, xs[2], im, xs[3], tm)
            out.sum().backward()
        totals.append(probe.total)
    assert totals[1] < 2 * totals[0], totals


def test_tiling_empty_token_sets() -> None:
    """A class prompt without any real token and an image view without any: zero token plans (sinkhorn's masking),
    whichever tiling."""
    ig, tg, it, im, tt, tm = _ragged_inputs(seed=32)
    tm[3] = False
    im[1, 2] = False
    outs = [_head(t, compat="paper", stop="marginal")(ig, tg, 100.0, it, im, tt, tm)
            for t in [dict(tile="batched")] + _TILINGS]
    assert torch.isfinite(outs[0]).all()
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], atol=1e-12, rtol=0)


def test_cache_tiles_follow_the_budget() -> None:
    """Tiles cover every (image, class) exactly once; cache tiles fit the budget (3 full-size buffers) unless the
    minimum GEMM width asks for more; class_chunk caps the classes per tile; explicit sizes win."""
    from promptot.ot import hierarchical as hier

    lens = sorted(torch.randint(4, 13, (50,), generator=torch.Generator().manual_seed(0)).tolist())
    B, M, P, N = 5, 4, 198, 4
    for budget in (1, 1 << 18, 1 << 20, 1 << 22, 1 << 40):
        head = HierarchicalOTHead(OTHeadConfig(tile="cache", cache_bytes=budget, class_chunk=20))
        bt, tiles = head._tiles(lens, B, M, P, N, 4, "cache")
        assert [s for s, _ in tiles] == [0] + [e for _, e in tiles[:-1]] and tiles[-1][1] == len(lens)
        for s, e in tiles:
            L = max(lens[s:e])
            entries = bt * M * P * (e - s) * N * L
            assert e - s <= 20
            assert entries * 3 * 4 <= budget or (e - s - 1) * N * max(lens[s:e - 1] or [0]) < hier._MIN_GEMM_COLS \
                or e - s == 1
            if e < len(lens) and e - s < 20 and lens[e] == lens[e - 1]:  # ended inside a length: the budget was full
                assert bt * M * P * (e + 1 - s) * N * lens[e] * 3 * 4 > budget
        if budget == 1 << 40:
            assert bt == 1 and len(tiles) >= 3  # class_chunk-capped (and split at lengths), so one image per tile
    bt, tiles = HierarchicalOTHead(OTHeadConfig(tile="cache", cache_bytes=1 << 40))._tiles(lens, B, M, P, N, 4,
                                                                                          "cache")
    assert len(tiles) == 1 and bt == B  # everything fits: all classes, all images
    bt, tiles = HierarchicalOTHead(OTHeadConfig(tile="cache", tile_images=2, tile_classes=7))._tiles(
        lens, B, M, P, N, 4, "cache")
    assert bt == 2 and [e - s for s, e in tiles] == [7] * 7 + [1]
    bt, tiles = HierarchicalOTHead(OTHeadConfig(tile="batched", class_chunk=16))._tiles(lens, B, M, P, N, 4, "batched")
    assert bt == B and [e - s for s, e in tiles] == [16, 16, 16, 2]
    assert hier.cache_budget_bytes() >= 1 << 10
    assert hier._parse_size("512K\n") == 512 << 10 and hier._parse_size("32M") == 32 << 20
    assert hier._cpu_count("0-3,8-11\n") == 8 and hier._cpu_count("5") == 1
    with pytest.raises(ValueError, match="tile"):
        OTHeadConfig(tile="tiles")
    with pytest.raises(ValueError, match="tile_classes"):
        OTHeadConfig(tile_classes=0)


@pytest.mark.parametrize("tiling", [dict(tile="batched"), dict(tile="cache")])
def test_kernel_underflow_raises_in_every_tiling(tiling: dict) -> None:
    """fp32, ε = 0.005: a text token opposite to every image token has kernel e^{-2/ε} = 0 in its column even after
    the row shift; both paths raise with the log-domain hint instead of returning NaN logits."""
    D = 4
    e0 = torch.eye(D)[0]
    it = e0.expand(1, 1, 3, D).clone()
    tt = torch.stack([e0, -e0]).expand(1, 1, 2, D).clone()
    ig, tg = torch.randn(1, 1, D), torch.randn(1, 1, D)
    head = _head(tiling, compat="reference", eps_token=0.005)
    with pytest.raises(FloatingPointError, match="domain='log'"):
        head(ig, tg, 100.0, it, None, tt, None)
    ok = _head(tiling, compat="reference", eps_token=0.005, domain="log")(ig, tg, 100.0, it, None, tt, None)
    assert torch.isfinite(ok).all()


def _as_pieces(tt: torch.Tensor, tm: torch.Tensor, order: List[int], sizes: List[int]) -> TokenPieces:
    """``tt [C, N, L, D]`` / ``tm [C, N, L]`` as pieces of the classes ``order`` (any order), each piece cut after
    its last real position (fresh leaves, so gradients can be read per piece)."""
    pieces, masks, s = [], [], 0
    for n in sizes:
        idx = torch.tensor(order[s:s + n])
        m = tm[idx]
        length = int((m * torch.arange(1, m.shape[-1] + 1)).amax()) or 1
        pieces.append(tt[idx, :, :length].detach().clone())
        masks.append(m[:, :, :length])
        s += n
    return TokenPieces(pieces, masks, torch.tensor(order))


@pytest.mark.parametrize("compat,stop", [("reference", "reference"), ("paper", "marginal")])
def test_token_pieces_equal_the_padded_tensor(compat: str, stop: str) -> None:
    """Token sets given as pieces of classes (any class order, uneven pieces, each cut at its own length) give the
    logits and diagnostics of the padded tensor, in every tiling; so do token terms computed piece by piece and
    joined with TokenTerm.cat."""
    ig, tg, it, im, tt, tm = _ragged_inputs(seed=40, C=7)
    order, sizes = [5, 0, 3, 6, 1, 2, 4], [3, 1, 3]
    pieces = _as_pieces(tt, tm, order, sizes)
    dense_t, dense_m = pieces.dense()
    assert dense_t.shape == (7, tt.shape[1], pieces.shape[2], tt.shape[3])
    torch.testing.assert_close(dense_m, tm[:, :, :pieces.shape[2]], rtol=0, atol=0)
    kw = dict(compat=compat, stop=stop, beta=0.7, tol=1e-9 if stop == "marginal" else None)
    ref, dref = _head(dict(tile="batched"), **kw)(ig, tg, 100.0, it, im, tt, tm, log=True)
    for tiling in [dict(tile="batched")] + _TILINGS:
        head = _head(tiling, **kw)
        out, d = head(ig, tg, 100.0, it, im, pieces, log=True)
        torch.testing.assert_close(out, ref, atol=1e-12, rtol=0, msg=str(tiling))
        assert float(d["token_iters_max"]) == float(dref["token_iters_max"])
        parts, s = [], 0
        for p, m, n in zip(pieces.pieces, pieces.masks, sizes):
            parts.append(head.token_term(it, TokenPieces([p], [m], torch.arange(n)), img_mask=im))
            s += n
        joined = TokenTerm.cat(parts, pieces.order)
        torch.testing.assert_close(head(ig, tg, 100.0, token_term=joined), ref, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="carries its own masks"):
        _head(dict(), **kw)(ig, tg, 100.0, it, im, pieces, tm)
    with pytest.raises(ValueError, match="not both"):
        _head(dict(), **kw)(ig, tg, 100.0, it, im, pieces, token_term=joined)
    with pytest.raises(ValueError, match=r"expected \[B, C, M, N\]"):
        _head(dict(), **kw)(ig, tg[:5], 100.0, token_term=joined)
    with pytest.raises(ValueError, match="mask 0 has shape"):
        TokenPieces(pieces.pieces, [m[:, :, :1] for m in pieces.masks], pieces.order)
    with pytest.raises(ValueError, match="one class index per piece row"):
        TokenPieces(pieces.pieces, pieces.masks, pieces.order[:3])


@pytest.mark.parametrize("grad", ["detach", "autodiff"])
def test_token_pieces_gradients_equal_the_padded_tensor(grad: str) -> None:
    """With a graph, each piece's tiles are views whose gradients land in one buffer per piece: the gradients of the
    pieces are those of the padded tensor's rows, with and without tile checkpointing."""
    ig, tg, it, im, tt, tm = _ragged_inputs(seed=41, B=2, C=6)
    order, sizes = [2, 5, 0, 1, 4, 3], [4, 2]
    kw = dict(compat="paper", beta=0.5, grad=grad, stop="fixed", max_iter=15)
    xs = [x.detach().clone().requires_grad_(True) for x in (ig, tg, it, tt)]
    ref = _head(dict(tile="batched"), **kw)(xs[0], xs[1], 100.0, xs[2], im, xs[3], tm)
    ref.logsumexp(-1).sum().backward()
    for tiling in [dict(tile="batched")] + _TILINGS:
        for ckpt in (True, False):
            pieces = _as_pieces(tt, tm, order, sizes)
            for p in pieces.pieces:
                p.requires_grad_(True)
            ys = [x.detach().clone().requires_grad_(True) for x in (ig, tg, it)]
            head = _head(tiling, **kw)
            term = head.token_term(ys[2], pieces, img_mask=im, checkpoint_tiles=ckpt)
            out = head(ys[0], ys[1], 100.0, token_term=term)
            torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
            out.logsumexp(-1).sum().backward()
            for y, x in zip(ys, xs):
                torch.testing.assert_close(y.grad, x.grad, atol=1e-10, rtol=1e-9)
            s = 0
            for p, n in zip(pieces.pieces, sizes):
                idx = torch.tensor(order[s:s + n])
                torch.testing.assert_close(p.grad, xs[3].grad[idx, :, :p.shape[2]], atol=1e-10, rtol=1e-9)
                s += n


def test_token_pieces_backward_allocates_one_gradient_per_piece() -> None:
    """One piece cut into many cache tiles: backward writes the tile gradients into one buffer, so the bytes
    allocated by forward + backward with one class per tile stay close to those of a single tile (measured 0.76x at 96
    classes; autograd's own slicing, a piece-sized zero tensor per tile, gave 1.39x and grows with C)."""
    ig, tg, it, im, tt, tm = _ragged_inputs(seed=43, B=2, C=96)
    totals = []
    for tiling in (dict(tile="cache", tile_images=2, tile_classes=96), dict(tile="cache", tile_images=1,
                                                                           tile_classes=1)):
        pieces = _as_pieces(tt, tm, list(range(96)), [96])
        pieces.pieces[0].requires_grad_(True)
        probe = _total_bytes_probe()
        with probe:
            out = _head(tiling, compat="paper", grad="envelope", stop="fixed", max_iter=5)(
                ig, tg, 100.0, it, im, pieces)
            out.sum().backward()
        totals.append(probe.total)
    assert totals[1] < 1.15 * totals[0], totals
