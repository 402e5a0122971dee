"""Entropic optimal transport for many small problems at once (batched, masked Sinkhorn).

Problem solved, independently for every batch index ``...``:

.. math::

    T^\\star = \\arg\\min_{T \\in \\Pi(a, b)} \\langle T, C \\rangle + \\varepsilon \\sum_{ij} T_{ij}(\\log T_{ij} - 1),
    \\qquad \\Pi(a, b) = \\{T \\ge 0 : T 1 = a,\\ T^\\top 1 = b\\}

solved by Sinkhorn-Knopp matrix scaling [Cuturi 2013]: :math:`T = \\mathrm{diag}(r) K \\mathrm{diag}(c)` with
:math:`K = e^{-C/\\varepsilon}`, alternating :math:`r \\leftarrow a / (K c)` and :math:`c \\leftarrow b / (K^\\top r)`
(the update order of the PLOT / ALIGN reference code, so after each iteration the column marginal is exact and the
row marginal carries the error).

Ragged problems (variable token counts) are padded and described by boolean masks; padded rows/columns get zero
mass and a zero plan, so a padded problem equals its unpadded version exactly (up to rounding).

References
----------
- M. Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal Transport", NeurIPS 2013.
- G. Peyré, M. Cuturi, "Computational Optimal Transport", 2019, §4.2 (log-domain updates), §9.1.3 (envelope gradient).
- B. Schmitzer, "Stabilized Sparse Scaling Algorithms for Entropy Regularized Transport Problems", 2019 (shifts).
- R. Flamary et al., POT: Python Optimal Transport, JMLR 2021 (``ot.sinkhorn``, ``ot.batch.solve_batch``).
- G. Chen et al., PLOT, ICLR 2023; D. Wang et al., ALIGN, NeurIPS 2023 (the "reference" stopping rule).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

__all__ = ["SinkhornResult", "sinkhorn", "ot_cost", "plan_entropy", "ScoreResult", "RowSide", "ColSide", "row_side",
           "col_side", "similarity_sinkhorn"]

DOMAINS = ("kernel", "log")
STOPS = ("marginal", "reference", "fixed")
GRADS = ("detach", "envelope", "autodiff")
# Finite stand-in for log(0) in the log domain.  -inf would make logsumexp of a fully masked row return -inf and its
# backward exp(x - lse) = exp(-inf + inf) = NaN, which leaks into gradients through torch.where's unselected branch.
_NEG = -1e30


@dataclass
class SinkhornResult:
    """Output of :func:`sinkhorn`.

    Attributes
    ----------
    plan : Tensor ``[..., n, m]``
        Transport plan (fp32, or float64 if the cost was float64); zero on masked rows/columns.
    n_iter : Tensor (int64)
        Iterations actually run, per stop group: shape ``[...]`` (one per problem) for ``stop="marginal"``, the group
        shape ``batch_shape[:len(batch_shape) - group_ndim]`` for ``stop="reference"``, and ``[]`` for ``"fixed"``.
    marginal_err : Tensor ``[...]``
        Final row-marginal L1 error ``sum_i |(T 1)_i - a_i|`` per problem.
    """

    plan: Tensor
    n_iter: Tensor
    marginal_err: Tensor


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    # OT numerics never run in half precision: fp16 kernels underflow at cost/eps ≈ 17 (docs/notation.md#sinkhorn).
    return torch.float64 if dtype == torch.float64 else torch.float32


def _prepare_marginal(
    w: Optional[Tensor], mask: Tensor, dtype: torch.dtype
) -> Tensor:
    """Marginal weights on the masked support: given weights are zeroed off-mask; default uniform over the mask."""
    maskf = mask.to(dtype)
    if w is None:
        cnt = maskf.sum(-1, keepdim=True)
        return maskf / cnt.clamp_min(1.0)  # fully masked problem -> all-zero marginal, no 0/0
    return w.to(dtype) * maskf


def _check_finite(t: Tensor, what: str, shape: torch.Size, eps: float, hint: str = "") -> None:
    # Fast path: one reduction. A sum is non-finite whenever an entry is (it may also overflow for huge finite
    # entries, in which case the exact elementwise test below decides). isfinite() alone costs ~4 full passes.
    if bool(torch.isfinite(t.sum())):
        return
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise FloatingPointError(
            f"sinkhorn: non-finite {what} ({bad} entries) for cost of shape {tuple(shape)} with eps={eps}.{hint}"
        )


def sinkhorn(
    cost: Tensor,
    eps: float = 0.1,
    a: Optional[Tensor] = None,
    b: Optional[Tensor] = None,
    row_mask: Optional[Tensor] = None,
    col_mask: Optional[Tensor] = None,
    domain: str = "kernel",
    stop: str = "marginal",
    max_iter: int = 100,
    tol: Optional[float] = None,
    check_every: int = 10,
    group_ndim: Optional[int] = None,
    grad: str = "detach",
) -> SinkhornResult:
    """Batched entropic OT (Sinkhorn-Knopp) over the last two dims of ``cost``.

    Parameters
    ----------
    cost : Tensor ``[..., n, m]``
        Cost matrices; any float dtype (fp16/bf16 are upcast to fp32, float64 is kept).
    eps : float
        Entropic regulariser ε (> 0).
    a, b : Tensor ``[..., n]`` / ``[..., m]``, optional
        Row / column marginals (broadcastable). Default: uniform over unmasked entries. Given marginals are zeroed
        on masked entries and are expected to have equal totals per problem.
    row_mask, col_mask : bool Tensor ``[..., n]`` / ``[..., m]``, optional
        True = real entry. Masked rows/columns get zero mass and a zero plan; a fully masked problem gives a zero plan.
    domain : {"kernel", "log"}
        ``"kernel"``: probability domain with a per-row min-shift ``K = exp(-(C - min_j C)/ε)`` so that every real row
        has a unit entry and nothing underflows to an all-zero row (safe when the cost range per problem / ε ≲ 80 in
        fp32). ``"log"``: dual potentials with logsumexp updates (Peyré & Cuturi §4.2), robust for any ε, ≈ 2 exp per
        entry per iteration instead of 2 FMA.
    stop : {"marginal", "reference", "fixed"}
        ``"marginal"``: POT-style row-marginal L1 error per problem, checked every ``check_every`` iterations; a
        problem stops (is frozen) once its error < ``tol`` (default 1e-6). ``"reference"``: the PLOT/ALIGN rule,
        ``err = mean |r - r_prev|`` over the problems of one stop group, checked every iteration, stop group when
        ``err < tol`` (default 1e-2). ``"fixed"``: exactly ``max_iter`` iterations.
    max_iter : int
        Iteration cap (one iteration = one row and one column update).
    tol : float, optional
        See ``stop``.
    check_every : int
        Marginal stop: iterations between error evaluations. Both adaptive modes read one boolean on the host
        ("is any problem/group still active?") only every ``check_every`` iterations; frozen problems keep their
        iterate unchanged, so extra iterations between reads cost time but never change the result.
    group_ndim : int, optional
        ``stop="reference"``: how many trailing batch dims are pooled into one stop decision. ``None`` pools all batch
        dims (one decision, as PLOT); e.g. cost ``[B, C, M, N, P, L]`` with ``group_ndim=2`` gives one decision per
        (b, c), as ALIGN's token level.
    grad : {"detach", "envelope", "autodiff"}
        ``"detach"`` and ``"envelope"``: the iterations run under ``no_grad`` and the plan is a constant (reference
        behaviour); they differ only in :func:`ot_cost`. ``"autodiff"``: differentiate through the unrolled loop.

    Returns
    -------
    SinkhornResult
        ``plan [..., n, m]``, ``n_iter``, ``marginal_err [...]``.

    Raises
    ------
    FloatingPointError
        Non-finite cost, or non-finite plan (kernel-domain underflow: use ``domain="log"``).
    ValueError
        Bad arguments / shapes.
    """
    if domain not in DOMAINS:
        raise ValueError(f"sinkhorn: domain must be one of {DOMAINS}, got {domain!r}")
    if stop not in STOPS:
        raise ValueError(f"sinkhorn: stop must be one of {STOPS}, got {stop!r}")
    if grad not in GRADS:
        raise ValueError(f"sinkhorn: grad must be one of {GRADS}, got {grad!r}")
    if cost.dim() < 2:
        raise ValueError(f"sinkhorn: cost must be [..., n, m], got shape {tuple(cost.shape)}")
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"sinkhorn: eps must be a positive finite float, got {eps}")
    if max_iter < 1:
        raise ValueError(f"sinkhorn: max_iter must be >= 1, got {max_iter}")
    check_every = max(1, int(check_every))

    dtype = _work_dtype(cost.dtype)
    cost = cost.to(dtype)

    *bshape, n, m = cost.shape
    dev = cost.device
    rmask = torch.ones(n, dtype=torch.bool, device=dev) if row_mask is None else row_mask.to(dev, torch.bool)
    cmask = torch.ones(m, dtype=torch.bool, device=dev) if col_mask is None else col_mask.to(dev, torch.bool)
    try:
        full = torch.Size(bshape)
        rmask = rmask.expand(*full, n)
        cmask = cmask.expand(*full, m)
    except RuntimeError as e:  # pragma: no cover - message enrichment
        raise ValueError(
            f"sinkhorn: masks {tuple(rmask.shape)}/{tuple(cmask.shape)} do not broadcast to cost {tuple(cost.shape)}"
        ) from e
    # A problem with no real row or no real column carries no mass at all: mask it entirely so that its other side
    # does not divide b by an empty Kᵀr (0/0) — it then yields an all-zero plan instead of NaN.
    has_mass = rmask.any(-1) & cmask.any(-1)
    rmask = rmask & has_mass.unsqueeze(-1)
    cmask = cmask & has_mass.unsqueeze(-1)
    a_ = _prepare_marginal(a, rmask, dtype).expand(*full, n)
    b_ = _prepare_marginal(b, cmask, dtype).expand(*full, m)
    # Only real entries must be finite; padding may hold anything. Fast path: the whole cost is finite (one
    # reduction). Otherwise padding is replaced by 0 so that neither exp(-pad/ε) nor its backward (through
    # torch.where's unselected branch) can produce inf/NaN, and the real entries are checked exactly.
    if not bool(torch.isfinite(cost.detach().sum())):
        zero = torch.zeros((), dtype=dtype, device=dev)
        mask2 = rmask.unsqueeze(-1) & cmask.unsqueeze(-2)  # [..., n, m]
        _check_finite(torch.where(mask2, cost.detach(), zero), "cost", cost.shape, eps)
        cost = torch.where(mask2, cost, zero)

    if tol is None:
        tol = 1e-2 if stop == "reference" else 1e-6

    # stop groups
    nb = len(bshape)
    if stop == "reference":
        g = nb if group_ndim is None else int(group_ndim)
        if not 0 <= g <= nb:
            raise ValueError(f"sinkhorn: group_ndim={group_ndim} outside [0, {nb}] for cost {tuple(cost.shape)}")
        gshape = torch.Size(bshape[: nb - g])
    elif stop == "marginal":
        g, gshape = 0, torch.Size(bshape)
    else:
        g, gshape = nb, torch.Size([])

    ctx = torch.enable_grad() if grad == "autodiff" else torch.no_grad()
    with ctx:
        if grad != "autodiff":
            cost = cost.detach()
        if domain == "kernel":
            plan, n_iter = _kernel_loop(cost, eps, a_, b_, rmask, cmask, stop, max_iter, tol,
                                        check_every, g, gshape)
        else:
            plan, n_iter = _log_loop(cost, eps, a_, b_, rmask, cmask, stop, max_iter, tol,
                                     check_every, g, gshape)
    hint = " Kernel-domain underflow? Try domain='log' or a larger eps." if domain == "kernel" else ""
    _check_finite(plan.detach(), "plan", cost.shape, eps, hint)
    with torch.no_grad():
        marginal_err = (plan.sum(-1) - a_).abs().sum(-1)
    return SinkhornResult(plan=plan, n_iter=n_iter, marginal_err=marginal_err)


def _group_reduce_mean(x: Tensor, valid: Tensor, g: int) -> Tensor:
    """Mean of ``x [..., n]`` over valid entries, pooled over the trailing ``g`` batch dims and the row dim."""
    dims = tuple(range(x.dim() - 1 - g, x.dim()))
    num = (x * valid).sum(dim=dims)
    den = valid.to(x.dtype).sum(dim=dims)
    return num / den.clamp_min(1.0)


def _expand_group(active_g: Tensor, bshape: torch.Size) -> Tensor:
    """Broadcast a group-shaped mask to the batch shape (trailing pooled dims added as singleton)."""
    return active_g.reshape(tuple(active_g.shape) + (1,) * (len(bshape) - active_g.dim())).expand(bshape)


def _kernel_loop(cost, eps, a, b, rmask, cmask, stop, max_iter, tol, check_every, g, gshape):
    """Probability-domain iterations with a per-row min-shift of the cost.

    Why the shift: K_ij = exp(-C_ij/ε) underflows when C/ε is large (cost offset, not spread, is what hurts: cosine
    costs near 0.8 at ε = 0.1 already give e^-8, and fp16 dies at e^-17). Shifting row i by its minimum c_i over the
    real columns makes max_j K_ij = 1. Row scaling is absorbed exactly by r (r_shift = r · e^{-c_i/ε}), c is
    unchanged, so iterates, plan and gradient equal those of the unshifted algorithm (hence the shift is detached).
    The exponent is clamped at 0: a no-op on real entries, and it keeps padded entries (zeroed afterwards) from
    overflowing to inf (inf · 0 = NaN).
    """
    bshape = cost.shape[:-2]
    big = torch.finfo(cost.dtype).max
    inplace = not cost.requires_grad  # no autograd graph: reuse buffers (each full pass allocates ~|cost| bytes)
    cmaskf = cmask.to(cost.dtype).unsqueeze(-2)  # [..., 1, m]
    with torch.no_grad():
        cmin = (cost + (1.0 - cmaskf) * big).amin(-1) if not bool(cmask.all()) else cost.amin(-1)  # [..., n]
        cmin = torch.where(rmask & torch.isfinite(cmin), cmin, torch.zeros((), dtype=cost.dtype, device=cost.device))
    if inplace:
        K = torch.sub(cmin.unsqueeze(-1), cost).clamp_(max=0.0).mul_(1.0 / eps).exp_().mul_(cmaskf)
    else:
        # (clamp's backward would drop the gradient of the row-minimum entry, where the exponent is exactly 0.)
        x = torch.where(cmask.unsqueeze(-2), cmin.unsqueeze(-1) - cost, torch.full((), -float("inf"),
                                                                                      dtype=cost.dtype,
                                                                                      device=cost.device))
        K = torch.exp(x / eps)
    c = torch.ones_like(b)
    r = torch.ones_like(a)
    one = torch.ones((), dtype=cost.dtype, device=cost.device)
    # Without padding on a side its division guard is the identity: skip the full-size torch.where per update.
    rows_all, cols_all = bool(rmask.all()), bool(cmask.all())

    if stop == "reference":
        # The reference rule reads r in the *unshifted* kernel: r_ref = r_shift · e^{c_i/ε}. Off the mask the scale
        # is irrelevant (r = 0 there). Reference initial r is 1 in its own units.
        scale = torch.exp(cmin / eps)
        r_ref_prev = torch.ones_like(a)

    def row_update(c: Tensor) -> Tensor:
        # Row-vector times K^T (a view): on CPU this is 3-4x faster than the batched matrix-vector K @ c for the
        # tall-thin [P, L] kernels of token-level OT (measured with torch 2.14, 2 threads).
        Kc = (c.unsqueeze(-2) @ K.transpose(-1, -2)).squeeze(-2)
        # Masked rows have a = 0: divide by 1 instead of a possibly-zero Kc so neither value nor autograd sees 0/0.
        return a / (Kc if rows_all else torch.where(rmask, Kc, one))

    def col_update(r: Tensor) -> Tensor:
        KTr = (r.unsqueeze(-2) @ K).squeeze(-2)  # vector-matrix product: no transposed copy of K
        return b / (KTr if cols_all else torch.where(cmask, KTr, one))

    def make_plan(r_: Tensor, c_: Tensor) -> Tensor:
        if inplace:
            return (r_.unsqueeze(-1) * K).mul_(c_.unsqueeze(-2))
        return r_.unsqueeze(-1) * K * c_.unsqueeze(-2)

    return _run_loop(row_update, col_update, r, c, a, rmask, stop, max_iter, tol, check_every, g, gshape, bshape,
                     ref_view=(lambda r_: r_ * scale) if stop == "reference" else None,
                     ref_init=r_ref_prev if stop == "reference" else None,
                     row_marg=lambda r_, c_: r_ * (c_.unsqueeze(-2) @ K.transpose(-1, -2)).squeeze(-2),
                     make_plan=make_plan)


def _log_loop(cost, eps, a, b, rmask, cmask, stop, max_iter, tol, check_every, g, gshape):
    """Log-domain iterations on potentials f = log r, g = log c (Peyré & Cuturi 2019, §4.2).

    logK = -C/ε is used unshifted (logsumexp is shift-invariant internally), so f is directly the log of the
    reference code's r and the reference rule compares exp(f).
    """
    bshape = cost.shape[:-2]
    mask2 = rmask.unsqueeze(-1) & cmask.unsqueeze(-2)  # [..., n, m]
    neg = torch.full((), _NEG, dtype=cost.dtype, device=cost.device)
    logK = torch.where(mask2, -cost / eps, neg)
    logKT = logK.transpose(-1, -2)
    log_a = torch.where(a > 0, torch.log(torch.where(a > 0, a, torch.ones_like(a))), neg)
    log_b = torch.where(b > 0, torch.log(torch.where(b > 0, b, torch.ones_like(b))), neg)
    f = torch.zeros_like(a)
    gg = torch.zeros_like(b)

    def row_update(gv: Tensor) -> Tensor:
        return log_a - torch.logsumexp(logK + gv.unsqueeze(-2), dim=-1)

    def col_update(fv: Tensor) -> Tensor:
        return log_b - torch.logsumexp(logKT + fv.unsqueeze(-2), dim=-1)

    def plan_of(fv: Tensor, gv: Tensor) -> Tensor:
        P = torch.exp(fv.unsqueeze(-1) + logK + gv.unsqueeze(-2))
        return torch.where(mask2, P, torch.zeros_like(P))

    return _run_loop(row_update, col_update, f, gg, a, rmask, stop, max_iter, tol, check_every, g, gshape, bshape,
                     ref_view=(lambda f_: torch.where(rmask, torch.exp(f_), torch.zeros_like(f_)))
                     if stop == "reference" else None,
                     ref_init=torch.ones_like(a) if stop == "reference" else None,
                     row_marg=lambda f_, g_: plan_of(f_, g_).sum(-1),
                     make_plan=plan_of)


_EARLY_CHECKS = 8


def _run_loop(row_update, col_update, r, c, a, rmask, stop, max_iter, tol, check_every, g, gshape, bshape,
              ref_view, ref_init, row_marg, make_plan) -> Tuple[Tensor, Tensor]:
    """Shared Sinkhorn driver (domain-agnostic: r, c are scalings or log-potentials).

    Vectorised stopping: an ``active`` mask per stop group; inactive groups keep their iterate (``torch.where``), so
    a group's result is exactly what it would be had it stopped alone. The host reads ``active.any()`` after each of
    the first ``_EARLY_CHECKS`` iterations and then once every ``check_every`` iterations, instead of once per
    iteration (the reference code's ``err.item()``); surplus iterations are wasted work on frozen values, never a
    change of result.
    """
    dev = r.device
    if stop == "fixed":
        for _ in range(max_iter):
            r = row_update(c)
            c = col_update(r)
        return make_plan(r, c), torch.tensor(max_iter, dtype=torch.long, device=dev)

    active_g = torch.ones(gshape, dtype=torch.bool, device=dev)
    n_iter = torch.zeros(gshape, dtype=torch.long, device=dev)
    r_ref_prev = ref_init
    # While the host knows that every group is active, the iterates are taken as they are: torch.where with an
    # all-true mask returns exactly its first branch (values and gradients), at the price of two full passes.
    all_active = True
    for it in range(1, max_iter + 1):
        r_new = row_update(c)
        c_new = col_update(r_new)
        if all_active:
            r, c = r_new, c_new
        else:
            act = _expand_group(active_g, bshape).unsqueeze(-1)
            r = torch.where(act, r_new, r)
            c = torch.where(act, c_new, c)
        n_iter = n_iter + active_g.long()
        with torch.no_grad():
            if stop == "reference":
                r_ref = ref_view(r_new.detach())
                err = _group_reduce_mean((r_ref - r_ref_prev).abs(), rmask, g)  # [gshape]
                r_ref_prev = r_ref if all_active else torch.where(act, r_ref, r_ref_prev)
                # NaN err compares False -> keeps iterating, like the reference's `if err.item() < thresh`.
                active_g = active_g & ~(err < tol)
            elif it % check_every == 0:
                err = (row_marg(r.detach(), c.detach()) - a).abs().sum(-1)
                active_g = active_g & ~(err < tol)
        # Read the host-side count of running groups after each of the first iterations (entropic problems at
        # eps ~ 0.1 typically converge in 2-7) and then every ``check_every``: at most ~8 + max_iter/check_every
        # syncs, and little wasted work on already-converged groups. The marginal rule changes ``active_g`` only at
        # its checks, which are read here; the reference rule may change it unseen in between.
        if it <= _EARLY_CHECKS or it % check_every == 0:
            n_active = int(active_g.sum())
            if n_active == 0:
                break
            all_active = n_active == active_g.numel()
        elif stop == "reference":
            all_active = False
    return make_plan(r, c), n_iter


def plan_entropy(plan: Tensor, normalise: bool = True) -> Tensor:
    """Entropy ``H(T) = -sum T log T`` per problem ``[...]`` of a plan ``[..., n, m]`` (0 log 0 = 0).

    With ``normalise`` the result is divided by ``log(#nonzero support)`` of the plan's real entries, so a uniform
    plan gives 1 (near-uniform plans at ε = 0.1 are expected, PLOT issue #6).
    """
    P = plan.detach()
    tot = P.sum((-1, -2), keepdim=True).clamp_min(1e-30)
    Q = P / tot
    H = -(torch.where(Q > 0, Q * torch.log(Q.clamp_min(1e-38)), torch.zeros_like(Q))).sum((-1, -2))
    if normalise:
        supp = (P > 0).sum((-1, -2)).to(P.dtype)
        H = H / torch.log(supp.clamp_min(2.0))
    return H


def ot_cost(
    cost: Tensor,
    eps: float = 0.1,
    a: Optional[Tensor] = None,
    b: Optional[Tensor] = None,
    row_mask: Optional[Tensor] = None,
    col_mask: Optional[Tensor] = None,
    domain: str = "kernel",
    stop: str = "marginal",
    max_iter: int = 100,
    tol: Optional[float] = None,
    check_every: int = 10,
    group_ndim: Optional[int] = None,
    grad: str = "detach",
    entropic: bool = False,
) -> Tuple[Tensor, SinkhornResult]:
    """Transport cost ``<T, C>`` per problem ``[...]`` and the :class:`SinkhornResult`.

    Gradient semantics (w.r.t. ``cost``):

    - ``"detach"``: value ``<T, C>`` with T a constant; d value / dC = T. (The reference code's score.)
    - ``"envelope"``: same graph as "detach" — T detached, d value / dC = T — which by Danskin's theorem is the exact
      gradient of the entropic OT value ``OT_ε(C) = min_T <T,C> + ε Σ T(log T − 1)`` (Peyré & Cuturi §9.1.3, POT's
      ``grad="envelope"``). With ``entropic=True`` the entropy term ``ε Σ T(log T − 1)`` (a constant for autograd) is
      added so that the value is ``OT_ε`` itself.
    - ``"autodiff"``: value ``<T(C), C>`` differentiated through the unrolled iterations.

    Other arguments: see :func:`sinkhorn`. The value is computed in fp32/float64 like the plan.
    """
    res = sinkhorn(cost, eps=eps, a=a, b=b, row_mask=row_mask, col_mask=col_mask, domain=domain, stop=stop,
                   max_iter=max_iter, tol=tol, check_every=check_every, group_ndim=group_ndim, grad=grad)
    C = cost.to(res.plan.dtype)
    mask = res.plan > 0  # off-support entries are exactly 0 in the plan; avoid 0 * (padding garbage)
    Cm = torch.where(mask, C, torch.zeros_like(C))
    value = (res.plan * Cm).sum((-1, -2))
    if entropic:
        P = res.plan.detach()
        ent = torch.where(mask, P * (torch.log(P.clamp_min(1e-38)) - 1.0), torch.zeros_like(P)).sum((-1, -2))
        value = value + eps * ent
    return value, res


# ----------------------------------------------------------------------------------------------------------- fused tile
@dataclass
class ScoreResult:
    """Output of :func:`similarity_sinkhorn` for one tile of ``Bt`` images × ``Ct`` classes.

    Attributes
    ----------
    sigma : Tensor ``[Bt, Ct, M, N]``
        ``<T, S>`` per problem (OT-weighted similarity).
    mass : Tensor ``[Bt, Ct, M, N]``
        ``<T, 1>`` per problem (1 up to the marginal error), so that ``<T, 1 − S> = mass − sigma``.
    n_iter : Tensor (int64)
        ``[Bt, Ct]`` for ``stop="reference"`` (one decision per (image, class)), ``[Bt, Ct, M, N]`` for ``"marginal"``,
        ``[]`` for ``"fixed"``.
    marginal_err : Tensor ``[Bt, Ct, M, N]``
        Final row-marginal L1 error ``sum_p |(T 1)_p − a_p|`` per problem (as :attr:`SinkhornResult.marginal_err`).
    """

    sigma: Tensor
    mass: Tensor
    n_iter: Tensor
    marginal_err: Tensor


class RowSide(NamedTuple):
    """Image-token side of a tile (:func:`row_side`), computed once per image block and reused by every class tile."""

    a: Tensor  # [1, 1, Bt, M, P] uniform weights over the real tokens of each view, 0 on padding
    real: Tensor  # [1, 1, Bt, M, P] 1 on real tokens, 0 on padding (the reference rule's start r = 1)
    count: Tensor  # [1, Bt] real tokens of an image summed over its views
    ok: bool  # every view has a real token


class ColSide(NamedTuple):
    """Text-token side of a tile (:func:`col_side`), computed once per class tile and reused by every image block."""

    b: Tensor  # [Ct, N, L, 1, 1] uniform weights over the real tokens of each prompt, 0 on padding
    start: Optional[Tensor]  # [Ct, N, L, 1, 1] 1 on real tokens, 0 on padding; None when nothing is padded
    ok: bool  # every prompt has a real token


def row_side(row_mask: Tensor, dtype: torch.dtype) -> RowSide:
    """:class:`RowSide` of a bool mask ``[Bt, M, P]`` (True = real image token)."""
    Bt, M, P = row_mask.shape
    real = row_mask.to(dtype)
    cnt = real.sum(-1, keepdim=True)
    return RowSide(a=(real / cnt.clamp_min(1.0)).view(1, 1, Bt, M, P), real=real.view(1, 1, Bt, M, P),
                   count=cnt.sum((-1, -2)).view(1, Bt), ok=bool(cnt.amin() > 0))


def col_side(col_mask: Tensor, dtype: torch.dtype) -> ColSide:
    """:class:`ColSide` of a bool mask ``[Ct, N, L]`` (True = real text token)."""
    Ct, N, L = col_mask.shape
    real = col_mask.to(dtype)
    cnt = real.sum(-1, keepdim=True)
    n_real = int(cnt.sum())
    return ColSide(b=(real / cnt.clamp_min(1.0)).view(Ct, N, L, 1, 1),
                   start=None if n_real == real.numel() else real.view(Ct, N, L, 1, 1),
                   ok=bool(cnt.amin() > 0))


# Largest 1/ε for which the *unshifted* kernel exp(S/ε) is used: with |S| ≤ 1 every entry and every Sinkhorn scaling
# then stays far inside the exponent range (fp32: e^±40 ≈ 4e-18 .. 2e17 against 1e-38 .. 3e38; float64: e^±300
# against e^±708).
_UNSHIFTED_MAX = {torch.float32: 40.0, torch.float64: 300.0}
_LN2 = math.log(2.0)


def similarity_sinkhorn(
    Z: Tensor,
    eps: float,
    row_mask: Union[Tensor, RowSide],
    col_mask: Union[Tensor, ColSide],
    stop: str = "reference",
    max_iter: int = 100,
    tol: Optional[float] = None,
    check_every: int = 10,
    work: Optional[Tuple[Tensor, Tensor]] = None,
    check_finite: bool = True,
    base2: bool = False,
    vec_work: Optional[Tensor] = None,
) -> ScoreResult:
    """Kernel-domain Sinkhorn for cosine costs ``1 − S``, returning ``<T, S>`` without ever forming cost or plan.

    Problem: for every image view (b, m) and class prompt (c, n) of a tile, entropic OT between the ``P`` image tokens
    (rows, uniform over the real ones) and the ``L`` text tokens (columns, uniform over the real ones) with cost
    ``1 − S`` — the token level of :class:`~promptot.ot.HierarchicalOTHead` — solved exactly as :func:`sinkhorn` with
    ``domain="kernel"`` and ``group_ndim=2`` (same iterates, same stopping decisions, same iteration counts, up to
    summation order), in fewer full-size passes, which is what bounds it once the similarities are computed.

    Parameters
    ----------
    Z : Tensor ``[Ct, N, L, Bt, M, P]`` (fp32 or float64)
        ``S / ε`` with S the cosine similarities of unit (or all-zero padding) tokens, so ``|S| ≤ 1`` and padding is
        exactly 0: the natural output of one GEMM ``(text tokens / ε) @ image tokensᵀ``. Not modified.
    eps : float
        ε (> 0).
    row_mask : bool Tensor ``[Bt, M, P]`` or its :class:`RowSide`
        Real image tokens; every view must have at least one (``ok``). Pass the :func:`row_side` to reuse it.
    col_mask : bool Tensor ``[Ct, N, L]`` or its :class:`ColSide`
        Real text tokens; every prompt must have at least one.
    stop, max_iter, tol, check_every
        As :func:`sinkhorn`; ``"reference"`` pools its decision per (image, class) over the ``M·N`` problems.
    work : pair of Tensors, optional
        Two scratch buffers with at least ``Z.numel()`` elements of Z's dtype (Z regrouped per problem, the kernel),
        reused across tiles so that no full-size allocation happens per call.
    vec_work : Tensor, optional
        Scratch for the row vectors: at least ``3 · Ct·N·Bt·M·P`` elements of Z's dtype, reused across tiles. On CPU
        a fresh vector-sized output costs several times the operation writing it (new pages, not in cache).
    check_finite : bool
        Raise :class:`FloatingPointError` on a non-finite result (a caller solving many tiles may check once).
    base2 : bool
        Z is in base-2 units, ``Z = S · log₂e / ε`` (fold ``log₂e / ε`` into the GEMM operand): the kernel is then
        ``2^Z``, and ``torch.exp2`` is about 20% faster than ``torch.exp`` in fp32 on AVX2 CPUs. Same problem, same
        results up to rounding (the float64 tests hold them to 1e-12).

    Why it needs fewer passes than :func:`sinkhorn` on the cost:

    - **Problem-contiguous kernel, matvecs as bmm.** One copy regroups Z per problem (``[Ct, N, Bt, M, L, P]``, each
      ``L × P`` block contiguous); the kernel is computed from that copy, so both Sinkhorn matvecs are batched
      ``(1 × L)·(L × P)`` and ``(1 × P)·(P × L)`` products that read K once and write only a vector (an elementwise
      product plus a sum would write and re-read a full-size temporary). The copy also gives ``K ⊙ Z`` at the end.
    - **No min-shift pass.** ``K' = exp(S/ε) = e^{1/ε} · exp(−(1 − S)/ε)`` is the reference kernel times a constant,
      absorbed by the row scaling (``r' = e^{-1/ε} r``, ``c' = c``), so plan and column scalings are unchanged and the
      reference rule ``mean |r − r_prev| < tol`` becomes ``Σ |r' − r'_prev| < tol · count · e^{-1/ε}``. Because
      ``|S| ≤ 1`` every entry lies in ``[e^{-1/ε}, e^{1/ε}]``: safe while ``1/ε ≤ 40`` in fp32 (ε ≥ 0.025). Below that
      the per-row shift ``exp(S/ε − max_l S/ε)`` of :func:`sinkhorn` is used (one max pass more).
    - **Masks cost nothing per iteration.** Padding tokens are zero vectors, so their kernel entries are ``exp(0)``:
      finite, and killed by zero marginals — a padded column gets ``c = 0 / (Kᵀr) = 0`` from the first column update
      on (it starts at 0 rather than 1), a padded row gets ``r = 0``. Nothing is masked inside the loop.
    - **No plan.** ``<T, S> = ε Σ_p r_p Σ_l c_l (K ⊙ Z)_lp`` and the final row marginals ``r ⊙ (cᵀK)``: two matvecs
      and one product at the end instead of the plan, ``T ⊙ C`` and two sums.
    - Iteration counts are only accumulated on the device once some group has stopped (until then the host knows
      them), and a stopped group's iterate is frozen (an exact 0/1 ``lerp``) only from then on.
    """
    if stop not in STOPS:
        raise ValueError(f"similarity_sinkhorn: stop must be one of {STOPS}, got {stop!r}")
    if max_iter < 1:
        raise ValueError(f"similarity_sinkhorn: max_iter must be >= 1, got {max_iter}")
    check_every = max(1, int(check_every))
    if tol is None:
        tol = 1e-2 if stop == "reference" else 1e-6
    Ct, N, L, Bt, M, P = Z.shape
    G = Ct * N * Bt * M  # problems
    dt = Z.dtype
    dev = Z.device
    rows = row_mask if isinstance(row_mask, RowSide) else row_side(row_mask, dt)
    cols = col_mask if isinstance(col_mask, ColSide) else col_side(col_mask, dt)
    if not (rows.ok and cols.ok):
        raise ValueError("similarity_sinkhorn: every image view and every text prompt needs a real token "
                         "(use sinkhorn with masks for empty problems)")
    n = Z.numel()
    if work is None:
        work = (torch.empty(n, dtype=dt, device=dev), torch.empty(n, dtype=dt, device=dev))
    Zp = work[0][:n].view(Ct, N, Bt, M, L, P)
    Zp.copy_(Z.permute(0, 1, 3, 4, 2, 5))  # regroup per problem (a contiguous copy is cheaper than a permuting exp)
    K = work[1][:n].view(G, L, P)
    Kt = K.transpose(1, 2)
    # Vectors: r, a as [G, 1, P] = [Ct, N, Bt, M, P]; c, b as [G, 1, L] = [Ct, N, Bt, M, L]. The marginals a and b are
    # only broadcast (views of [1, 1, Bt, M, P] and [Ct, N, 1, 1, L]): a materialised copy would be one more vector
    # streamed through the cache per update.
    shape_r, shape_c = (Ct, N, Bt, M, P), (Ct, N, Bt, M, L)
    a = rows.a
    b = cols.b.view(Ct, N, 1, 1, L)
    # Row vectors live in three reused buffers: two alternate as K c / r (iteration k writes ring[k % 2]; r and the
    # reference rule's r_prev are then ring[k % 2] or fresh lerp outputs, so ring[(k + 1) % 2] is free), one holds
    # differences and products.
    nv = G * P
    if vec_work is None:
        vec_work = torch.empty(3 * nv, dtype=dt, device=dev)
    elif vec_work.numel() < 3 * nv or vec_work.dtype != dt:
        raise ValueError(f"similarity_sinkhorn: vec_work needs >= {3 * nv} elements of {dt}, got "
                         f"{vec_work.numel()} of {vec_work.dtype}")
    ring = [vec_work[i * nv:(i + 1) * nv].view(G, 1, P) for i in range(3)]
    scratch = ring.pop()

    inv_eps = 1.0 / eps
    # Z in natural units is S/ε; base-2 Z is S·log₂e/ε and the kernel 2^Z equals e^{S/ε} up to rounding.
    to_natural = _LN2 if base2 else 1.0
    pow_ = torch.exp2 if base2 else torch.exp
    scale: Optional[Tensor] = None
    if inv_eps <= _UNSHIFTED_MAX.get(dt, 40.0):
        pow_(Zp.view(G, L, P), out=K)
        unit = math.exp(-inv_eps)  # the reference's r = 1, in units of r'
    else:
        Zm = Zp if cols.start is None else Zp.masked_fill(cols.start.view(Ct, N, 1, 1, L, 1) == 0, -float("inf"))
        zmax = Zm.amax(4).view(G, 1, P)  # per image token; a padded row gives 0 (its Z row is all 0)
        pow_(torch.sub(Zp.view(G, L, P), zmax, out=K), out=K)
        scale = torch.exp(inv_eps - zmax * to_natural)  # r_reference = r_shift · e^{(1 − max_l S)/ε}
        unit = 1.0

    def row_update(c: Optional[Tensor], out: Tensor) -> Tensor:  # K c as [G, 1, P], into out
        return torch.sum(K, 1, keepdim=True, out=out) if c is None else torch.bmm(c, K, out=out)

    def new_r(Kc: Tensor) -> Tensor:  # r = a / (K c), written over K c
        return torch.div(a, Kc.view(shape_r), out=Kc.view(shape_r)).view(G, 1, P)

    def col_update(r: Tensor) -> Tensor:  # c = b / (Kᵀ r) as [G, 1, L]
        KTr = torch.bmm(r, Kt).view(shape_c)
        return torch.div(b, KTr, out=KTr).view(G, 1, L)

    # c starts at 1 on real columns (the reference start) and 0 on padding, so padding never enters K c.
    c: Optional[Tensor] = (None if cols.start is None
                           else cols.start.view(Ct, N, 1, 1, L).expand(shape_c).reshape(G, 1, L))
    r: Optional[Tensor] = None  # (set by the first iteration, during which every group is active)
    if stop == "fixed":
        for it in range(max_iter):
            r = new_r(row_update(c, ring[it % 2]))
            c = col_update(r)
        n_iter = torch.tensor(max_iter, dtype=torch.long, device=dev)
    else:
        if stop == "reference":
            gshape: Tuple[int, ...] = (Ct, Bt)
            act = lambda x: x.view(Ct, 1, Bt, 1, 1)  # noqa: E731  (group -> [Ct, N, Bt, M, P or L] broadcast)
            thr = (tol * unit * N) * rows.count  # [1, Bt]: tol · (pooled real rows), in units of r' (or r_reference)
            r_prev = (rows.real * unit).expand(shape_r)
        else:
            gshape = (Ct, N, Bt, M)
            act = lambda x: x.unsqueeze(-1)  # noqa: E731
        active = torch.ones(gshape, dtype=torch.bool, device=dev)
        n_iter = torch.zeros(gshape, dtype=torch.long, device=dev)
        known = 0  # iterations during which the host knew every group was active (not yet added to n_iter)
        all_active = True
        Kc_next: Optional[Tensor] = None  # K c for the current c, when a marginal check already computed it
        for it in range(1, max_iter + 1):
            r_new = new_r(row_update(c, ring[it % 2]) if Kc_next is None else Kc_next)
            Kc_next = None
            c_new = col_update(r_new)
            if all_active:
                r, c = r_new, c_new
                known += 1
            else:
                # Freeze stopped groups. lerp with weights exactly 0/1 returns exactly one of its ends (ATen's
                # lerp: w < 0.5 ? start + w·(end − start) : end − (end − start)·(1 − w)), and broadcasts a group
                # weight about 3x faster than torch.where broadcasts a bool condition.
                w = act(active.to(dt))
                r = torch.lerp(r.view(shape_r), r_new.view(shape_r), w).view(G, 1, P)
                c = torch.lerp(c.view(shape_c), c_new.view(shape_c), w).view(G, 1, L)
                n_iter += active
            if stop == "reference":
                r_cmp = (r_new if scale is None else r_new * scale).view(shape_r)
                dsum = torch.sub(r_cmp, r_prev, out=scratch.view(shape_r)).abs_().sum((1, 3, 4))  # [Ct, Bt]
                r_prev = r_cmp if all_active else torch.lerp(r_prev, r_cmp, w)
                # (A NaN stops a group here where the reference keeps iterating; either way the result is NaN and
                # the caller raises.)
                active &= dsum >= thr
            elif it % check_every == 0:
                Kc_next = row_update(c, ring[(it + 1) % 2])  # the next row update's K c: c does not change
                rm = torch.mul(r, Kc_next, out=scratch).view(shape_r)
                active &= rm.sub_(a).abs_().sum(-1) >= tol
            if it <= _EARLY_CHECKS or it % check_every == 0:
                n_active = int(active.sum())
                if n_active == 0:
                    break
                all_active = n_active == active.numel()
            else:
                all_active = False
        if known:
            n_iter += known
    # Final: row marginals r ⊙ (cᵀK) and <T, S> = ε Σ_p r_p Σ_l c_l (K ⊙ Z)_lp.
    assert c is not None and r is not None
    free = ring[1] if r.data_ptr() == ring[0].data_ptr() else ring[0]
    row_marg = torch.bmm(c, K, out=free).mul_(r).view(shape_r)
    KZ = K.mul_(Zp.view(G, L, P))
    sigma = torch.bmm(c, KZ, out=scratch).mul_(r).sum(-1).mul_(eps * to_natural).view(Ct, N, Bt, M)
    marginal_err = torch.sub(row_marg, a, out=scratch.view(shape_r)).abs_().sum(-1)
    mass = row_marg.sum(-1)
    if check_finite and not bool(torch.isfinite(sigma.sum() + marginal_err.sum())):
        raise FloatingPointError(
            f"sinkhorn: non-finite plan for similarity tile of shape {tuple(Z.shape)} with eps={eps}. Kernel-domain "
            "underflow? Try domain='log' or a larger eps."
        )
    perm = (2, 0, 3, 1)  # [Ct, N, Bt, M] -> [Bt, Ct, M, N]
    n_iter = n_iter.t() if stop == "reference" else (n_iter.permute(perm) if stop == "marginal" else n_iter)
    return ScoreResult(sigma=sigma.permute(perm), mass=mass.permute(perm), n_iter=n_iter,
                       marginal_err=marginal_err.permute(perm))
