"""Tests of promptot.ot.sinkhorn against POT (float64), plain loops and analytic cases. CPU, fast."""
from __future__ import annotations

import math

import numpy as np

import pytest
import torch

ot = pytest.importorskip("ot")

from promptot.ot import ot_cost, sinkhorn  # noqa: E402

D64 = torch.float64


def _rand_cost(*shape: int, seed: int = 0, dtype=D64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=dtype)


def _reference_rule_loop(C: torch.Tensor, eps: float, max_iter: int = 100, tol: float = 1e-2):
    """Plain transcription of the PLOT/ALIGN rule on a batch [G, n, m] (one pooled decision)."""
    K = torch.exp(-C / eps)
    G, n, m = C.shape
    u = torch.full((G, n), 1.0 / n, dtype=C.dtype)
    v = torch.full((G, m), 1.0 / m, dtype=C.dtype)
    r, c = torch.ones_like(u), torch.ones_like(v)
    it = 0
    for it in range(1, max_iter + 1):
        r0 = r
        r = u / (K @ c[..., None])[..., 0]
        c = v / (K.transpose(1, 2) @ r[..., None])[..., 0]
        if (r - r0).abs().mean().item() < tol:
            break
    return r[..., None] * K * c[..., None, :], it


@pytest.mark.parametrize("domain", ["kernel", "log"])
def test_matches_pot_sinkhorn(domain: str) -> None:
    C = _rand_cost(7, 5)
    a = torch.rand(7, dtype=D64) + 0.1
    a /= a.sum()
    b = torch.rand(5, dtype=D64) + 0.1
    b /= b.sum()
    res = sinkhorn(C, eps=0.1, a=a, b=b, domain=domain, stop="marginal", max_iter=5000, tol=1e-12)
    Tk = ot.sinkhorn(a.numpy(), b.numpy(), C.numpy(), 0.1, method="sinkhorn", numItermax=5000, stopThr=1e-13)
    Tl = ot.bregman.sinkhorn_log(a.numpy(), b.numpy(), C.numpy(), 0.1, numItermax=5000, stopThr=1e-13)
    np.testing.assert_allclose(res.plan.numpy(), Tk, atol=1e-10)
    np.testing.assert_allclose(res.plan.numpy(), Tl, atol=1e-10)
    assert res.plan.dtype == D64
    assert float(res.marginal_err) < 1e-11


def test_matches_pot_solve_batch() -> None:
    batch = pytest.importorskip("ot.batch")
    C = _rand_cost(6, 5, 4, seed=1)
    res = sinkhorn(C, eps=0.1, stop="marginal", max_iter=5000, tol=1e-12)
    out = batch.solve_batch(C, reg=0.1, max_iter=5000, tol=1e-12, method="sinkhorn", grad="detach")
    np.testing.assert_allclose(res.plan.numpy(), np.asarray(out.plan), atol=1e-8)


@pytest.mark.parametrize("domain", ["kernel", "log"])
def test_masked_equals_unpadded(domain: str) -> None:
    C = _rand_cost(3, 9, 8, seed=2)
    n_real, m_real = [9, 5, 7], [3, 8, 6]
    rm = torch.zeros(3, 9, dtype=torch.bool)
    cm = torch.zeros(3, 8, dtype=torch.bool)
    Cpad = C.clone()
    for i in range(3):
        rm[i, : n_real[i]] = True
        cm[i, : m_real[i]] = True
        Cpad[i, n_real[i]:, :] = 1e6  # garbage padding must not matter
        Cpad[i, :, m_real[i]:] = float("nan")
    res = sinkhorn(Cpad, eps=0.1, row_mask=rm, col_mask=cm, domain=domain, stop="fixed", max_iter=50)
    for i in range(3):
        sub = sinkhorn(C[i, : n_real[i], : m_real[i]], eps=0.1, domain=domain, stop="fixed", max_iter=50)
        torch.testing.assert_close(res.plan[i, : n_real[i], : m_real[i]], sub.plan, atol=1e-12, rtol=0)
        assert float(res.plan[i].sum()) == pytest.approx(1.0)
        assert float(res.plan[i][~(rm[i, :, None] & cm[i, None, :])].abs().sum()) == 0.0


@pytest.mark.parametrize("domain", ["kernel", "log"])
def test_fully_masked_problem_is_zero_not_nan(domain: str) -> None:
    C = _rand_cost(2, 4, 3, seed=3)
    rm = torch.tensor([[True] * 4, [False] * 4])
    res = sinkhorn(C, eps=0.1, row_mask=rm, domain=domain, stop="marginal")
    assert torch.isfinite(res.plan).all()
    assert float(res.plan[1].abs().sum()) == 0.0
    assert float(res.plan[0].sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("stop", ["marginal", "fixed"])
def test_batched_equals_loop(stop: str) -> None:
    C = _rand_cost(2, 3, 6, 5, seed=4)
    res = sinkhorn(C, eps=0.05, stop=stop, max_iter=200, tol=1e-9)
    for i in range(2):
        for j in range(3):
            sub = sinkhorn(C[i, j], eps=0.05, stop=stop, max_iter=200, tol=1e-9)
            torch.testing.assert_close(res.plan[i, j], sub.plan, atol=1e-13, rtol=0)
            if stop == "marginal":
                assert int(res.n_iter[i, j]) == int(sub.n_iter)


def test_kernel_equals_log_domain() -> None:
    C = _rand_cost(4, 7, 6, seed=5) * 3.0 + 5.0  # large offset: the per-row shift keeps the kernel domain exact
    rk = sinkhorn(C, eps=0.1, domain="kernel", stop="fixed", max_iter=80)
    rl = sinkhorn(C, eps=0.1, domain="log", stop="fixed", max_iter=80)
    torch.testing.assert_close(rk.plan, rl.plan, atol=1e-12, rtol=0)
    # fp32 with cost/eps ≈ 80 would underflow an unshifted kernel (e^-80 < 1e-35); the shifted one is fine.
    rk32 = sinkhorn((C * 1.0).float() + 3.0, eps=0.1, domain="kernel", stop="fixed", max_iter=80)
    torch.testing.assert_close(rk32.plan.double(), rl.plan, atol=1e-5, rtol=0)


@pytest.mark.parametrize("domain", ["kernel", "log"])
def test_permutation_known_answer(domain: str) -> None:
    perm = torch.tensor([3, 0, 4, 1, 2])
    C = torch.ones(5, 5, dtype=D64)
    C[torch.arange(5), perm] = 0.0
    res = sinkhorn(C, eps=0.01, domain=domain, stop="marginal", max_iter=1000)
    P = torch.zeros(5, 5, dtype=D64)
    P[torch.arange(5), perm] = 0.2
    torch.testing.assert_close(res.plan, P, atol=1e-10, rtol=0)


def test_non_uniform_marginals() -> None:
    C = _rand_cost(5, 4, seed=6)
    a = torch.tensor([0.1, 0.2, 0.3, 0.25, 0.15], dtype=D64)
    b = torch.tensor([0.4, 0.1, 0.3, 0.2], dtype=D64)
    res = sinkhorn(C, eps=0.2, a=a, b=b, stop="marginal", tol=1e-12, max_iter=5000)
    torch.testing.assert_close(res.plan.sum(-1), a, atol=1e-11, rtol=0)
    torch.testing.assert_close(res.plan.sum(-2), b, atol=1e-11, rtol=0)


@pytest.mark.parametrize("domain", ["kernel", "log"])
def test_reference_stop_equals_plain_loop(domain: str) -> None:
    # cost offset ≈ cosine-distance range so that r is O(e^{offset/eps}) as in the reference code (scale-dependent rule)
    C = _rand_cost(3, 4, 6, 5, seed=7) * 0.5 + 0.5
    # group_ndim=1: one decision per leading index, pooling the 4 problems of the second batch dim
    res = sinkhorn(C, eps=0.1, stop="reference", group_ndim=1, domain=domain, check_every=3)
    assert res.n_iter.shape == (3,)
    for i in range(3):
        T, it = _reference_rule_loop(C[i], 0.1)
        assert int(res.n_iter[i]) == it
        torch.testing.assert_close(res.plan[i], T, atol=1e-12, rtol=0)
    # default grouping: one decision for the whole batch
    res_all = sinkhorn(C, eps=0.1, stop="reference", domain=domain)
    T, it = _reference_rule_loop(C.reshape(12, 6, 5), 0.1)
    assert res_all.n_iter.shape == () and int(res_all.n_iter) == it
    torch.testing.assert_close(res_all.plan.reshape(12, 6, 5), T, atol=1e-12, rtol=0)


@pytest.mark.parametrize("domain", ["kernel", "log"])
@pytest.mark.parametrize("stop", ["reference", "marginal"])
def test_groups_stopping_at_different_iterations_equal_each_group_alone(stop: str, domain: str) -> None:
    """Problems whose costs differ in spread converge after very different numbers of iterations, many of them past
    the early host checks and between the periodic ones: each one's plan, iteration count and marginal error in the
    batch equal those of the problem solved alone (iterates of stopped groups are frozen, and only then)."""
    spreads = [0.05, 0.3, 1.0, 2.0, 4.0, 8.0]
    C = torch.stack([_rand_cost(5, 4, seed=30 + i) * s for i, s in enumerate(spreads)])
    kw = dict(eps=0.1, stop=stop, group_ndim=0, domain=domain, check_every=7, max_iter=500,
              tol=1e-3 if stop == "reference" else 1e-9)
    res = sinkhorn(C, **kw)
    counts = res.n_iter.tolist()
    assert len(set(counts)) >= 4 and max(counts) > 8, counts  # the batch really mixes early and late stoppers
    for i in range(len(spreads)):
        alone = sinkhorn(C[i:i + 1], **kw)
        assert int(alone.n_iter[0]) == counts[i]
        torch.testing.assert_close(res.plan[i], alone.plan[0], atol=1e-13, rtol=0)
        torch.testing.assert_close(res.marginal_err[i], alone.marginal_err[0], atol=1e-13, rtol=0)


def test_reference_stop_with_masks_matches_unpadded() -> None:
    C = _rand_cost(2, 6, 5, seed=8) * 0.5 + 0.5
    rm = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    res = sinkhorn(C, eps=0.1, stop="reference", group_ndim=0, row_mask=rm)  # one decision per problem
    T, it = _reference_rule_loop(C[1:, :4], 0.1)
    assert int(res.n_iter[1]) == it
    torch.testing.assert_close(res.plan[1, :4], T[0], atol=1e-12, rtol=0)


def test_gradcheck_autodiff() -> None:
    C = _rand_cost(2, 4, 3, seed=9).requires_grad_(True)

    def f(c: torch.Tensor) -> torch.Tensor:
        return ot_cost(c, eps=0.3, stop="fixed", max_iter=15, grad="autodiff")[0]

    assert torch.autograd.gradcheck(f, (C,), eps=1e-6, atol=1e-6)

    def f_log(c: torch.Tensor) -> torch.Tensor:
        return sinkhorn(c, eps=0.3, stop="fixed", max_iter=15, grad="autodiff", domain="log").plan

    assert torch.autograd.gradcheck(f_log, (C,), eps=1e-6, atol=1e-6)


def test_envelope_identity() -> None:
    """d OT_eps / dC = T* (Danskin): envelope gradient equals the finite-difference gradient of the entropic value."""
    C = _rand_cost(4, 3, seed=10).requires_grad_(True)
    kw = dict(eps=0.2, stop="marginal", tol=1e-13, max_iter=5000, grad="envelope", entropic=True)
    val, res = ot_cost(C, **kw)
    (g,) = torch.autograd.grad(val, C)
    torch.testing.assert_close(g, res.plan, atol=0, rtol=0)
    h = 1e-6
    num = torch.zeros_like(C)
    with torch.no_grad():
        for i in range(4):
            for j in range(3):
                E = torch.zeros_like(C)
                E[i, j] = h
                num[i, j] = (ot_cost(C + E, **kw)[0] - ot_cost(C - E, **kw)[0]) / (2 * h)
    torch.testing.assert_close(g, num, atol=1e-7, rtol=0)
    # detach: no graph through the plan, and the value's gradient is T as well
    val_d, res_d = ot_cost(C, eps=0.2, grad="detach")
    assert not res_d.plan.requires_grad
    (gd,) = torch.autograd.grad(val_d, C)
    torch.testing.assert_close(gd, res_d.plan)


@pytest.mark.parametrize("domain", ["kernel", "log"])
def test_non_finite_cost_raises(domain: str) -> None:
    C = _rand_cost(2, 3, 4)
    C[1, 2, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"shape \(2, 3, 4\).*eps=0.1"):
        sinkhorn(C, eps=0.1, domain=domain)
    C[1, 2, 0] = float("inf")
    with pytest.raises(FloatingPointError):
        sinkhorn(C, eps=0.1, domain=domain)


def test_kernel_underflow_raises_clearly() -> None:
    # column 1 costs 50/0.01 = 5000 above every row minimum -> its kernel column underflows to 0 in the kernel domain
    C = torch.tensor([[0.0, 50.0], [0.0, 50.0]], dtype=torch.float32)
    with pytest.raises(FloatingPointError, match="domain='log'"):
        sinkhorn(C, eps=0.01, domain="kernel", stop="fixed", max_iter=5)
    assert torch.isfinite(sinkhorn(C, eps=0.01, domain="log", stop="fixed", max_iter=5).plan).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_input_gives_fp32_plan(dtype: torch.dtype) -> None:
    C = _rand_cost(3, 5, 4, dtype=torch.float32)
    res = sinkhorn(C.to(dtype), eps=0.1)
    assert res.plan.dtype == torch.float32
    ref = sinkhorn(C.to(dtype).float(), eps=0.1)
    torch.testing.assert_close(res.plan, ref.plan)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        sinkhorn(torch.rand(3, 3), domain="foo")
    with pytest.raises(ValueError):
        sinkhorn(torch.rand(3, 3), eps=0.0)
    with pytest.raises(ValueError):
        sinkhorn(torch.rand(2, 3, 3), stop="reference", group_ndim=3)


@pytest.mark.parametrize("domain", ["kernel", "log"])
def test_given_row_weights_are_zeroed_on_masked_rows(domain: str) -> None:
    """Weights put on padding rows carry no mass: the plan equals the unpadded problem's (real rows only)."""
    C = _rand_cost(5, 4, seed=11)
    a_real = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=D64)
    a = torch.cat([a_real, torch.tensor([0.3], dtype=D64)])  # 0.3 on the padding row
    mask = torch.tensor([True, True, True, True, False])
    padded = sinkhorn(C, eps=0.1, a=a, row_mask=mask, domain=domain, max_iter=2000, tol=1e-12).plan
    alone = sinkhorn(C[:4], eps=0.1, a=a_real, domain=domain, max_iter=2000, tol=1e-12).plan
    assert padded[4].abs().max() == 0
    torch.testing.assert_close(padded[:4], alone, atol=1e-10, rtol=0)
    torch.testing.assert_close(padded.sum(), torch.tensor(1.0, dtype=D64), atol=1e-9, rtol=0)


@pytest.mark.parametrize("domain", ["kernel", "log"])
@pytest.mark.parametrize("n_iter", [1, 2, 7])
def test_fixed_stop_runs_exactly_max_iter_iterations(domain: str, n_iter: int) -> None:
    """``stop="fixed"`` = exactly ``max_iter`` (row, column) updates from r = c = 1: equal to a plain loop."""
    C = _rand_cost(3, 4, 5, seed=12)
    res = sinkhorn(C, eps=0.2, stop="fixed", max_iter=n_iter, domain=domain)
    assert int(res.n_iter) == n_iter
    K = torch.exp(-C / 0.2)
    a, b = torch.full((3, 4), 0.25, dtype=D64), torch.full((3, 5), 0.2, dtype=D64)
    r, c = torch.ones_like(a), torch.ones_like(b)
    for _ in range(n_iter):
        r = a / (K @ c[..., None])[..., 0]
        c = b / (K.transpose(1, 2) @ r[..., None])[..., 0]
    torch.testing.assert_close(res.plan, r[..., None] * K * c[..., None, :], atol=1e-12, rtol=1e-10)
    other = sinkhorn(C, eps=0.2, stop="fixed", max_iter=n_iter + 1, domain=domain).plan
    assert (other - res.plan).abs().max() > 1e-9  # one more iteration is a different plan


def _token_sets(dtype=D64, seed: int = 13, Bt: int = 2, M: int = 3, P: int = 7, Ct: int = 3, N: int = 2, L: int = 5,
                D: int = 6, masks: bool = True):
    """Unit image/text tokens with zero padding (ragged on both sides when ``masks``) and their masks."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(D, generator=g, dtype=dtype)
    x = torch.nn.functional.normalize(torch.randn(Bt, M, P, D, generator=g, dtype=dtype) + 0.5 * base, dim=-1)
    y = torch.nn.functional.normalize(torch.randn(Ct, N, L, D, generator=g, dtype=dtype) + 0.5 * base, dim=-1)
    rm = torch.ones(Bt, M, P, dtype=torch.bool)
    cm = torch.ones(Ct, N, L, dtype=torch.bool)
    if masks:
        rm[0, 1, 4:] = False
        rm[1, 2, ::2] = False
        cm[0, :, 3:] = False
        cm[2, 1, 0] = False
    return x * rm[..., None], y * cm[..., None], rm, cm


@pytest.mark.parametrize("masks", [True, False])
@pytest.mark.parametrize("eps", [0.1, 0.05, 0.002])  # 0.002: 1/ε > 300, the row-shifted kernel
@pytest.mark.parametrize("stop", ["reference", "marginal", "fixed"])
def test_similarity_sinkhorn_equals_sinkhorn(stop: str, eps: float, masks: bool) -> None:
    """The fused tile solver = sinkhorn on the cost 1 − S (kernel domain, group per (image, class)): same <T, S>,
    <T, 1>, final marginal errors and iteration counts, in float64."""
    from promptot.ot.sinkhorn import similarity_sinkhorn

    x, y, rm, cm = _token_sets(masks=masks)
    S = torch.einsum("bmpd,cnld->bcmnpl", x, y)
    res = sinkhorn(1.0 - S, eps=eps, row_mask=rm[:, None, :, None], col_mask=cm[None, :, None], stop=stop,
                   group_ndim=2, tol=1e-9 if stop == "marginal" else None)
    Z = torch.einsum("cnld,bmpd->cnlbmp", y / eps, x).contiguous()
    Z0 = Z.clone()
    out = similarity_sinkhorn(Z, eps, rm, cm, stop=stop, tol=1e-9 if stop == "marginal" else None)
    torch.testing.assert_close(out.sigma, (res.plan * S).sum((-1, -2)), atol=1e-14, rtol=0)
    torch.testing.assert_close(out.mass, res.plan.sum((-1, -2)), atol=1e-14, rtol=0)
    torch.testing.assert_close(out.marginal_err, res.marginal_err, atol=1e-14, rtol=0)
    assert torch.equal(out.n_iter, res.n_iter)
    assert torch.equal(Z, Z0), "Z is an input: kept unchanged"


def test_similarity_sinkhorn_reference_counts_equal_plain_loop() -> None:
    """Reference rule: one decision per (image, class) over its M·N problems, each equal to the plain transcription
    of the reference loop on that pair (unpadded)."""
    from promptot.ot.sinkhorn import similarity_sinkhorn

    x, y, rm, cm = _token_sets(masks=False, seed=14, D=16)
    out = similarity_sinkhorn(torch.einsum("cnld,bmpd->cnlbmp", y / 0.1, x).contiguous(), 0.1, rm, cm)
    S = torch.einsum("bmpd,cnld->bcmnpl", x, y)
    Bt, Ct, M, N, P, L = S.shape
    for b in range(Bt):
        for c in range(Ct):
            T, it = _reference_rule_loop(1.0 - S[b, c].reshape(M * N, P, L), 0.1)
            assert int(out.n_iter[b, c]) == it
            torch.testing.assert_close(out.sigma[b, c].reshape(-1), (T * S[b, c].reshape(M * N, P, L)).sum((-1, -2)),
                                       atol=1e-14, rtol=0)


def test_similarity_sinkhorn_fp32_and_workspace() -> None:
    """fp32 within 1e-6 of float64; given scratch buffers are used (no result depends on their previous content)."""
    from promptot.ot.sinkhorn import similarity_sinkhorn

    x, y, rm, cm = _token_sets()
    Z = torch.einsum("cnld,bmpd->cnlbmp", y / 0.1, x).contiguous()
    ref = similarity_sinkhorn(Z, 0.1, rm, cm)
    work = (torch.full((Z.numel() + 5,), float("nan")), torch.full((Z.numel() + 5,), float("nan")))
    out = similarity_sinkhorn(Z.float(), 0.1, rm, cm, work=work)
    assert out.sigma.dtype == torch.float32
    torch.testing.assert_close(out.sigma.double(), ref.sigma, atol=1e-6, rtol=0)
    assert torch.equal(out.n_iter, ref.n_iter)
    assert not torch.isnan(work[0][:Z.numel()]).any()


@pytest.mark.parametrize("masks", [True, False])
@pytest.mark.parametrize("eps", [0.1, 0.002])
@pytest.mark.parametrize("stop", ["reference", "marginal", "fixed"])
def test_similarity_sinkhorn_base2_equals_natural(stop: str, eps: float, masks: bool) -> None:
    """Z in base-2 units (S·log₂e/ε, kernel 2^Z) solves the same problems: same <T, S>, <T, 1>, marginal errors
    (float64, 1e-12) and the same iteration counts, in the unshifted and the row-shifted kernel."""
    from promptot.ot.sinkhorn import similarity_sinkhorn

    x, y, rm, cm = _token_sets(masks=masks)
    tol = 1e-9 if stop == "marginal" else None
    Z = torch.einsum("cnld,bmpd->cnlbmp", y / eps, x).contiguous()
    ref = similarity_sinkhorn(Z, eps, rm, cm, stop=stop, tol=tol)
    out = similarity_sinkhorn(Z / math.log(2.0), eps, rm, cm, stop=stop, tol=tol, base2=True)
    for name in ("sigma", "mass", "marginal_err"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), atol=1e-12, rtol=0, msg=name)
    assert torch.equal(out.n_iter, ref.n_iter)


def test_similarity_sinkhorn_vector_workspace_reused_across_tiles() -> None:
    """One row-vector workspace serves tiles of different sizes in turn, whatever it held before (NaN here), with
    results equal to fresh allocations; one that is too small is refused with the size it needs."""
    from promptot.ot.sinkhorn import similarity_sinkhorn

    x, y, rm, cm = _token_sets(masks=True)
    vec = torch.full((3 * x.shape[0] * x.shape[1] * x.shape[2] * y.shape[0] * y.shape[1] + 7,), float("nan"),
                     dtype=torch.float64)
    for stop in ("reference", "marginal", "fixed"):
        for cs in (slice(0, None), slice(1, 2), slice(0, 2)):  # tiles of different class counts, one workspace
            Z = torch.einsum("cnld,bmpd->cnlbmp", y[cs] / 0.1, x).contiguous()
            kw = dict(stop=stop, tol=1e-9 if stop == "marginal" else None, check_every=2)
            ref = similarity_sinkhorn(Z, 0.1, rm, cm[cs], **kw)
            out = similarity_sinkhorn(Z, 0.1, rm, cm[cs], vec_work=vec, **kw)
            for name in ("sigma", "mass", "marginal_err"):
                assert torch.equal(getattr(out, name), getattr(ref, name)), (stop, cs, name)
            assert torch.equal(out.n_iter, ref.n_iter)
    Z = torch.einsum("cnld,bmpd->cnlbmp", y / 0.1, x).contiguous()
    with pytest.raises(ValueError, match="vec_work needs"):
        similarity_sinkhorn(Z, 0.1, rm, cm, vec_work=torch.empty(10, dtype=torch.float64))


def test_similarity_sinkhorn_guards() -> None:
    """Empty token sets are refused (sinkhorn's masking handles them); a kernel underflow raises with the hint."""
    from promptot.ot.sinkhorn import similarity_sinkhorn

    x, y, rm, cm = _token_sets()
    Z = torch.einsum("cnld,bmpd->cnlbmp", y / 0.1, x).contiguous()
    rm_empty = rm.clone()
    rm_empty[1, 0] = False
    with pytest.raises(ValueError, match="real token"):
        similarity_sinkhorn(Z, 0.1, rm_empty, cm)
    # fp32, ε = 0.005 (row-shifted kernel): the text token opposite to all image tokens has e^{-2/ε} = 0 in its column
    e0 = torch.eye(4)[0]
    xs = e0.expand(1, 1, 3, 4)
    ys = torch.stack([e0, -e0]).expand(1, 1, 2, 4)
    Zs = torch.einsum("cnld,bmpd->cnlbmp", ys / 0.005, xs).contiguous()
    with pytest.raises(FloatingPointError, match="domain='log'"):
        similarity_sinkhorn(Zs, 0.005, torch.ones(1, 1, 3, dtype=torch.bool), torch.ones(1, 1, 2, dtype=torch.bool))
